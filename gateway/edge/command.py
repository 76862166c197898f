"""`gas-safety relay`: run one edge relay (gateway.edge.relay) until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from gateway.ops.options import add_service_options

logger = logging.getLogger(__name__)

EXIT_STARTUP = 3


def _relay(args: argparse.Namespace) -> int:
    from gateway import settings
    from gateway.edge.metrics import RelayMetrics
    from gateway.edge.relay import Relay

    s = settings.load()
    if not s.edge.password.get_secret_value():
        raise settings.SettingsError(
            "edge.password is empty: set the relay account's password"
            " (GAS_SAFETY_EDGE__PASSWORD or [edge] password in the settings file)"
        )
    metrics = RelayMetrics()
    try:
        metrics.serve(s.edge.metrics_port, s.edge.metrics_host)
    except OSError as err:
        print(
            f"gas-safety relay: metrics endpoint {s.edge.metrics_host}:{s.edge.metrics_port}:"
            f" {err.strerror or err} (set edge.metrics_port to a free port, or 0)",
            file=sys.stderr,
        )
        return EXIT_STARTUP
    relay = Relay(s.edge, s.db.dsn, s.mqtt.topic_prefix, metrics)

    async def run() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        logger.info(
            "relay %s: broker %s:%d as %s, log %s",
            s.edge.name,
            s.edge.mqtt_host,
            s.edge.mqtt_port,
            s.edge.username,
            ",".join(s.edge.nats_urls),
        )
        await relay.run(stopping)

    asyncio.run(run())
    return 0


def register(subparsers: Any) -> None:
    """Add `relay`."""
    p = subparsers.add_parser(
        "relay",
        help="run an edge relay: its broker's device messages into the log, commands back",
        description="Relay device messages from one Mosquitto broker (edge.mqtt_host, "
        "edge.mqtt_port, account edge.username) into NATS JetStream (edge.nats_urls), "
        "subject gas.in.<building partition>; acknowledge each to the broker only after "
        "the log confirmed it. Publish valve commands from gas.cmd.<meter> to the broker. "
        "Settings: the [edge] section (docs/cluster.md).",
    )
    add_service_options(p)
    p.set_defaults(func=_relay)
