"""A device's readings: raw pages, time buckets (min/max/avg checked against the data put in
with COPY), and the bounds that keep a query small."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from dashboard_api import rollup

pytestmark = pytest.mark.services

T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
MINUTES = 2 * 24 * 60  # two days, one reading a minute


def _ch4(i: int) -> float:
    return float((i * 7) % 23)


async def _copy_readings(dsn: str, detector: str, meter: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.cursor() as cur:
        async with cur.copy("COPY detector_readings (time, device_id, seq, ch4_lel, fault,"
                            " received_at) FROM STDIN") as cp:
            for i in range(MINUTES):
                t = T0 + dt.timedelta(minutes=i)
                await cp.write_row((t, detector, i, _ch4(i), 1 if i == 90 else 0, t))
        async with cur.copy("COPY meter_readings (time, device_id, seq, vol_m3, flow_m3h,"
                            " valve, batt_v, rssi, received_at) FROM STDIN") as cp:
            for i in range(MINUTES):
                t = T0 + dt.timedelta(minutes=i)
                await cp.write_row((t, meter, i, 100 + i * 0.01, (i % 60) / 10, 0,
                                    3.6 - i * 1e-4, -80, t))


async def test_raw_and_bucketed_readings(client, city, as_role, dsn) -> None:
    detector, meter = city[0].detectors[0].id, city[0].meter.id
    await _copy_readings(dsn, detector, meter)
    h = as_role["viewer"]
    window = {"start": T0.isoformat(), "end": (T0 + dt.timedelta(hours=1)).isoformat()}

    # Raw, paged: every reading once, in order.
    points, cursor = [], None
    while True:
        params = {**window, "limit": 25, **({"cursor": cursor} if cursor else {})}
        r = await client.get(f"/devices/{detector}/readings", params=params, headers=h)
        assert r.status_code == 200, r.text
        points += r.json()["points"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert [p["seq"] for p in points] == list(range(60))
    assert [p["ch4_lel"] for p in points] == [_ch4(i) for i in range(60)]

    # Bucketed by the hour over the first day.
    r = await client.get(f"/devices/{detector}/readings/buckets", headers=h, params={
        "start": T0.isoformat(), "end": (T0 + dt.timedelta(days=1)).isoformat(),
        "bucket": "1h"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "detector" and body["value"] == "ch4_lel" and body["bucket_s"] == 3600
    assert len(body["buckets"]) == 24
    for k, b in enumerate(body["buckets"]):
        values = [_ch4(i) for i in range(k * 60, (k + 1) * 60)]
        assert dt.datetime.fromisoformat(b["bucket"]) == T0 + dt.timedelta(hours=k)
        assert b["count"] == 60
        assert (b["min"], b["max"]) == (min(values), max(values))
        assert abs(b["avg"] - sum(values) / 60) < 1e-6
    assert [b["fault_any"] for b in body["buckets"][:3]] == [0, 1, 0]

    # A meter: flow statistics, last volume, lowest battery.
    r = await client.get(f"/devices/{meter}/readings/buckets", headers=h, params={
        "start": T0.isoformat(), "end": (T0 + dt.timedelta(days=2)).isoformat(),
        "bucket": "1d"})
    days = r.json()["buckets"]
    assert r.json()["value"] == "flow_m3h" and len(days) == 2
    assert days[0]["count"] == 1440 and (days[0]["min"], days[0]["max"]) == (0.0, 5.9)
    assert abs(days[0]["vol_m3_last"] - (100 + 1439 * 0.01)) < 1e-9
    assert abs(days[1]["batt_v_min"] - (3.6 - 2879e-4)) < 1e-5
    raw = (await client.get(f"/devices/{meter}/readings", headers=h, params={
        **window, "limit": 2})).json()
    assert raw["points"][0]["valve"] == "open" and raw["next_cursor"]


async def test_readings_are_bounded(client, city, as_role) -> None:
    detector = city[0].detectors[0].id
    h = as_role["viewer"]
    url = f"/devices/{detector}/readings"

    async def field(path: str, **params) -> str:
        r = await client.get(path, params=params, headers=h)
        assert r.status_code == 422, (params, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        return r.json()["errors"][0]["field"]

    long_ago = (T0 - dt.timedelta(days=401)).isoformat()
    assert await field(url, start=long_ago, end=T0.isoformat()) == "start"
    assert await field(url, start=T0.isoformat(), end=T0.isoformat()) == "start"
    assert await field(url, start="2026-10-01T00:00:00") == "start"  # no offset
    assert await field(url, start="1999-12-31T00:00:00Z") == "start"
    assert await field(url, limit=1001) == "limit"  # above max_points (1000 here)
    assert await field(url, cursor="bm90IGEgY3Vyc29y") == "cursor"
    buckets = f"{url}/buckets"
    assert await field(buckets, bucket="1m") == "bucket"  # 1440 buckets in a day > 1000
    assert await field(buckets, bucket="5x") == "bucket"
    assert await field(buckets) == "bucket"  # required
    r = await client.get(f"/devices/{detector}/readings/buckets",
                         params={"bucket": "2m"}, headers=h)
    assert r.status_code == 200 and r.json()["buckets"] == []
    assert (await client.get("/devices/nope/readings", headers=h)).status_code == 404
    assert (await client.get(url)).status_code == 401


async def test_daily_rollups_match_raw(client, city, as_role, dsn) -> None:
    detector, meter = city[1].detectors[0].id, city[1].meter.id
    await _copy_readings(dsn, detector, meter)
    h = as_role["viewer"]
    window = {"start": (T0 - dt.timedelta(hours=1)).isoformat(),
              "end": (T0 + dt.timedelta(days=2, hours=1)).isoformat()}

    async def buckets(device: str, width: str) -> list[dict]:
        r = await client.get(f"/devices/{device}/readings/buckets", headers=h,
                             params={**window, "bucket": width})
        assert r.status_code == 200, r.text
        return r.json()["buckets"]

    cases = [(d, w) for d in (detector, meter) for w in ("1d", "2d", "6h")]
    before = {case: await buckets(*case) for case in cases}
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        rolled = []
        while (day := await rollup.step(conn, (T0 + dt.timedelta(days=3)).date())) is not None:
            rolled.append(day)
        assert T0 in rolled and T0 + dt.timedelta(days=1) in rolled
        lo, hi = await rollup.covered(conn)
        assert lo <= T0 and hi == T0 + dt.timedelta(days=2)
        n = (await (await conn.execute(
            "SELECT sum(n) FROM reading_days WHERE device_id = %s", (detector,))).fetchone())[0]
        assert n == MINUTES
    for case in cases:
        after = await buckets(*case)
        assert len(after) == len(before[case])
        for a, b in zip(after, before[case], strict=True):
            assert abs(a.pop("avg") - b.pop("avg")) < 1e-6
            assert a == b, case

    # A reading that arrives after its day was rolled up shows raw, not in day buckets.
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        late = T0 + dt.timedelta(hours=5, seconds=30)
        await conn.execute("INSERT INTO detector_readings (time, device_id, seq, ch4_lel, fault,"
                           " received_at) VALUES (%s, %s, 99999, 99.0, 0, now())",
                           (late, detector))
    day_buckets = await buckets(detector, "1d")
    assert day_buckets[0]["max"] < 99 and day_buckets[0]["count"] == 1440
    hourly = await buckets(detector, "1h")  # not whole days: read raw
    assert max(b["max"] for b in hourly) == 99.0
