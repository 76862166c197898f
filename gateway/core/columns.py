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

PART = 1 << 16  # strings decoded, or keys placed, at a time: bounds the scratch memory


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
    """Strings by position, as UTF-8 in one buffer (`data`); string i is
    data[bounds[i]:bounds[i + 1]] (uint32 bounds: 4 bytes a string, up to 4 GiB in all)."""

    def __init__(self, strings: Iterable[str] = ()) -> None:
        self._data = Grow(np.uint8)
        self._bounds = Grow(np.uint32, [0])
        self.extend(strings)

    def extend(self, strings: Iterable[str]) -> None:
        encoded = [s.encode() for s in strings]
        self.extend_encoded(b"".join(encoded), np.fromiter(map(len, encoded), np.int64))

    def extend_encoded(self, data: bytes, lengths: npt.ArrayLike) -> None:
        """Append strings given as their UTF-8 bytes joined, and each one's length."""
        lens = np.asarray(lengths, np.int64)
        if int(lens.sum()) != len(data):
            raise ValueError("lengths do not add up to the data's length")
        if self._data.n + len(data) >= 2**32:
            raise ValueError("a StrColumn holds up to 4 GiB of text")
        self._bounds.extend(self._data.n + np.cumsum(lens))
        self._data.extend(np.frombuffer(data, np.uint8))

    def encoded(self, first: int = 0) -> tuple[bytes, npt.NDArray[np.int32]]:
        """Strings from `first` on as (their bytes joined, their lengths): for `extend_encoded`."""
        if first >= len(self):
            return b"", np.zeros(0, np.int32)
        b = self._bounds.values[first:].astype(np.int64)
        return self._data.values[b[0] :].tobytes(), np.diff(b).astype(np.int32)

    def spans(self, idx: npt.ArrayLike) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Start and length in `data` of the strings at positions `idx`."""
        i = np.asarray(idx, np.intp)
        b = self._bounds.values
        start = b[i].astype(np.int64)
        return start, b[i + 1].astype(np.int64) - start

    @property
    def data(self) -> npt.NDArray[np.uint8]:
        return self._data.values

    @property
    def start(self) -> npt.NDArray[np.uint32]:
        """Every string's start (a view)."""
        return self._bounds.values[:-1]

    @property
    def length(self) -> npt.NDArray[np.int64]:
        """Every string's length (computed: `spans` for a few)."""
        b = self._bounds.values.astype(np.int64)
        out: npt.NDArray[np.int64] = b[1:] - b[:-1]
        return out

    def __len__(self) -> int:
        return self._bounds.n - 1

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = self._bounds.n - 1
        j = int(i)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError(f"string {i} of {n}")
        b = self._bounds.mv
        return str(self._data.mv[b[j] : b[j + 1]], "utf-8")

    def __iter__(self) -> Iterator[str]:
        return self.iter_from(0)

    def iter_from(self, first: int) -> Iterator[str]:
        """The strings from `first` on, decoded one at a time (in parts of PART)."""
        n = len(self)
        for lo in range(first, n, PART):
            bounds = self._bounds.values[lo : min(n, lo + PART) + 1].astype(np.int64)
            data = self._data.values[bounds[0] : bounds[-1]].tobytes()
            bounds -= bounds[0]
            for s, e in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                yield data[s:e].decode()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StrColumn):
            return bool(
                np.array_equal(self._bounds.values, other._bounds.values)
                and self.data.tobytes() == other.data.tobytes()
            )
        if isinstance(other, list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def equals(self, i: int, s: str) -> bool:
        """The string at `i` is `s` (without decoding it)."""
        b = self._bounds.mv
        start, raw = b[i], s.encode()
        return b[i + 1] - start == len(raw) and self._data.mv[start : start + len(raw)] == raw


class StrIndex:
    """The position of each string of a `StrColumn`: `get(s)`, `s in index`, `index[s]`.

    It indexes the column's strings 0, 1, ... in order (`add` the ones appended). Buckets
    are two int32 arrays (the high half of Python's str hash as a tag; the position, -1 =
    empty), at most two thirds full (linear probing then looks at about two buckets for a
    key present): 8 bytes a bucket. `add` places a run of strings at once, vectorised;
    growing hashes the column's strings again. Strings must be unique (the caller checks).
    Lookups walk the buckets in Python through memoryviews of the arrays and compare the
    stored bytes (about 1 µs: fine per message, not per row of a batch).
    """

    def __init__(self, column: StrColumn) -> None:
        self.column = column
        self.n = 0
        self._alloc(16)

    def _alloc(self, capacity: int) -> None:
        self._tag = np.zeros(capacity, np.int32)
        self._pos = np.full(capacity, -1, np.int32)
        self._mask = capacity - 1
        self._mv_tag = self._tag.data
        self._mv_pos = self._pos.data

    def reserve(self, n: int) -> None:
        """Room for `n` strings in all without growing again."""
        capacity = self._mask + 1
        if 3 * n > 2 * capacity:
            while 3 * n > 2 * capacity:
                capacity *= 2
            self._alloc(capacity)
            n, self.n = self.n, 0
            self.add(self.column.iter_from(0), 0, n)

    def add(self, keys: Iterable[str], first: int, n: int) -> None:
        """Index `n` keys, the column's strings `first` (= len(self)), `first` + 1, ...
        (any iterable: `column.iter_from(first)` makes no list of them)."""
        if first != self.n:
            raise ValueError(f"StrIndex.add: the next string is {self.n}, not {first}")
        if n == 0:
            return
        self.reserve(self.n + n)
        it = iter(keys)
        for lo in range(first, first + n, PART):
            m = min(PART, first + n - lo)
            self._place(
                np.fromiter(map(hash, it), np.int64, m), np.arange(lo, lo + m, dtype=np.int32)
            )
        self.n += n

    def _place(self, h: npt.NDArray[np.int64], pos: npt.NDArray[np.int32]) -> None:
        """Linear probing, vectorised: each round, every key still pending takes its bucket
        if free (one key per bucket, the first), the others try the next bucket."""
        bucket = h & self._mask
        tag = (h >> 32).astype(np.int32)
        pending = np.arange(h.size)
        while pending.size:
            b = bucket[pending]
            free = self._pos[b] < 0
            taken, first = np.unique(b[free], return_index=True)
            won = pending[free][first]
            self._tag[taken] = tag[won]
            self._pos[taken] = pos[won]
            placed = np.zeros(h.size, np.bool_)
            placed[won] = True
            pending = pending[~placed[pending]]
            bucket[pending] = (bucket[pending] + 1) & self._mask

    def get(self, key: str, default: int | None = None) -> int | None:
        h = hash(key)
        mask, tags, positions = self._mask, self._mv_tag, self._mv_pos
        tag = h >> 32
        i = h & mask
        while True:
            p: int = positions[i]
            if p < 0:
                return default
            if tags[i] == tag:  # the same hash, almost surely the same string: make sure
                col = self.column
                b = col._bounds.mv
                if str(col._data.mv[b[p] : b[p + 1]], "utf-8") == key:
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
        return int(self._tag.nbytes + self._pos.nbytes)
