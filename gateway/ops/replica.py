"""A streaming replica of the private stack's PostgreSQL, for the API's reads that may lag.

`Replica(stack).up()` takes a base backup of the primary over its Unix socket
(`pg_basebackup -R`: the copy starts as a hot standby streaming from the primary) into
`<home>/postgres-replica/`, starts it on a free port, and writes `replica.json`, which
`gateway.settings.read_stack` turns into `db.read_dsn`. It is idempotent like `stack up`;
`down()` stops it; nothing of the primary changes except one pg_hba line letting the
`postgres` superuser replicate over the local socket (and a reload).

Lag is measured, not guessed: the API beats `replica_heartbeat` on the primary every second
and reads it back from the replica (dashboard_api.reads). Production would run the same
shape under Patroni (docs/database.md); this module is the local, single-machine form the
tests and `stack up --replica` use.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass

from gateway.ops.stack import (
    PG_BIN,
    Stack,
    StackError,
    _pg_user,
    _port_open,
    _run,
    free_port,
    pg_running,
    pg_start,
    pg_stop,
)

logger = logging.getLogger(__name__)

HBA_LINE = "local replication postgres trust"
"""What the primary needs for the base backup and the stream: the superuser, over the
socket only (the socket folder is the stack's own, mode 0755 under the project)."""


@dataclass
class ReplicaRuntime:
    """Where the replica runs: `replica.json` beside the stack's runtime.json."""

    port: int
    dsn: str
    admin_dsn: str


class Replica:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.dir = stack.home / "postgres-replica"
        self.data = self.dir / "data"
        self.run = self.dir / "run"
        self.log = self.dir / "postgres.log"
        self.runtime_file = stack.home / "replica.json"

    def runtime(self) -> ReplicaRuntime | None:
        if not self.runtime_file.is_file():
            return None
        return ReplicaRuntime(**json.loads(self.runtime_file.read_text()))

    def running(self) -> bool:
        return pg_running(self.data)

    # ------------------------------------------------------------ public
    def up(self) -> ReplicaRuntime:
        """Base backup (once), then start; the primary must be up (`stack up`)."""
        primary = self.stack.runtime()
        if primary is None or not self.stack.pg_running():
            raise StackError("the primary PostgreSQL is not running: run `gas-safety stack up`")
        rt = self.runtime() or self._new_runtime(primary.dsn)
        self._allow_replication()
        if not (self.data / "PG_VERSION").exists():
            self._base_backup(primary.pg_port)
        self._configure(rt)
        self._start(rt)
        return rt

    def down(self) -> None:
        pg_stop(self.data)

    def remove(self) -> None:
        """Stop it and delete its data and runtime file: the stack is single-node again."""
        self.down()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.runtime_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """Stop at once (immediate mode: no shutdown checkpoint), as a crash would."""
        pg_stop(self.data, "immediate")

    def status(self) -> dict[str, object]:
        rt = self.runtime()
        if rt is None:
            return {"replica": "not set up"}
        return {
            "port": rt.port,
            "data": str(self.data),
            "log": str(self.log),
            "healthy": self.running() and _port_open(rt.port),
        }

    # ------------------------------------------------------------ steps
    def _new_runtime(self, primary_dsn: str) -> ReplicaRuntime:
        port = free_port()
        fields = dict(kv.split("=", 1) for kv in primary_dsn.split())
        fields["port"] = str(port)
        rt = ReplicaRuntime(
            port=port,
            dsn=" ".join(f"{k}={v}" for k, v in fields.items()),
            admin_dsn=f"host={self.run} port={port} dbname=postgres user=postgres",
        )
        self.runtime_file.write_text(json.dumps(asdict(rt), indent=2))
        self.runtime_file.chmod(0o600)
        return rt

    def _allow_replication(self) -> None:
        hba = self.stack.pg_data / "pg_hba.conf"
        lines = hba.read_text().splitlines()
        if HBA_LINE in lines:
            return
        hba.write_text("\n".join([HBA_LINE, *lines]) + "\n")
        _run(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.stack.pg_data), "reload"],
            user=_pg_user(),
            check=False,
        )
        time.sleep(0.3)  # the postmaster rereads pg_hba.conf on SIGHUP, asynchronously

    def _base_backup(self, primary_port: int) -> None:
        user = _pg_user()
        if self.data.exists():  # a backup that died half-way: keep it aside, never delete
            aside = self.data.with_name(f"data.incomplete-{int(time.time())}")
            self.data.rename(aside)
            logger.warning("replica data folder was incomplete; moved to %s", aside)
        self.run.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, user, user)
            shutil.chown(self.run, user, user)
        logger.info("base backup of the primary into %s", self.data)
        r = _run(
            [
                str(PG_BIN / "pg_basebackup"),
                "-h",
                str(self.stack.pg_run),
                "-p",
                str(primary_port),
                "-U",
                "postgres",
                "-D",
                str(self.data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-password",
            ],
            user=user,
            check=False,
        )
        if r.returncode != 0:
            raise StackError(f"pg_basebackup failed: {r.stderr.strip()[-800:]}")

    def _configure(self, rt: ReplicaRuntime) -> None:
        # the backup copied the primary's own settings (its port, its socket folder)
        conf = self.data / "conf.d" / "gas-safety.conf"
        lines = [
            ln
            for ln in conf.read_text().splitlines()
            if not ln.startswith(("port =", "unix_socket_directories ="))
        ]
        lines += [
            f"port = {rt.port}",
            f"unix_socket_directories = '{self.run}'",
            "hot_standby = on",
            # a long report on the replica is not cancelled by the primary's vacuum
            "hot_standby_feedback = on",
        ]
        conf.write_text("\n".join(lines) + "\n")
        if os.geteuid() == 0:
            shutil.chown(conf, _pg_user(), _pg_user())

    def _start(self, rt: ReplicaRuntime) -> None:
        pg_start(self.data, self.log, rt.port, "the replica", self.runtime_file)
