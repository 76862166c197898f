"""Failed-attempt limiting for the public resident endpoints (household id + phone).

The phone check is weak proof, so wrong guesses are limited, in windows of 15 minutes:

* per (household, client): 5 failures, then that client is refused for that household;
* per client: 20 failures across any households (one address walking the id space);
* per household: 50 failures from all clients together (many addresses guessing one
  household), binding only clients that have not passed the check for that household in
  the last 30 days.

A stranger's failures therefore never lock a resident out: they count against the
stranger's own address, and the household-wide bound needs a distributed attack and still
lets the resident's known address through. A failure is counted before the database is
asked and taken back on success, so concurrent guesses cannot all slip past the check.

Pure, with the clock passed in; one process's memory (several API workers each count on
their own, which still bounds guessing to workers x the limits a window).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field


class AttemptLimiter:
    def __init__(
        self, max_failures: int = 5, window_s: float = 900.0, max_keys: int = 100_000
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        q = self._failures.get(key)
        if q is None:
            return None
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._failures[key]
            return None
        return q

    def blocked(self, key: str, now: float) -> bool:
        return self.retry_after(key, now) > 0

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until `key` is below its limit again; 0 when it is now."""
        q = self._recent(key, now)
        if q is None or len(q) < self.max_failures:
            return 0.0
        # Allowed again once all but max_failures - 1 of the failures have left the window.
        return q[len(q) - self.max_failures] + self.window_s - now

    def fail(self, key: str, now: float) -> None:
        if key not in self._failures and len(self._failures) >= self.max_keys:
            # Bounded memory under a spray of ids: forget the oldest-inserted key.
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(key, deque()).append(now)

    def take_back(self, key: str, at: float) -> None:
        """Forget the failure counted at `at` (the attempt turned out right)."""
        q = self._failures.get(key)
        if q is not None and at in q:
            q.remove(at)
            if not q:
                del self._failures[key]

    def succeed(self, key: str) -> None:
        self._failures.pop(key, None)


@dataclass(frozen=True, slots=True)
class Check:
    """A resident check under way, its failure counted provisionally."""

    household: str
    client: str
    at: float


@dataclass
class ResidentLimiter:
    pair: AttemptLimiter = field(default_factory=lambda: AttemptLimiter(5, 900.0))
    client: AttemptLimiter = field(default_factory=lambda: AttemptLimiter(20, 900.0))
    household: AttemptLimiter = field(default_factory=lambda: AttemptLimiter(50, 900.0))
    known_for_s: float = 30 * 86400.0
    max_known: int = 100_000
    _known: OrderedDict[str, float] = field(default_factory=OrderedDict)

    @staticmethod
    def _pair_key(household: str, client: str) -> str:
        return f"{household}\x00{client}"

    def begin(self, household: str, client: str, now: float) -> tuple[Check | None, float, str]:
        """(the check, 0, "") when it may go ahead; (None, retry_after_s, scope) when not,
        scope being "household_client", "client" or "household"."""
        pair_key = self._pair_key(household, client)
        waits = [
            (self.pair.retry_after(pair_key, now), "household_client"),
            (self.client.retry_after(client, now), "client"),
        ]
        known_at = self._known.get(pair_key)
        if known_at is None or now - known_at >= self.known_for_s:
            waits.append((self.household.retry_after(household, now), "household"))
        wait, scope = max(waits)
        if wait > 0:
            return None, wait, scope
        self.pair.fail(pair_key, now)
        self.client.fail(client, now)
        self.household.fail(household, now)
        return Check(household, client, now), 0.0, ""

    def passed(self, check: Check) -> None:
        pair_key = self._pair_key(check.household, check.client)
        self.pair.succeed(pair_key)
        self.client.take_back(check.client, check.at)
        self.household.take_back(check.household, check.at)
        self._known.pop(pair_key, None)
        while len(self._known) >= self.max_known:
            self._known.popitem(last=False)
        self._known[pair_key] = check.at

    def abandoned(self, check: Check) -> None:
        """The check never reached a verdict (database error, client gone): no failure."""
        self.pair.take_back(self._pair_key(check.household, check.client), check.at)
        self.client.take_back(check.client, check.at)
        self.household.take_back(check.household, check.at)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
