"""`gas-safety watch` against the real broker: a technician tails one household's devices
and sees their readings and the valve command, decoded, as they happen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.services

GAS_SAFETY = str(Path(sys.executable).parent / "gas-safety")


def test_watch_tails_a_households_traffic(gateway: Any, fleet: Any, devices: Any,
                                          dsn: str) -> None:
    home = fleet(1)[0]
    gateway.wait_devices(dsn)
    watch = subprocess.Popen([GAS_SAFETY, "watch", "--household", home.id, "--json",
                              "--count", "3", "--duration", "30"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stderr is not None and watch.stdout is not None
        assert "watching" in watch.stderr.readline()  # subscribed: what follows is seen
        meter = devices(home.meter.id)
        det = devices(home.detectors[0].id)
        det.detector(1.5)
        det.detector(45.0)  # a leak: the gateway sends the meter a valve close
        meter.commands.get(timeout=10)
        out, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    seen = [(x["device"], x["channel"], x["fields"].get("ch4") or x["fields"].get("action"))
            for x in lines]
    assert seen == [(det.id, "telemetry", 1.5), (det.id, "telemetry", 45.0),
                    (meter.id, "cmd", "valve_close")]


def test_watch_refuses_what_it_cannot_watch(stack: Any) -> None:
    r = subprocess.run([GAS_SAFETY, "watch", "bad/id", "--count", "1"], check=False,
                       capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "gas-safety watch: not a device id: 'bad/id' (letters, digits, _ and -; 1-64)"]
    r = subprocess.run([GAS_SAFETY, "watch", "--count", "0"], check=False, capture_output=True,
                       text=True,
                       timeout=30)
    assert r.returncode == 2 and "must be at least 1" in r.stderr
