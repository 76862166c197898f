"""A partition worker's /healthz: the partitions it owns and since when, its connections,
and what it has judged, stored and sent.

Served by the metrics thread while the event loop takes and drops partitions, so it reads
copies of the worker's tables, never the tables themselves.
"""

from __future__ import annotations

from typing import Any, Protocol

from nats.aio.client import Client as NatsClient

from gateway.cluster.leases import Leases
from gateway.cluster.partition import Partition
from gateway.pipeline.metrics import Metrics
from gateway.storage.writer import Writer


class Worker(Protocol):
    """What the report reads of a worker (gateway.cluster.worker.WorkerService)."""

    name: str
    owned: dict[int, Partition]
    taken_at: dict[int, float]
    unacked: dict[int, tuple[Partition, Any]]
    leases: Leases
    nc: NatsClient | None
    writer: Writer | None
    metrics: Metrics
    commands_sent: int
    backlog_judged: int


def report(worker: Worker) -> dict[str, Any]:
    """The worker's health document; "degraded", with the problems, when a connection it
    needs is down."""
    w = worker.writer
    owned = dict(worker.owned)
    taken_at = dict(worker.taken_at)
    lease_up = worker.leases.conn is not None and not worker.leases.conn.closed
    nats_up = worker.nc is not None and worker.nc.is_connected
    problems = [
        what
        for what, ok in (
            ("lease connection down", lease_up),
            ("log not connected", nats_up),
            ("writer cannot reach the database", w is None or w.db_up or not w.pending_rows),
        )
        if not ok
    ]
    return {
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "worker": worker.name,
        "partitions": sorted(owned),
        "taken_at": {str(p): t for p, t in taken_at.items()},
        "received": sum(p.received for p in owned.values()),
        "unacked": len(worker.unacked),
        "commands_sent": worker.commands_sent,
        "backlog_judged": worker.backlog_judged,
        "read_back": worker.metrics.value("gas_log_read_back_total"),
        "devices": sum(len(p.gw.registry) for p in owned.values()),
        "engine": next((p.gw.state.engine for p in owned.values()), None),
        "state_mb": round(sum(p.state_bytes for p in owned.values()) / 2**20, 2),
        "stored": worker.metrics.value("gas_readings_stored_total"),
        "duplicates_absorbed": w.duplicates_absorbed if w is not None else 0,
    }
