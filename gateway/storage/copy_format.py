"""PostgreSQL binary COPY rows built with NumPy, whole batches at a time.

Formatting rows one by one in Python costs more than the database's own COPY work; here a
row is a fixed-width head (field count, time, device-id length), the device id's bytes and a
fixed-width tail, gathered into one buffer with vectorized indexing.
"""

from __future__ import annotations

import itertools

import numpy as np

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
PG_EPOCH_S = 946_684_800  # 2000-01-01T00:00:00Z, PostgreSQL's timestamp origin


def pg_micros(epoch_s: np.ndarray) -> np.ndarray:
    """Unix seconds (float64) to PostgreSQL timestamptz (int64 microseconds since 2000)."""
    return np.round((epoch_s - PG_EPOCH_S) * 1e6).astype(np.int64)


def field_dtype(fields: list[tuple[str, str]]) -> np.dtype:
    """A big-endian row fragment: each value preceded by its int32 length."""
    parts: list[tuple[str, str]] = []
    for name, code in fields:
        if name == "nfields":
            parts.append((name, ">i2"))
            continue
        parts.append((name + "_len", ">i4"))
        if code:
            parts.append((name, code))
    return np.dtype(parts)


def assemble(
    head: np.ndarray,
    var_bytes: np.ndarray,
    var_start: np.ndarray,
    var_len: np.ndarray,
    tail: np.ndarray,
    header: bool = True,
    trailer: bool = True,
) -> bytes:
    """Rows of head + variable bytes + tail, as COPY BINARY data: with the header and the
    trailer, a whole payload; without, a piece of one (see `chunks`)."""
    n = len(head)
    start_b, end_b = (SIGNATURE if header else b""), (TRAILER if trailer else b"")
    if n == 0:
        return start_b + end_b
    hb = head.view(np.uint8).reshape(n, -1)
    tb = tail.view(np.uint8).reshape(n, -1)
    hl, tl = hb.shape[1], tb.shape[1]
    var_len = var_len.astype(np.int64)
    row_len = hl + var_len + tl
    ends = np.cumsum(row_len)
    starts = ends - row_len
    out = np.empty(int(ends[-1]), np.uint8)
    out[starts[:, None] + np.arange(hl)] = hb
    total = int(var_len.sum())
    if total:
        within = np.arange(total) - np.repeat(np.cumsum(var_len) - var_len, var_len)
        out[np.repeat(starts + hl, var_len) + within] = var_bytes[
            np.repeat(var_start.astype(np.int64), var_len) + within
        ]
    out[(starts + hl + var_len)[:, None] + np.arange(tl)] = tb
    return start_b + out.tobytes() + end_b


CHUNK_ROWS = 4096


def chunk_bounds(n: int, rows: int = CHUNK_ROWS) -> list[tuple[int, int, bool, bool]]:
    """(start, stop, header, trailer) of the pieces of an n-row payload. Built piece by
    piece, no single NumPy call holds Python's GIL for long: the event loop thread, which
    judges readings and cuts valves, waits for it otherwise (measured: 8 ms stalls)."""
    if n <= rows:
        return [(0, n, True, True)]
    cuts = [*list(range(0, n, rows)), n]
    return [(a, b, a == 0, b == n) for a, b in itertools.pairwise(cuts)]
