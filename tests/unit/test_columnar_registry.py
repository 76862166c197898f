"""The registry's columns: strings by position, the str index, and the registry over them."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from gateway.core.columns import Grow, StrColumn, StrIndex
from gateway.core.registry import KIND_METER, DeviceRow, HouseholdInfo, Registry


def _row(did: str, kind: str, hid: str, address: str = "1 Road") -> tuple:
    return (did, kind, "GM-G4" if kind == "meter" else "LD-100", hid, dt.date(2024, 1, 2),
            address, "C00", "C00-B000", "Ana Kim", "+1555", None, 6.0)


def test_a_str_column_gives_back_what_it_was_given_in_parts() -> None:
    words = ["", "é", "m1", "a" * 300, "d00001a"]
    col = StrColumn(words[:2])
    col.extend(words[2:])
    assert list(col) == words and col[-1] == words[-1] and col[1:3] == words[1:3]
    assert col == words and len(col) == 5 and col.equals(1, "é") and not col.equals(1, "e")
    copy = StrColumn()
    copy.extend_encoded(*col.encoded())
    assert copy == col and list(col.iter_from(3)) == words[3:]
    with pytest.raises(IndexError):
        col[5]
    with pytest.raises(ValueError, match="add up"):
        copy.extend_encoded(b"abc", [1])


def test_the_str_index_finds_every_key_through_growth_and_collisions() -> None:
    col = StrColumn()
    index = StrIndex(col)
    keys = [f"d{i:06d}" for i in range(5000)]
    for lo in range(0, 5000, 700):  # grown in parts, rehashed on the way
        part = keys[lo : lo + 700]
        col.extend(part)
        index.add(part, lo, len(part))
    assert all(index.get(k) == i for i, k in enumerate(keys))
    assert index.get("nope") is None and "nope" not in index and len(index) == 5000
    with pytest.raises(KeyError):
        index["nope"]
    assert 3 * len(index) <= 2 * len(index._pos)  # at most two thirds full
    index.reserve(20_000)  # grown ahead: hashed again from the column
    assert len(index._pos) == 32768 and all(index.get(k) == i for i, k in enumerate(keys))
    with pytest.raises(ValueError, match="next string"):
        index.add(["x"], 7, 1)
    start, length = col.spans([0, 4999])
    assert length.tolist() == [7, 7] and start.tolist() == [0, 4999 * 7]


def test_a_key_whose_hash_matches_a_stored_one_is_still_told_apart() -> None:
    col = StrColumn(["a"])
    index = StrIndex(col)
    index.add(["a"], 0, 1)
    h = hash("zz")  # forge the table: "a" stored under the tag of "zz", in its bucket
    index._pos[:] = -1
    index._pos[h & index._mask], index._tag[h & index._mask] = 0, h >> 32
    assert index.get("zz") is None


def test_grow_keeps_its_values_and_room_is_not_values() -> None:
    g = Grow(np.int32, [1, 2])
    g.reserve(1000)
    g.extend(np.arange(3, 10))
    assert g.values.tolist() == list(range(1, 10)) and len(g) == 9 and g.mv[8] == 9


def test_the_registry_reads_as_the_mappings_it_replaced() -> None:
    r, cols = Registry.from_rows(
        [_row("m1", "meter", "h1"), _row("m2", "meter", "h2"), _row("d1a", "detector", "h1"),
         _row("d2a", "detector", "h2")]
    )
    assert list(r.ids) == ["m1", "m2", "d1a", "d2a"] and r.index["d2a"] == 3
    assert r.kind[0] == KIND_METER and r.kind[2] == 0 and r.household_of[3] == "h2"
    assert r.meter_of("h1") == "m1" and r.meter_of("h9") is None
    hh = r.households["h2"]
    assert (hh.address, hh.building, hh.owner_email, hh.meter_id) == ("1 Road", "C00-B000",
                                                                       None, "m2")
    assert "h1" in r.households and r.households.get("h9") is None
    assert cols["meter_slot"].tolist() == [0, 1, 0, 1]
    assert cols["household"].tolist() == [0, 1, 0, 1] and cols["kinds"].tolist() == [1, 1, 0, 0]
    assert cols["installed_ts"][0] == dt.datetime(2024, 1, 2, tzinfo=dt.UTC).timestamp()
    assert cols["qmax_m3h"].tolist() == [6.0] * 4
    # a later part: a detector whose meter came earlier, a known device again, a changed address
    more = r.add_rows([_row("d1b", "detector", "h1", "2 Road"), _row("m1", "meter", "h1")])
    assert more["meter_slot"].tolist() == [0] and len(r) == 5
    assert r.households["h1"].address == "2 Road" and r.nbytes() > 0
    assert r.id_bytes[r.id_start[4] : r.id_start[4] + r.id_len[4]].tobytes() == b"d1b"


def test_from_arrays_builds_a_partitions_registry() -> None:
    homes = [HouseholdInfo(f"h{i}", "a", "c", "b", "o", "p", None, 2.5, None) for i in range(2)]
    r, cols = Registry.from_arrays(
        ["m0", "m1", "d0"], [1, 1, 0], ["G", "G", "L"], [0, 1, 0], [0.0, 0.0, 86400.0], homes
    )
    assert cols["meter_slot"].tolist() == [0, 1, 0] and r.models == {"G": 0, "L": 1}
    assert cols["model"].tolist() == [0, 0, 1] and r.households["h0"].meter_id == "m0"
    twice, _ = Registry.from_arrays(["m5"], [1], ["G"], [1], [0.0], [homes[0], homes[0]])
    assert len(twice.households) == 1 and twice.households["h0"].meter_id == "m5"
    with pytest.raises(ValueError, match="same length"):
        r.add_arrays(["x"], [0, 1], ["L"], [0], [0.0], homes)
    with pytest.raises(ValueError, match="household"):
        r.add_arrays(["x"], [0], ["L"], [5], [0.0], homes)


def test_device_rows_name_a_meter_through_their_household() -> None:
    r = Registry()
    info = HouseholdInfo("h1", "a", "c", "b", "o", "p", "e@x", 2.5, None)
    r.add([DeviceRow("m1", "meter", "X", "h1", dt.date(2024, 1, 1))], {"h1": info})
    cols = r.add([DeviceRow("d1", "detector", "X", "h1", dt.date(2024, 1, 1))], {"h1": info})
    assert cols["meter_slot"].tolist() == [0] and r.households["h1"].owner_email == "e@x"
    with pytest.raises(ValueError, match="not given"):
        r.add([DeviceRow("d2", "detector", "X", "h2", dt.date(2024, 1, 1))], {})
