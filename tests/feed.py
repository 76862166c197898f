"""Feeding the gateway's hot path directly, without a broker or a database: a small fleet of
three households (h1 and h2 in one building, h3 in another) and helpers that publish as
its devices would."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from typing import Any

from gateway.pipeline.gateway import Gateway
from gateway.protocol.packets import Message
from gateway.settings import Settings

NOW = 1_800_000_000.0


def rows() -> list[tuple]:
    def row(did: str, kind: str, model: str, hid: str, building: str = "C00-B000") -> tuple:
        return (did, kind, model, hid, dt.date(2024, 1, 1), "1 Road", "C00", building, "Ann",
                "+15550000001", None, 4.0)
    return [row("m1", "meter", "GM-G2.5", "h1"), row("d1", "detector", "LD-100", "h1"),
            row("m2", "meter", "GM-G2.5", "h2"), row("d2", "detector", "LD-100", "h2"),
            row("m3", "meter", "GM-G2.5", "h3", "C00-B001"),
            row("d3", "detector", "LD-100", "h3", "C00-B001")]


class Harness:
    def __init__(self) -> None:
        self.now = NOW
        ids = itertools.count(1)
        # the clock is the harness's `now`; command ids count up: runs repeat exactly
        self.gw = Gateway(Settings(), clock=lambda: self.now,
                          new_id=lambda: f"gw-{next(ids)}")
        self.gw.load_devices(rows())
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.gw.publish = lambda t, p: self.published.append((t, json.loads(p)))
        self.submitted: list[Any] = []
        self.gw.submit = self.submitted.append
        self.pid = 0
        self.seq: dict[str, int] = {}

    def feed(self, topic: str, payload: dict[str, Any] | bytes, dup: bool = False,
             qos: int = 1) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.pid += 1
        self.gw.handle([Message(topic, raw, qos, self.pid if qos else 0, dup, False)], self.now)

    def detector(self, did: str, ch4: float, fault: int = 0, seq: int | None = None,
                 dup: bool = False) -> None:
        s = seq if seq is not None else self.seq.get(did, 0) + 1
        self.seq[did] = max(self.seq.get(did, 0), s)
        self.feed(f"gas/v1/{did}/telemetry", {"seq": s, "ts": self.now, "ch4": ch4,
                                              "fault": fault}, dup=dup)
        self.now += 1

    def meter(self, did: str, flow: float, valve: str = "open") -> None:
        s = self.seq.get(did, 0) + 1
        self.seq[did] = s
        self.feed(f"gas/v1/{did}/telemetry", {"seq": s, "ts": self.now, "vol": 10.0,
                                              "flow": flow, "valve": valve, "batt": 3.6,
                                              "rssi": -70})
        self.now += 1

    def closes(self) -> list[str]:
        return [t.split("/")[2] for t, p in self.published if p["action"] == "valve_close"]
