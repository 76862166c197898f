"""`gas-safety worker`: settings loaded, the worker run until SIGTERM, one line on failure."""

from __future__ import annotations

import nats

from gateway.cluster.worker import WorkerService
from gateway.service.app import run_service


def main() -> int:
    """Run one worker; the exit status: 0 stopped, 3 could not start."""
    return run_service(
        "gas-safety worker",
        lambda s: WorkerService(s).run(),
        (OSError, nats.errors.Error),
        lambda s: f"log {s.cluster.nats_servers}",
    )
