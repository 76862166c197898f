"""Prometheus metrics of the API: requests by route template and status, latency, the live
event stream, and every refusal for a security reason (`gas_api_refused_total{reason}`).
One registry per app (not the process-global one), so several apps in one process (tests,
benchmarks) never collide.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REFUSAL_REASONS = (
    "no_credential",
    "token_invalid",
    "token_expired",
    "token_revoked",
    "user_disabled",
    "api_key_invalid",
    "login_failed",
    "login_throttled",
    "login_busy",
    "hashing_busy",
    "password_rejected",
    "resident_failed",
    "resident_throttled",
    "stream_closed",
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gas_api_requests_total",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gas_api_request_seconds",
            "Time to the response head, by route",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.sse_clients = Gauge(
            "gas_api_sse_clients", "Open /events streams", registry=self.registry
        )
        self.events_received = Counter(
            "gas_api_events_received_total",
            "Notifications received on gas_events",
            registry=self.registry,
        )
        self.events_dropped = Counter(
            "gas_api_sse_dropped_total",
            "Streams closed because their client fell behind (queue full)",
            registry=self.registry,
        )
        self.listener_up = Gauge(
            "gas_api_events_listener_up",
            "1 while the LISTEN connection is established",
            registry=self.registry,
        )
        self.refused = Counter(
            "gas_api_refused_total",
            "Requests and streams refused for a security reason, by reason ("
            + ", ".join(REFUSAL_REASONS)
            + ")",
            ["reason"],
            registry=self.registry,
        )
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        self.hashes_pending = Gauge(
            "gas_api_password_hashes_pending",
            "Password hashes running or waiting for a worker",
            registry=self.registry,
        )

        # What the control room must see at once, counted from the database at each scrape
        # (alert rules: deploy/prometheus/gas-safety.rules.yml)
        self.critical_alarms = Gauge(
            "gas_api_active_critical_alarms",
            "Critical alarms not cleared (acknowledged or not)",
            registry=self.registry,
        )
        self.unacknowledged_critical = Gauge(
            "gas_api_unacknowledged_critical_alarms",
            "Critical alarms nobody has acknowledged yet",
            registry=self.registry,
        )
        self.overdue_orders = Gauge(
            "gas_api_overdue_work_orders",
            "Open work orders past their SLA, by clock (arrival: not on site by arrive_by;"
            " resolution: not resolved by resolve_by)",
            ["clock"],
            registry=self.registry,
        )
        self.open_orders = Gauge(
            "gas_api_open_work_orders",
            "Work orders open, dispatched or on site, by priority",
            ["priority"],
            registry=self.registry,
        )
        for priority in ("urgent", "high", "normal"):
            self.open_orders.labels(priority)
        for clock in ("arrival", "resolution"):
            self.overdue_orders.labels(clock)

    def refuse(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    async def refresh(self, conn: Any) -> None:
        """The gauges read from the database (one round trip, at each scrape)."""
        cur = await conn.execute(_COUNTS_SQL)
        row = await cur.fetchone()
        if row is None:
            return
        values = row if isinstance(row, (tuple, list)) else tuple(row.values())
        critical, unacked, late_arrival, late_resolution, urgent, high, normal = values
        self.critical_alarms.set(critical)
        self.unacknowledged_critical.set(unacked)
        self.overdue_orders.labels("arrival").set(late_arrival)
        self.overdue_orders.labels("resolution").set(late_resolution)
        for priority, n in (("urgent", urgent), ("high", high), ("normal", normal)):
            self.open_orders.labels(priority).set(n)


# overdue as dashboard_api.routes.work_orders.with_overdue says it
_COUNTS_SQL = """
SELECT
  (SELECT count(*) FROM alarms WHERE severity = 'critical' AND cleared_at IS NULL) AS critical,
  (SELECT count(*) FROM alarms
    WHERE severity = 'critical' AND cleared_at IS NULL AND acknowledged_at IS NULL)
    AS unacked,
  count(*) FILTER (WHERE status IN ('open', 'dispatched') AND arrive_by < now()) AS late_arrival,
  count(*) FILTER (WHERE resolve_by < now()) AS late_resolution,
  count(*) FILTER (WHERE priority = 'urgent') AS urgent,
  count(*) FILTER (WHERE priority = 'high') AS high,
  count(*) FILTER (WHERE priority = 'normal') AS normal
FROM work_orders WHERE status IN ('open', 'dispatched', 'on_site')
"""


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): streams pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                route = _route(scope)
                self.metrics.latency.labels(scope["method"], route).observe(
                    time.perf_counter() - start
                )
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(scope["method"], _route(scope), str(status["code"])).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
