"""The password rules (OWASP ASVS v4 2.1), pure: `problem(password, username)` says why a
new password is refused, or None.

* 12 to 256 characters, any characters but NUL, no composition rules (2.1.1, 2.1.2, 2.1.4,
  2.1.9); nothing is truncated or rewritten.
* Not a common or breached password (2.1.7): checked, case-insensitively, against the
  20,000 most common passwords, as written, with digits or symbols stuck on either end
  ("iloveyou1234"), or repeated ("qwertyqwerty").
* Not guessable from its context: not containing the username, not one character or a
  pattern of up to 4 characters repeated ("aaaaaaaaaaaa", "abcabcabcabc"), not a straight
  run of consecutive characters ("abcdefghijkl", "123456789012").

The list, `common-passwords.txt.gz` beside this module, is Django 5.2's
`django/contrib/auth/common-passwords.txt.gz` copied unchanged (20,000 passwords,
lowercased and deduplicated, compiled by Royce Williams from breach corpora; BSD licence,
see `common-passwords.LICENSE`). Most entries are shorter than 12 characters, so the
length rule already refuses them; the list matters for the long ones and, through the
stripping above, for short ones padded to length.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import re
from importlib import resources

MIN_LENGTH = 12
MAX_LENGTH = 256
COMMON_FILE = "common-passwords.txt.gz"
_PADDING = re.compile(r"^[\W\d_]+|[\W\d_]+$")


@functools.cache
def common_passwords() -> frozenset[str]:
    data = (resources.files("dashboard_api") / COMMON_FILE).read_bytes()
    return frozenset(gzip.decompress(data).decode("utf-8").split())


def _period(text: str) -> int:
    """Length of the shortest unit that `text` repeats (len(text) if none)."""
    doubled = (text + text).find(text, 1)
    return doubled if 0 < doubled < len(text) else len(text)


def _straight_run(text: str) -> bool:
    steps = {ord(b) - ord(a) for a, b in itertools.pairwise(text)}
    if text.isascii() and text.isdigit():  # ...7890 then 1: digits run around
        return {s % 10 for s in steps} in ({1}, {9})
    return steps in ({1}, {-1})


def problem(password: str, username: str | None = None) -> str | None:
    """Why `password` is refused as a new password (one short phrase), or None."""
    if len(password) < MIN_LENGTH:
        return f"at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"at most {MAX_LENGTH} characters"
    if "\x00" in password:
        return "no NUL characters"
    lower = password.casefold()
    period = _period(lower)
    if period == 1:
        return "one character repeated"
    if period <= 4:
        return "a pattern of up to 4 characters repeated"
    if _straight_run(lower):
        return "a straight run of consecutive characters"
    if username and username.casefold() in lower:
        return "contains the username"
    common = common_passwords()
    if lower in common:
        return "one of the 20,000 most common passwords"
    if period < len(lower) and lower[:period] in common:
        return "a common password repeated"
    core = _PADDING.sub("", lower)
    if core != lower and core in common:
        return "a common password with digits or symbols added"
    return None
