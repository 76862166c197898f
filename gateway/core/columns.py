"""Append-only columns for the registry: numbers and strings in a few NumPy arrays each.

A city's registry (half a million devices, two hundred thousand households) held as Python
objects (a str, an int and a dict entry per device id, a dataclass per household) cost
hundreds of MB; here each device costs a few dozen bytes. `Grow` is a NumPy column with
room to grow (the room is allocated but not touched, so it is not resident); `StrColumn`
holds strings as UTF-8 in one byte buffer with a start and a length each; `StrIndex` finds
a string's position in a `StrColumn` by open addressing over two arrays (Python's own str
hash, verified against the stored bytes, so a hash collision never confuses two keys).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Grow", "StrColumn", "StrIndex"]


class Grow:
    """An append-only NumPy column; `values` is a view of what was appended, `mv` a
    memoryview of the whole buffer (its items read as Python numbers, quickly)."""

    __slots__ = ("_a", "mv", "n")

    def __init__(self, dtype: npt.DTypeLike, values: npt.ArrayLike | None = None) -> None:
        self._a: npt.NDArray[Any] = np.empty(0, dtype)
        self.mv = self._a.data
        self.n = 0
        if values is not None:
            self.extend(values)

    def reserve(self, n: int) -> None:
        """Room for `n` values in all (np.empty: untouched room is not resident)."""
        if n > self._a.size:
            new = np.empty(n, self._a.dtype)
            new[: self.n] = self._a[: self.n]
            self._a = new
            self.mv = new.data

    def extend(self, values: npt.ArrayLike) -> None:
        v = np.asarray(values, self._a.dtype).ravel()
        end = self.n + v.size
        if end > self._a.size:
            self.reserve(max(end, self._a.size * 3 // 2, 16))
        self._a[self.n : end] = v
        self.n = end

    @property
    def values(self) -> npt.NDArray[Any]:
        return self._a[: self.n]

    def __len__(self) -> int:
        return self.n


class StrColumn(Sequence[str]):
    """Strings by position, as UTF-8 in one buffer (`data`) with `start` and `length` each."""

    def __init__(self, strings: Iterable[str] = ()) -> None:
        self._data = Grow(np.uint8)
        self._start = Grow(np.int64)
        self._len = Grow(np.int32)
        self.extend(strings)

    def extend(self, strings: Iterable[str]) -> None:
        encoded = [s.encode() for s in strings]
        self.extend_encoded(b"".join(encoded), np.fromiter(map(len, encoded), np.int32))

    def extend_encoded(self, data: bytes, lengths: npt.ArrayLike) -> None:
        """Append strings given as their UTF-8 bytes joined, and each one's length."""
        lens = np.asarray(lengths, np.int32)
        if int(lens.sum()) != len(data):
            raise ValueError("lengths do not add up to the data's length")
        ends = np.cumsum(lens, dtype=np.int64)
        self._start.extend(self._data.n + ends - lens)
        self._len.extend(lens)
        self._data.extend(np.frombuffer(data, np.uint8))

    def encoded(self, first: int = 0) -> tuple[bytes, npt.NDArray[np.int32]]:
        """Strings from `first` on as (their bytes joined, their lengths): for `extend_encoded`."""
        if first >= len(self):
            return b"", np.zeros(0, np.int32)
        start = int(self._start.values[first])
        return self._data.values[start:].tobytes(), self._len.values[first:].copy()

    @property
    def data(self) -> npt.NDArray[np.uint8]:
        return self._data.values

    @property
    def start(self) -> npt.NDArray[np.int64]:
        return self._start.values

    @property
    def length(self) -> npt.NDArray[np.int32]:
        return self._len.values

    def __len__(self) -> int:
        return self._len.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = self._len.n
        j = int(i)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError(f"string {i} of {n}")
        s = self._start.mv[j]
        return str(self._data.mv[s : s + self._len.mv[j]], "utf-8")

    def __iter__(self) -> Iterator[str]:
        return self.iter_from(0)

    def iter_from(self, first: int) -> Iterator[str]:
        """The strings from `first` on, decoded one at a time."""
        if first >= len(self):
            return
        base = int(self._start.values[first])
        data = self._data.values[base:].tobytes()
        starts = (self._start.values[first:] - base).tolist()
        for s, ln in zip(starts, self._len.values[first:].tolist(), strict=True):
            yield data[s : s + ln].decode()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StrColumn):
            return bool(
                np.array_equal(self.length, other.length)
                and self.data.tobytes() == other.data.tobytes()
            )
        if isinstance(other, list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def equals(self, i: int, s: str) -> bool:
        """The string at `i` is `s` (without decoding it)."""
        start = self._start.mv[i]
        raw = s.encode()
        return len(raw) == self._len.mv[i] and self._data.mv[start : start + len(raw)] == raw


class StrIndex:
    """The position of each string of a `StrColumn`: `get(s)`, `s in index`, `index[s]`.

    Buckets are two arrays (the str hash, int64; the position, int32; -1 = empty), at most
    two thirds full (linear probing then looks at about two buckets for a key present);
    `add` places a run of the column's strings at once, vectorised. Strings
    must be unique (the caller checks). Lookups walk the buckets in Python through
    memoryviews of the arrays (a few hundred ns: fine per message, not per row of a batch).
    """

    def __init__(self, column: StrColumn) -> None:
        self.column = column
        self.n = 0
        self._alloc(16)

    def _alloc(self, capacity: int) -> None:
        self._hash = np.zeros(capacity, np.int64)
        self._pos = np.full(capacity, -1, np.int32)
        self._mask = capacity - 1
        self._mv_hash = self._hash.data
        self._mv_pos = self._pos.data

    def add(self, keys: Iterable[str], first: int, n: int) -> None:
        """Index `n` keys, the column's strings `first`, `first` + 1, ... (any iterable:
        `column.iter_from(first)` makes no list of them)."""
        if n == 0:
            return
        if 3 * (self.n + n) > 2 * (self._mask + 1):
            old_h, old_p = self._hash, self._pos
            capacity = self._mask + 1
            while 3 * (self.n + n) > 2 * capacity:
                capacity *= 2
            self._alloc(capacity)
            used = old_p >= 0
            self._place(old_h[used], old_p[used])
        h = np.fromiter(map(hash, keys), np.int64, n)
        self._place(h, np.arange(first, first + n, dtype=np.int32))
        self.n += n

    def _place(self, h: npt.NDArray[np.int64], pos: npt.NDArray[np.int32]) -> None:
        """Linear probing, vectorised: each round, every key still pending takes its bucket
        if free (one key per bucket, the first), the others try the next bucket."""
        bucket = h & self._mask
        pending = np.arange(h.size)
        while pending.size:
            b = bucket[pending]
            free = self._pos[b] < 0
            taken, first = np.unique(b[free], return_index=True)
            won = pending[free][first]
            self._hash[taken] = h[won]
            self._pos[taken] = pos[won]
            placed = np.zeros(h.size, np.bool_)
            placed[won] = True
            pending = pending[~placed[pending]]
            bucket[pending] = (bucket[pending] + 1) & self._mask

    def get(self, key: str, default: int | None = None) -> int | None:
        h = hash(key)
        mask, hashes, positions = self._mask, self._mv_hash, self._mv_pos
        i = h & mask
        while True:
            p: int = positions[i]
            if p < 0:
                return default
            if hashes[i] == h:  # the same hash: the same string, almost surely; make sure
                col = self.column
                start, raw = col._start.mv[p], key.encode()
                if col._len.mv[p] == len(raw) and col._data.mv[start : start + len(raw)] == raw:
                    return p
            i = (i + 1) & mask

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __getitem__(self, key: str) -> int:
        p = self.get(key)
        if p is None:
            raise KeyError(key)
        return p

    def __len__(self) -> int:
        return self.n

    def nbytes(self) -> int:
        return int(self._hash.nbytes + self._pos.nbytes)
