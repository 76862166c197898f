"""`gas-safety worker`: settings loaded, the worker run until SIGTERM, one line on failure."""

from __future__ import annotations

import asyncio

import nats

from gateway.cluster.worker import WorkerService
from gateway.service.app import StartupError


def main() -> int:
    """Run one worker; the exit status: 0 stopped, 3 could not start."""
    import sys

    from gateway import settings as settings_mod

    s = settings_mod.load()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(WorkerService(s).run())
    except StartupError as err:
        print(f"gas-safety worker: {err}", file=sys.stderr)
        return 3
    except (OSError, nats.errors.Error) as err:
        print(
            f"gas-safety worker: log {s.cluster.nats_servers} not reachable: {err}", file=sys.stderr
        )
        return 3
    return 0
