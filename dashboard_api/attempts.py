"""Failed-attempt limiting for the public resident endpoints (household id + phone).

The phone check is weak proof, so wrong guesses are counted per household: after
`max_failures` within `window_s` that household's resident endpoints answer 429 until the
window passes. Pure, with the clock passed in; one process's memory (several API workers
each count on their own, which still bounds guessing to workers x max_failures a window).
"""

from __future__ import annotations

from collections import deque


class AttemptLimiter:
    def __init__(self, max_failures: int = 5, window_s: float = 900.0,
                 max_keys: int = 100_000) -> None:
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
        q = self._recent(key, now)
        return q is not None and len(q) >= self.max_failures

    def fail(self, key: str, now: float) -> None:
        if key not in self._failures and len(self._failures) >= self.max_keys:
            # Bounded memory under a spray of ids: forget the oldest-inserted key.
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(key, deque()).append(now)

    def succeed(self, key: str) -> None:
        self._failures.pop(key, None)
