"""Building partitions: which worker of a cluster judges which household.

Detection state, a household's detector and meter, and a building's riser incident need
every device of a building on one worker, so the unit of ownership is the building, hashed
to one of a fixed number of partitions. The hash is CRC-32 of `community/building` (UTF-8):
stable across processes, machines and Python versions (unlike `hash()`), and cheap.
"""

from __future__ import annotations

import zlib

PARTITIONS = 64
"""The fixed partition count. Changing it moves buildings between partitions: a cluster must
be drained (every partition's log consumed and committed) before it restarts with another."""


def building_key(community: str, building: str) -> bytes:
    """The bytes a building is hashed by."""
    return f"{community}/{building}".encode()


def partition_of(community: str, building: str, partitions: int = PARTITIONS) -> int:
    """The partition of a building, in [0, partitions)."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    return zlib.crc32(building_key(community, building)) % partitions
