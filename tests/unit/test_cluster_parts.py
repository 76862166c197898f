"""The partition worker's pure parts: shares, building partitions, a log message as the
pipeline reads it, slot renumbering, and the worker's settings."""

from __future__ import annotations

import datetime as dt
import functools
import gc
import time
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from gateway.cluster.jetstream import to_message
from gateway.cluster.leases import share
from gateway.cluster.partition import Loaded, Partition, buildings_by_partition
from gateway.cluster.worker import WorkerService
from gateway.core.partitions import partition_of
from gateway.core.registry import Registry
from gateway.pipeline.metrics import Metrics
from gateway.service import tuning
from gateway.settings import ClusterSettings, Settings
from gateway.storage.rows import Batch


def test_even_shares_cover_every_partition() -> None:
    assert share(64, 1) == 64
    assert share(64, 3) == 22 and 3 * share(64, 3) >= 64
    assert share(64, 0) == 64  # nobody counted yet: this one alone
    assert share(64, 2, cap=10) == 10


def test_buildings_grouped_by_their_stable_partition() -> None:
    rows = [("north", "b1"), ("north", "b2"), ("south", "b1")]
    got = buildings_by_partition(rows, 64)
    assert sum(len(v) for v in got.values()) == 3
    for p, bs in got.items():
        assert all(partition_of(c, b) == p for c, b in bs)


def _log_msg(seq: int, delivered: int, headers: dict[str, str] | None) -> SimpleNamespace:
    md = SimpleNamespace(sequence=SimpleNamespace(stream=seq), num_delivered=delivered)
    return SimpleNamespace(metadata=md, headers=headers, data=b"{}")


def test_the_topic_comes_from_the_header_and_redeliveries_are_marked() -> None:
    m = to_message(_log_msg(7, 1, {"Gas-Topic": "gas/v1/D1/telemetry"}), seen_to=0)
    assert (m.topic, m.packet_id, m.qos, m.dup) == ("gas/v1/D1/telemetry", 7, 1, False)
    assert to_message(_log_msg(7, 2, {"Gas-Topic": "t"}), seen_to=0).dup  # given out before
    assert to_message(_log_msg(7, 1, {"Gas-Topic": "t"}), seen_to=7).dup  # last owner's
    assert to_message(_log_msg(8, 1, None), seen_to=0).topic == ""  # refused by the router


def _rows(prefix: str, n: int) -> list[tuple]:
    out = []
    for i in range(n):
        hid = f"{prefix}h{i}"
        for kind, did in (("meter", f"{prefix}M{i}"), ("detector", f"{prefix}D{i}")):
            out.append((did, kind, "X-1", hid, dt.date(2020, 1, 1), "a", "c", f"b{i}",
                        "o", "p", "e", 6.0))
    return out


def test_partition_slots_are_renumbered_to_the_workers() -> None:
    s = Settings()
    ids = Registry()
    ids.add_ids(["other"])
    parts = [Partition.new(p, s, [], time.time, str, Metrics()) for p in (0, 1)]
    parts[0].rebuild(Loaded(_rows("a", 2), [("aD0", "gas_leak")], []), ids, time.time())
    parts[1].rebuild(Loaded(_rows("b", 1), [], []), ids, time.time())
    assert ids.ids == ["other", "aM0", "aD0", "aM1", "aD1", "bM0", "bD0"]
    assert len(parts[0].gw.registry) == 4 and len(parts[1].gw.registry) == 2
    from gateway.storage.rows import Readings

    b = Batch(detector=Readings(np.array([1, 0], np.int32), *[np.zeros(2)] * 4, values={}))
    parts[1].renumber(b)
    assert b.detector is not None
    assert [ids.ids[i] for i in b.detector.slot] == ["bD0", "bM0"]


def test_a_partitions_state_follows_its_devices_not_a_fixed_size() -> None:
    """A worker holds many partitions: each starts small and the load sizes it, so a
    worker's detection state follows the devices it owns."""
    s = Settings()
    ids = Registry()
    small, half, large = (Partition.new(p, s, [], time.time, str, Metrics()) for p in (0, 1, 2))
    small.rebuild(Loaded(_rows("a", 3), [], []), ids, time.time())
    half.rebuild(Loaded(_rows("b", 300), [], []), ids, time.time())
    large.rebuild(Loaded(_rows("c", 600), [], []), ids, time.time())
    assert small.gw.state.capacity < 100 and large.gw.state.capacity == 1200
    assert small.state_bytes < 100_000
    # beyond the rules' tables (a fixed few KB), each device costs the same (arrays grow
    # in steps, hence the tolerance)
    per_device = (large.state_bytes - half.state_bytes) / 600  # devices
    assert per_device == pytest.approx((half.state_bytes - small.state_bytes) / 594, rel=0.2)


def test_a_dropped_partition_is_freed_with_the_collector_off() -> None:
    """A running worker has the automatic collector off (tuning.tune_runtime), and a taken
    partition's pipeline holds a cycle back to it; its memory is collected once dropped."""
    w = WorkerService(Settings())
    part = Partition.new(0, w.settings, [], time.time, str, w.metrics)
    part.rebuild(Loaded(_rows("a", 50), [], []), w.ids, time.time())
    part.gw.submit = functools.partial(w._submit, part)  # as a take wires it
    w.owned[0] = part
    state = weakref.ref(part.gw.state)
    gc.disable()
    try:
        w._drop(0)
        del part
        assert state() is not None  # the cycle: reference counts alone do not free it
        tuning.release_transient()
        assert state() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("engine", ["numpy", "compiled"])
def test_the_rules_engine_is_a_setting(engine: str) -> None:
    s = Settings.model_validate({"detection": {"engine": engine}})
    part = Partition.new(0, s, [], time.time, str, Metrics())
    assert part.gw.state.engine == engine
    with pytest.raises(ValidationError, match="engine"):
        Settings.model_validate({"detection": {"engine": "numba"}})


def test_cluster_settings_are_strict() -> None:
    assert ClusterSettings(nats_servers="nats://a:1, tls://b:2").servers == [
        "nats://a:1", "tls://b:2"]
    for bad in ({"nats_servers": "http://a"}, {"nats_servers": " , "},
                {"lease_poll_s": 10}, {"worker_name": "a b"}, {"nope": 1}):
        with pytest.raises(ValidationError):
            ClusterSettings(**bad)
