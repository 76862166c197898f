"""Binary COPY data built in pieces is the same bytes as built at once."""

from __future__ import annotations

import numpy as np

from gateway.storage import copy_format


def test_pieces_concatenate_to_the_whole_payload() -> None:
    rng = np.random.default_rng(3)
    n = 10_000
    head_t = copy_format.field_dtype([("nfields", ""), ("time", ">i8"), ("device", "")])
    tail_t = copy_format.field_dtype([("seq", ">i8"), ("ch4", ">f4")])
    head = np.zeros(n, head_t)
    head["nfields"], head["time_len"], head["time"] = 3, 8, rng.integers(0, 2**40, n)
    tail = np.zeros(n, tail_t)
    tail["seq_len"], tail["seq"], tail["ch4_len"], tail["ch4"] = 8, np.arange(n), 4, 1.5
    ids = np.frombuffer(b"".join(b"dev%05d" % i for i in range(n)), np.uint8)
    start, length = np.arange(n) * 8, np.full(n, 8)
    head["device_len"] = length
    whole = copy_format.assemble(head, ids, start, length, tail)
    bounds = copy_format.chunk_bounds(n, rows=4096)
    assert [(a, b) for a, b, _, _ in bounds] == [(0, 4096), (4096, 8192), (8192, 10_000)]
    pieces = b"".join(copy_format.assemble(head[a:b], ids, start[a:b], length[a:b], tail[a:b],
                                           h, t) for a, b, h, t in bounds)
    assert pieces == whole
    assert whole.startswith(copy_format.SIGNATURE) and whole.endswith(copy_format.TRAILER)
    assert copy_format.chunk_bounds(5) == [(0, 5, True, True)]
