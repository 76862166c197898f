"""`gas-safety status`: every component of a running platform, one line each.

The database and the broker the settings point at (the private stack's when it runs), the
gateway's /healthz (on its metrics port) and the API's /healthz. Each check is what a
client of that component would see: a database session, an MQTT CONNACK, an HTTP answer.
The exit status (0: all healthy) is for scripts and monitoring.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

from gateway.settings import Settings, read_stack


@dataclass(frozen=True)
class Check:
    """One component: whether it is healthy, where it was asked, and what it said."""

    component: str
    healthy: bool
    where: str
    detail: str


def _local(host: str) -> str:
    """The address to ask for a service bound to every interface."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def check_database(dsn: str, timeout_s: float) -> Check:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(dsn)
    where = f"{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}/{parts.get('dbname')}"
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, int(timeout_s))) as conn:
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
            ).fetchone()
    except psycopg.Error as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return Check("database", False, where, first)
    if row is None:
        return Check("database", False, where, "TimescaleDB is not installed in this database")
    return Check("database", True, where, f"TimescaleDB {row[0]}")


def _connect_packet(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT without credentials: any broker answers it with a CONNACK."""
    cid = client_id.encode()
    body = (
        struct.pack("!H", 4)
        + b"MQTT"
        + bytes([4, 0x02])  # level 4, clean session
        + struct.pack("!H", 10)
        + struct.pack("!H", len(cid))
        + cid
    )
    return bytes([0x10, len(body)]) + body


def check_broker(host: str, port: int, timeout_s: float) -> Check:
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(_connect_packet(f"status-{time.time_ns() % 10**9}"))
            head = sock.recv(4)
    except OSError as err:
        return Check("broker", False, where, err.strerror or str(err) or type(err).__name__)
    if len(head) < 4 or head[0] != 0x20:
        return Check("broker", False, where, "answered, but not as an MQTT broker")
    # 5 (not authorised) is the answer to expect: the broker refuses anonymous clients
    return Check("broker", True, where, f"MQTT broker answers (CONNACK {head[3]})")


def _get_json(url: str, timeout_s: float) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:  # 503 with a body: degraded, and why
        try:
            return err.code, json.loads(err.read())
        except ValueError:
            return err.code, {}


def _http_check(component: str, url: str, timeout_s: float) -> tuple[Check | None, dict[str, Any]]:
    try:
        code, doc = _get_json(url, timeout_s)
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        why = getattr(reason, "strerror", None) or str(reason)
        return Check(component, False, url, f"not answering ({why})"), {}
    if not doc:
        return Check(component, False, url, f"HTTP {code} without a health document"), {}
    return None, doc


def check_gateway(host: str, port: int, timeout_s: float) -> Check:
    if not port:
        return Check("gateway", False, "-", "metrics_port = 0: the gateway has no health endpoint")
    url = f"http://{_local(host)}:{port}/healthz"
    failed, doc = _http_check("gateway", url, timeout_s)
    if failed is not None:
        return failed
    mqtt, writer = doc.get("mqtt", {}), doc.get("writer", {})
    age = writer.get("last_commit_age_s")
    facts = [
        f"broker {'connected' if mqtt.get('connected') else 'NOT connected'}",
        "database " + {True: "up", False: "DOWN", None: "idle"}[writer.get("db_up")],
        f"loop lag {doc.get('loop_lag_mean_ms', 0):.2f} ms",
        f"spool {doc.get('spool_batches', 0)}",
        "last commit " + ("none yet" if age is None else f"{age:.0f} s ago"),
        f"writer restarts {writer.get('restarts', 0)}",
        f"{doc.get('devices', 0)} devices",
    ]
    problems = doc.get("problems") or []
    detail = ", ".join(facts) + (f" ({'; '.join(problems)})" if problems else "")
    return Check("gateway", doc.get("status") == "ok", url, detail)


def check_api(host: str, port: int, timeout_s: float) -> Check:
    url = f"http://{_local(host)}:{port}/healthz"
    failed, doc = _http_check("api", url, timeout_s)
    if failed is not None:
        return failed
    detail = (
        f"database {'up' if doc.get('database') else 'DOWN'}, "
        f"events listener {'up' if doc.get('events_listener') else 'DOWN'}"
    )
    gateway = doc.get("gateway")
    if isinstance(gateway, dict):
        detail += f", gateway {gateway.get('status')}"
    return Check("api", doc.get("status") == "ok", url, detail)


def check_all(settings: Settings, timeout_s: float = 3.0) -> list[Check]:
    stack, _ = read_stack()
    origin = " (private stack)" if stack is not None else ""
    db = check_database(settings.db.dsn, timeout_s)
    broker = check_broker(settings.mqtt.host, settings.mqtt.port, timeout_s)
    return [
        Check(db.component, db.healthy, db.where + origin, db.detail),
        Check(broker.component, broker.healthy, broker.where + origin, broker.detail),
        check_gateway(settings.metrics_host, settings.metrics_port, timeout_s),
        check_api(settings.api.host, settings.api.port, timeout_s),
    ]


def as_text(checks: list[Check]) -> str:
    width = max(len(c.where) for c in checks)
    return "\n".join(
        f"{c.component:<9} {'ok' if c.healthy else 'FAIL':<5} {c.where:<{width}}  {c.detail}"
        for c in checks
    )


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {
        "healthy": all(c.healthy for c in checks),
        "components": {c.component: asdict(c) for c in checks},
    }
