"""A local, durable spool of batches for when the database is away.

While TimescaleDB is unreachable the gateway keeps detecting and commanding valves; each
batch is written here (one file, fsync'd) and only then acknowledged to the broker, so
nothing accepted is lost and the broker is not asked to hold an unbounded backlog. When
the spool reaches its size limit, batches stay in memory unacknowledged and the broker
holds the rest (back-pressure). The writer drains the spool, oldest first, before any new
batch once the database is back, so rows land in the order they were decided.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any


class Spool:
    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        folder.mkdir(parents=True, exist_ok=True)
        files = self._files()
        self._next = int(files[-1].stem) + 1 if files else 0
        self.bytes = sum(f.stat().st_size for f in files)
        self._count = len(files)  # kept, not globbed: the writer asks on every turn

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("*.batch"), key=lambda p: int(p.stem))

    def __len__(self) -> int:
        return self._count

    def has_room(self) -> bool:
        return self.bytes < self.max_bytes

    def append(self, batches: list[Any]) -> None:
        data = pickle.dumps(batches, protocol=pickle.HIGHEST_PROTOCOL)
        path = self.folder / f"{self._next:012d}.batch"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._next += 1
        self.bytes += len(data)
        self._count += 1

    def oldest(self) -> tuple[Path, list[Any]] | None:
        files = self._files()
        if not files:
            return None
        return files[0], pickle.loads(files[0].read_bytes())

    def remove(self, path: Path) -> None:
        size = path.stat().st_size
        path.unlink()
        self.bytes -= size
        self._count -= 1
