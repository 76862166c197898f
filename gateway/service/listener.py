"""PostgreSQL LISTEN for the gateway: registry changes (`gas_registry`: devices provisioned
while it runs) and operators' valve commands (`gas_commands`: rows the API inserted in
valve_commands with state 'issued').

An operator's command is handed to the pipeline, which sends it, unless the same action is
already in flight for that meter: then the row is marked 'attached' to the command in
flight, so a meter never has two closes on the wire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import psycopg

from gateway.pipeline.gateway import Gateway
from gateway.storage.operator_commands import attach, issued_commands
from gateway.storage.registry_sql import load_registry

logger = logging.getLogger(__name__)


class Listener:
    """Listens until `stopping`, reconnecting after a database outage."""

    def __init__(
        self, dsn: str, gw: Gateway, stopping: asyncio.Event, clock: Callable[[], float]
    ) -> None:
        self.dsn = dsn
        self.gw = gw
        self.stopping = stopping
        self.clock = clock

    async def run(self) -> None:
        failing = False
        while not self.stopping.is_set():
            try:
                async with (
                    await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as listen,
                    await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as query,
                ):
                    await listen.execute("LISTEN gas_registry")
                    await listen.execute("LISTEN gas_commands")
                    failing = False
                    await self.pick_up_operator_commands(query)
                    # the notifies generator holds its connection: queries use the other one
                    async for note in listen.notifies():
                        if note.channel == "gas_registry":
                            await self.refresh_registry()
                        elif note.channel == "gas_commands":
                            await self.pick_up_operator_commands(query)
            except psycopg.OperationalError as err:
                # once per outage: the writer reports the outage itself
                (logger.debug if failing else logger.warning)(
                    "listener lost the database (%s); retrying", str(err).strip()[:200]
                )
                failing = True
                await asyncio.sleep(1.0)
            else:
                failing = False

    async def refresh_registry(self) -> None:
        """Devices provisioned since the last load join the registry."""
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
            n = await load_registry(conn, self.gw)
        if n:
            logger.info("registry refreshed new_devices=%d total=%d", n, len(self.gw.device_ids))

    async def pick_up_operator_commands(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Every issued command not yet in the book: sent, or attached to the one in flight."""
        commands = await issued_commands(conn)
        now = self.clock()
        for cmd in commands:
            if self.gw.knows_command(cmd.cmd_id):
                continue
            current = self.gw.operator_command(cmd, now)
            if current is not None:
                await attach(conn, cmd.cmd_id, current.cmd_id)
        if commands:
            self.gw.flush()
