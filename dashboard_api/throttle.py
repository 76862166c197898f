"""Failed sign-in throttling: a growing wait after repeated failures, kept in three ledgers.

Pure, with the clock passed in (`now`, seconds); the route does the I/O. Why three:

* **(account, client)**: the attacker at one address guessing one account. 5 failures are
  free (typos), then each further attempt must wait 1 s, 2 s, 4 s ... capped at 5 minutes
  after the previous failure. A success from that address clears it.
* **client** (any accounts): one address spraying many accounts, which the first ledger
  never sees twice. 30 failures free (an office behind one NAT mistypes too), then the
  same doubling, capped at 5 minutes. A success does not clear it, or an attacker with one
  valid account could reset it at will.
* **account** (any clients): many addresses guessing one account. It is the looser one
  (30 failures free, then 2 s doubling to 1 minute) and it holds back only addresses that
  have never signed in to that account (a success is remembered per (account, client) for
  30 days). So an attacker cannot lock the real user out: from an address they have used
  before they pass; from a new address they wait at most a minute per slot while a
  distributed attack lasts (the price of bounding such an attack at one guess a minute).

A ledger forgets a key after an hour without failures, and holds at most `max_keys` keys
(the least recently failed go first), so its memory is bounded under a spray of names.

Attempts are counted when admitted, before the password is checked (argon2 takes
~0.1 s): a burst of concurrent guesses cannot all pass the check before the first failure
is recorded. A success, or an attempt that never reached the check, takes its count back.
One process's memory: each API worker counts on its own, which multiplies the free
attempts by the number of workers but keeps every bound.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

SCOPES = ("account_client", "client", "account")


@dataclass(frozen=True, slots=True)
class Backoff:
    """After `free` failures each attempt waits base_s * 2**(failures - free), at most cap_s,
    counted from the previous failure; `forget_s` without failures starts the key over."""

    free: int
    base_s: float
    cap_s: float
    forget_s: float = 3600.0

    def wait_s(self, failures: int) -> float:
        if failures < self.free:
            return 0.0
        return min(self.cap_s, self.base_s * 2.0 ** min(failures - self.free, 64))


@dataclass(slots=True)
class _Record:
    failures: int
    last: float
    refused: int = 0  # refusals since the last admitted attempt (to log the first only)


class Ledger:
    """Failure counts per key under one backoff policy, bounded in size."""

    def __init__(self, policy: Backoff, max_keys: int = 100_000) -> None:
        self.policy = policy
        self.max_keys = max_keys
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def _get(self, key: str, now: float) -> _Record | None:
        rec = self._records.get(key)
        if rec is not None and now - rec.last >= self.policy.forget_s:
            del self._records[key]
            return None
        return rec

    def failures(self, key: str, now: float) -> int:
        rec = self._get(key, now)
        return rec.failures if rec else 0

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        rec = self._get(key, now)
        if rec is None:
            return 0.0
        return max(0.0, rec.last + self.policy.wait_s(rec.failures) - now)

    def refuse(self, key: str) -> bool:
        """Note a refusal; True for the first since the last admitted attempt."""
        rec = self._records.get(key)
        if rec is None:
            return True
        rec.refused += 1
        return rec.refused == 1

    def add(self, key: str, now: float) -> None:
        rec = self._get(key, now)
        if rec is None:
            while len(self._records) >= self.max_keys:
                self._records.popitem(last=False)
            self._records[key] = _Record(1, now)
            return
        rec.failures += 1
        rec.last = now
        rec.refused = 0
        self._records.move_to_end(key)

    def take_back(self, key: str) -> None:
        rec = self._records.get(key)
        if rec is None:
            return
        rec.failures -= 1
        if rec.failures <= 0:
            del self._records[key]

    def clear(self, key: str) -> None:
        self._records.pop(key, None)


@dataclass(frozen=True, slots=True)
class Attempt:
    """An admitted sign-in attempt, provisionally counted as a failure."""

    account: str
    client: str


@dataclass(frozen=True, slots=True)
class Verdict:
    attempt: Attempt | None  # None: refused
    retry_after_s: float = 0.0
    scope: str = ""  # which ledger refused: one of SCOPES
    first_refusal: bool = False  # the first refusal of this key since its last failure

    @property
    def allowed(self) -> bool:
        return self.attempt is not None

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


@dataclass
class LoginThrottle:
    pair: Ledger = field(default_factory=lambda: Ledger(Backoff(5, 1.0, 300.0)))
    client: Ledger = field(default_factory=lambda: Ledger(Backoff(30, 1.0, 300.0)))
    account: Ledger = field(default_factory=lambda: Ledger(Backoff(30, 2.0, 60.0)))
    known_for_s: float = 30 * 86400.0
    max_known: int = 100_000
    _known: OrderedDict[str, float] = field(default_factory=OrderedDict)

    @staticmethod
    def _pair_key(account: str, client: str) -> str:
        return f"{account}\x00{client}"

    def known(self, account: str, client: str, now: float) -> bool:
        """Whether this address signed in to this account within known_for_s."""
        at = self._known.get(self._pair_key(account, client))
        return at is not None and now - at < self.known_for_s

    def admit(self, account: str, client: str, now: float) -> Verdict:
        """Admit the attempt (counting it as a failure until it succeeds) or refuse it with
        the longest wait among the ledgers that hold it back."""
        pair_key = self._pair_key(account, client)
        waits = [
            (self.pair.retry_after(pair_key, now), "account_client", self.pair, pair_key),
            (self.client.retry_after(client, now), "client", self.client, client),
        ]
        if not self.known(account, client, now):
            waits.append((self.account.retry_after(account, now), "account", self.account, account))
        wait, scope, ledger, key = max(waits, key=lambda w: w[0])
        if wait > 0:
            return Verdict(None, wait, scope, ledger.refuse(key))
        self.pair.add(pair_key, now)
        self.client.add(client, now)
        self.account.add(account, now)
        return Verdict(Attempt(account, client))

    def succeeded(self, attempt: Attempt, now: float) -> None:
        pair_key = self._pair_key(attempt.account, attempt.client)
        self.pair.clear(pair_key)
        self.client.take_back(attempt.client)
        self.account.take_back(attempt.account)
        self._known.pop(pair_key, None)
        while len(self._known) >= self.max_known:
            self._known.popitem(last=False)
        self._known[pair_key] = now

    def abandoned(self, attempt: Attempt) -> None:
        """The password was never checked (service busy, client gone): no failure."""
        self.pair.take_back(self._pair_key(attempt.account, attempt.client))
        self.client.take_back(attempt.client)
        self.account.take_back(attempt.account)
