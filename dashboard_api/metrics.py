"""Prometheus metrics of the API: requests by route template and status, latency, the live
event stream, and every refusal for a security reason (`gas_api_refused_total{reason}`).
One registry per app (not the process-global one), so several apps in one process (tests,
benchmarks) never collide.
"""

from __future__ import annotations

import time

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

    def refuse(self, reason: str) -> None:
        self.refused.labels(reason).inc()


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
