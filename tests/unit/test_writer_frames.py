"""The writer process's pipe framing: objects survive any split of the byte stream."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.storage.rows import Batch, Readings
from gateway.storage.writer_process import Frames, WriterStats, frame


def _batch(n: int) -> Batch:
    r = Readings(np.arange(n, dtype=np.int32), np.arange(n, dtype=np.int64),
                 np.full(n, 1.8e9), np.full(n, 1.8e9), np.zeros(n, np.int16),
                 {"ch4": np.linspace(0, 50, n, dtype=np.float32)})
    return Batch(detector=r, seq=n, audit=[("gateway", "x", "y", str(n), {"n": n})])


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=8),
       cuts=st.lists(st.integers(1, 4096), max_size=40))
def test_frames_come_back_whole_and_in_order_across_any_reads(sizes: list[int],
                                                              cuts: list[int]) -> None:
    sent = [("batch", _batch(n)) for n in sizes] + [("status", WriterStats(True, 0.1, 2, 0, 9))]
    stream = b"".join(frame(m) for m in sent)
    got, pos, fr = [], 0, Frames()
    for c in cuts:
        got += fr.feed(stream[pos:pos + c])
        pos += c
    got += fr.feed(stream[pos:])
    assert len(got) == len(sent)
    for (kind, obj), (kind2, obj2) in zip(sent, got):
        assert kind == kind2
        if kind == "batch":
            assert obj2.seq == obj.seq and obj2.audit == obj.audit
            assert np.array_equal(obj2.detector.values["ch4"], obj.detector.values["ch4"])
            assert np.array_equal(obj2.detector.slot, obj.detector.slot)
        else:
            assert obj2 == obj


def test_a_partial_frame_waits_for_the_rest() -> None:
    data = frame(("ids", ["d1", "d2"]))
    fr = Frames()
    assert fr.feed(data[:3]) == [] and fr.feed(data[3:-1]) == []
    assert fr.feed(data[-1:]) == [("ids", ["d1", "d2"])]


def test_the_writers_registry_names_slots_as_the_gateways_does() -> None:
    import datetime as dt

    from gateway.core.registry import DeviceRow, HouseholdInfo, Registry

    full, ids_only = Registry(), Registry()
    for part in (["m1", "d1"], ["m22", "d22a", "d22b"]):  # grown twice, as on provisioning
        full.add([DeviceRow(i, "meter" if i[0] == "m" else "detector", "X", "h" + i[1:3],
                            dt.date(2024, 1, 1)) for i in part],
                 {"h" + i[1:3]: HouseholdInfo("h" + i[1:3], "a", "c", "b", "o", "p", None,
                                              2.5, None) for i in part})
        ids_only.add_ids(part)
    assert list(ids_only.ids) == list(full.ids) == ["m1", "d1", "m22", "d22a", "d22b"]
    assert [ids_only.index[i] for i in full.ids] == list(range(5))
    sent = Registry()
    sent.add_encoded_ids(*full.encoded_ids())  # as the writer process receives them
    assert list(sent.ids) == list(full.ids) and sent.index.get("d22a") == 3
    for name in ("id_bytes", "id_start", "id_len"):
        assert np.array_equal(getattr(ids_only, name), getattr(full, name))


async def test_a_writer_process_that_cannot_start_is_retried_with_a_growing_pause(
        tmp_path) -> None:
    """A broken child (here: one that exits at once) must not make the event loop fork in a
    tight loop; the batches wait, unacknowledged, for a child that works."""
    import asyncio
    import sys

    from gateway.core.registry import Registry
    from gateway.storage import writer_process as wp

    w = wp.WriterProcess(wp.WriterConfig("host=x", str(tmp_path), 1, 1.0), Registry(),
                         lambda b: None)
    w.command = [sys.executable, "-c", "import sys; sys.exit(3)"]
    w.start(asyncio.get_running_loop())
    w.submit(_batch(3))
    await asyncio.sleep(1.6)  # pauses 0.2, 0.4, 0.8 s: about three starts, not hundreds
    assert 2 <= w.restarts <= 5, w.restarts
    assert w.pending_rows == 3 and len(w._inflight) == 1  # kept for the next child
    assert not (await w.write_state(None))  # type: ignore[arg-type]  # no child: not written
    await w.close(1.0)
