"""Prometheus metrics of the gateway: one registry per Gateway, so tests can read them.

`serve` answers /metrics (Prometheus) and /healthz (the gateway's own health, as JSON, for
`gas-safety status` and load balancers) on one port, from a daemon thread.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.readings = Counter("gas_readings_received", "Valid readings received", registry=r)
        self.stored = Counter(
            "gas_readings_stored", "Readings committed to TimescaleDB", registry=r
        )
        self.rejects = Counter("gas_rejects", "Messages refused, by reason", ["reason"], registry=r)
        self.alarms = Counter("gas_alarms_raised", "Alarms raised, by kind", ["kind"], registry=r)
        self.alarms_cleared = Counter(
            "gas_alarms_cleared", "Alarms cleared, by kind", ["kind"], registry=r
        )
        self.commands = Counter(
            "gas_valve_commands", "Valve commands by state reached", ["state"], registry=r
        )
        self.alarm_latency = Histogram(
            "gas_alarm_latency_seconds",
            "Socket read holding a dangerous reading -> valve command written",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.ack_latency = Histogram(
            "gas_valve_ack_seconds",
            "Command sent -> device ack",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30),
        )
        self.handle_seconds = Histogram(
            "gas_handle_seconds",
            "Hot path time per socket read",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.loop_lag = Histogram(
            "gas_loop_lag_seconds",
            "How late a 10 ms timer fires: the time a reading can wait"
            " unread while the event loop is busy or off the CPU",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.ingest_lag = Histogram(
            "gas_ingest_lag_seconds",
            "Oldest reading of each judged slice: device time ->"
            " judged (a backlog shows here; device clocks are trusted up to the skew limit)",
            registry=r,
            buckets=(*_LATENCY_BUCKETS, 2.5, 10.0),
        )
        self.fast_lane = Counter(
            "gas_fast_lane_cuts",
            "Valves cut for an instant leak ahead of the readings queued before it",
            registry=r,
        )
        self.seq_gaps = Counter("gas_seq_gaps", "Readings missing by device sequence", registry=r)
        self.late = Counter(
            "gas_readings_late",
            "Readings behind their device's sequence from a reordering input (the cluster's"
            " log): stored, not judged",
            registry=r,
        )
        self.read_back = Counter(
            "gas_log_read_back",
            "Log messages its consumer gave out to no live reader (a dead owner's request, a"
            " dying log node's wire), read back by sequence and judged",
            registry=r,
        )
        self.clock_skew = Counter(
            "gas_clock_skew", "Readings with a skewed device clock", registry=r
        )
        self.buffer_rows = Gauge(
            "gas_writer_buffer_rows", "Rows waiting for the database", registry=r
        )
        self.writer_lag = Gauge("gas_writer_lag_seconds", "Batch closed -> committed", registry=r)
        self.duplicates = Gauge("gas_duplicates_absorbed", "Redelivered rows absorbed", registry=r)
        self.unacked = Gauge(
            "gas_mqtt_unacked", "QoS 1 messages received, not yet acked", registry=r
        )
        self.open_commands = Gauge(
            "gas_open_commands", "Valve commands awaiting an ack", registry=r
        )
        self.db_up = Gauge("gas_db_up", "1 when the writer reaches the database", registry=r)
        self.writer_restarts = Gauge(
            "gas_writer_restarts", "Writer processes started again after one died", registry=r
        )
        self.devices = Gauge("gas_registry_devices", "Devices known to the gateway", registry=r)
        self.command_link = Gauge(
            "gas_mqtt_command_link",
            "1 when valve commands have their own connection to the broker",
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "gas_mqtt_connected", "1 when connected to the broker", registry=r
        )

        self.spool_batches = Gauge(
            "gas_spool_batches",
            "Batches held in the local spool while the database was away, not yet written",
            registry=r,
        )
        self.last_commit = Gauge(
            "gas_writer_last_commit_timestamp_seconds",
            "When the writer last committed a batch (Unix time; 0: not yet)",
            registry=r,
        )

    def serve(
        self, port: int, host: str = "127.0.0.1", health: Callable[[], dict[str, Any]] | None = None
    ) -> ThreadingHTTPServer | None:
        """/metrics and /healthz on host:port (port 0: nothing); OSError when it cannot bind."""
        if not port:
            return None
        server = ThreadingHTTPServer((host, port), _handler(self.registry, health))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        return server

    def value(self, name: str, **labels: str) -> float:
        v = self.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v


def _handler(
    registry: CollectorRegistry, health: Callable[[], dict[str, Any]] | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/healthz" and health is not None:
                doc = health()
                code = 200 if doc.get("status") == "ok" else 503
                self._answer(code, "application/json", json.dumps(doc).encode())
            else:
                self._answer(404, "text/plain", b"not found: /metrics or /healthz\n")

        def _answer(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes are not news: nothing logged."""

    return Handler


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """A Prometheus endpoint read back as {'name{labels}': value}; empty when it does not
    answer (the process is starting or gone), so callers can poll it."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
