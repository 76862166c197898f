"""The private stack: a Mosquitto broker and a PostgreSQL + TimescaleDB cluster under one folder.

`up` is idempotent and recovers from crashes (stale pid files, a half-initialised data
folder); `down` stops both cleanly; `status` says where each runs and whether it answers.
Nothing global is touched: free ports on 127.0.0.1, data, logs and sockets under `home`.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.settings import ROOT, stack_home

logger = logging.getLogger(__name__)

PG_VERSION = "15"
PG_BIN = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin")
DB_NAME = "gas_safety"
DB_USER = "gas_safety"


class StackError(RuntimeError):
    """Something the operator must fix; the message says what and how."""


@dataclass
class Runtime:
    """What `stack up` started, written to runtime.json for every other command."""

    home: str
    mqtt_port: int
    pg_port: int
    dsn: str
    admin_dsn: str
    gateway_password: str
    bridge_password: str
    fleet_key: str
    mqtt_tls_port: int = 0  # 0: no TLS listener (runtime files from before TLS)


BROKER_RT_PRIORITY = 10  # SCHED_RR, as the gateway's event loop (gateway.settings.PrioritySettings)
BROKER_NICE = -10  # when real-time is not permitted


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (private services, tests, benches)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pg_user() -> str:
    """PostgreSQL refuses to run as root: use the `postgres` system user then."""
    return "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


def _run(
    cmd: list[str], *, user: str | None = None, check: bool = True, **kw: object
) -> subprocess.CompletedProcess[str]:
    if user and os.geteuid() == 0 and user != "root":
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kw)  # type: ignore[call-overload]


def pg_running(data: Path) -> bool:
    """Whether the PostgreSQL instance of `data` runs (`pg_ctl status`)."""
    if not (data / "PG_VERSION").exists():
        return False
    r = _run([str(PG_BIN / "pg_ctl"), "-D", str(data), "status"], user=_pg_user(), check=False)
    return r.returncode == 0


def pg_start(data: Path, log: Path, port: int, what: str, runtime_file: Path) -> None:
    """Start the instance of `data` on `port` (waiting until it accepts connections), unless
    it runs; `what` names it in errors, `runtime_file` is where its port was chosen."""
    if pg_running(data):
        return
    if _port_open(port):
        raise StackError(
            f"port {port} ({what}) is used by another program; "
            f"stop it or delete {runtime_file} to choose new ports"
        )
    user = _pg_user()
    os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640))
    if os.geteuid() == 0:
        shutil.chown(log, user, user)
    cmd = ["-D", str(data), "-l", str(log), "-w", "-t", "90", "start"]
    r = _run([str(PG_BIN / "pg_ctl"), *cmd], user=user, check=False)
    if r.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise StackError(f"{what} did not start:\n" + "\n".join(tail))


def pg_stop(data: Path, mode: str = "fast") -> None:
    """Stop the instance of `data` if it runs: `fast` (a clean shutdown) or `immediate`
    (no shutdown checkpoint, as a crash would)."""
    if pg_running(data):
        cmd = ["-D", str(data), "-m", mode, "-w", "-t", "60", "stop"]
        _run([str(PG_BIN / "pg_ctl"), *cmd], user=_pg_user(), check=False)


class Stack:
    def __init__(self, home: Path | None = None) -> None:
        self.home = (home or stack_home()).resolve()
        self.pg_dir = self.home / "postgres"
        self.pg_data = self.pg_dir / "data"
        self.pg_run = self.pg_dir / "run"
        self.pg_log = self.pg_dir / "postgres.log"
        self.mq_dir = self.home / "mosquitto"
        self.mq_conf = self.mq_dir / "instance.conf"
        self.mq_pid = self.mq_dir / "mosquitto.pid"
        self.mq_log = self.mq_dir / "mosquitto.log"
        self.passwd_file = self.mq_dir / "passwd"
        self.acl_file = self.mq_dir / "acl"
        self.runtime_file = self.home / "runtime.json"

    # ------------------------------------------------------------ runtime
    def runtime(self) -> Runtime | None:
        if not self.runtime_file.is_file():
            return None
        return Runtime(**json.loads(self.runtime_file.read_text()))

    def _new_runtime(self) -> Runtime:
        old = self.runtime()
        if old is not None:
            return old
        pg_port, mqtt_port, tls_port = free_port(), free_port(), free_port()
        db_password = secrets.token_urlsafe(18)
        rt = Runtime(
            home=str(self.home),
            mqtt_port=mqtt_port,
            pg_port=pg_port,
            dsn=(
                f"host=127.0.0.1 port={pg_port} dbname={DB_NAME} user={DB_USER}"
                f" password={db_password}"
            ),
            admin_dsn=f"host={self.pg_run} port={pg_port} dbname=postgres user=postgres",
            gateway_password=secrets.token_urlsafe(18),
            bridge_password=secrets.token_urlsafe(18),
            fleet_key=secrets.token_hex(32),
            mqtt_tls_port=tls_port,
        )
        self.home.mkdir(parents=True, exist_ok=True)
        self.runtime_file.write_text(json.dumps(asdict(rt), indent=2))
        self.runtime_file.chmod(0o600)
        return rt

    # ------------------------------------------------------------ checks
    def check_installed(self) -> None:
        missing = [str(p) for p in (PG_BIN / "postgres", PG_BIN / "initdb") if not p.exists()]
        for tool in ("mosquitto", "mosquitto_passwd"):
            if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
                missing.append(tool)
        pkglib = Path(f"/usr/lib/postgresql/{PG_VERSION}/lib/timescaledb.so")
        if not pkglib.exists():
            missing.append(str(pkglib))
        if missing:
            raise StackError(
                "missing: "
                + ", ".join(missing)
                + "; run scripts/bootstrap.sh (or ./dev.sh) to install them"
            )

    # ------------------------------------------------------------ postgres
    def _pg_ensure_initialised(self, rt: Runtime) -> None:
        user = _pg_user()
        if self.pg_data.exists() and not (self.pg_data / "PG_VERSION").exists():
            # initdb died half-way: nothing usable is stored there; keep it aside, never delete.
            aside = self.pg_data.with_name(f"data.incomplete-{int(time.time())}")
            logger.warning(
                "postgres data folder %s is half-initialised; moved to %s", self.pg_data, aside
            )
            self.pg_data.rename(aside)
        self.pg_run.mkdir(parents=True, exist_ok=True)
        if (
            os.geteuid() == 0
            and _run(["test", "-x", str(self.pg_dir)], user=user, check=False).returncode != 0
        ):
            raise StackError(
                f"the {user} system user cannot reach {self.pg_dir}: let it "
                f"traverse the parent folders (chmod o+x) or set GAS_SAFETY_HOME"
            )
        if os.geteuid() == 0:
            shutil.chown(self.pg_dir, user, user)
            shutil.chown(self.pg_run, user, user)
        if not self.pg_data.exists():
            logger.info("initialising the PostgreSQL cluster in %s", self.pg_data)
            self.pg_data.mkdir(mode=0o700)
            if os.geteuid() == 0:
                shutil.chown(self.pg_data, user, user)
            r = _run(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.pg_data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-instructions",
                ],
                user=user,
                check=False,
            )
            if r.returncode != 0:
                raise StackError(f"initdb failed in {self.pg_data}: {r.stderr.strip()[-800:]}")
            (self.pg_data / "conf.d").mkdir(exist_ok=True)
            with (self.pg_data / "postgresql.conf").open("a") as f:
                f.write("\ninclude_dir = 'conf.d'\n")
            (self.pg_data / "pg_hba.conf").write_text(
                "local all all trust\n"
                "host all postgres 127.0.0.1/32 reject\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
            )
            if os.geteuid() == 0:
                for p in (self.pg_data / "conf.d", self.pg_data / "pg_hba.conf"):
                    shutil.chown(p, user, user)
        conf = self.pg_data / "conf.d" / "gas-safety.conf"
        conf.write_text(
            f"port = {rt.pg_port}\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.pg_run}'\n"
            "shared_preload_libraries = 'timescaledb'\n"
            "timescaledb.telemetry_level = off\n"
            "shared_buffers = 512MB\n"
            "max_connections = 200\n"
            "max_wal_size = 4GB\n"
            "checkpoint_timeout = 15min\n"
            "password_encryption = 'scram-sha-256'\n"
            "logging_collector = off\n"
        )
        if os.geteuid() == 0:
            shutil.chown(conf, user, user)

    def pg_running(self) -> bool:
        return pg_running(self.pg_data)

    def _pg_start(self, rt: Runtime) -> None:
        pg_start(self.pg_data, self.pg_log, rt.pg_port, "PostgreSQL", self.runtime_file)

    def _pg_bootstrap_db(self, rt: Runtime) -> None:
        import psycopg
        from psycopg import sql

        password = dict(kv.split("=", 1) for kv in rt.dsn.split())["password"]
        with psycopg.connect(rt.admin_dsn, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_USER,)).fetchone():
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(DB_USER), sql.Literal(password)
                    )
                )
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)
            ).fetchone():
                conn.execute(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
        admin_db = rt.admin_dsn.replace("dbname=postgres", f"dbname={DB_NAME}")
        with psycopg.connect(admin_db, autocommit=True) as conn:
            # The extension needs a superuser to create; everything else is the owner's.
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")

    def _pg_stop(self) -> None:
        pg_stop(self.pg_data)

    # ------------------------------------------------------------ mosquitto
    def _mq_pid(self) -> int | None:
        try:
            pid = int(self.mq_pid.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # stale pid file from a crash
        except PermissionError:
            pass
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"mosquitto" not in cmdline.read_bytes():
            return None  # the pid was reused by something else
        return pid

    def mq_running(self) -> bool:
        return self._mq_pid() is not None

    def write_mosquitto_conf(self, rt: Runtime) -> None:
        self.mq_dir.mkdir(parents=True, exist_ok=True)
        (self.mq_dir / "data").mkdir(exist_ok=True)
        for f in (self.passwd_file, self.acl_file):
            if not f.exists():
                f.touch(mode=0o600)
        policy = (ROOT / "mosquitto.conf").read_text()
        me = pwd.getpwuid(os.geteuid()).pw_name
        # The listener comes first so that the policy's listener options (such as
        # use_username_as_clientid) apply to it instead of opening a default one on 1883.
        instance = (
            f"# generated by `gas-safety stack up`: this instance, then the repo's mosquitto.conf\n"
            f"listener {rt.mqtt_port} 127.0.0.1\n"
            f"{self._tls_listener(rt)}"
            f"user {me}\n"
            f"pid_file {self.mq_pid}\n"
            f"persistence_location {self.mq_dir / 'data'}/\n"
            f"log_dest file {self.mq_log}\n"
            f"password_file {self.passwd_file}\n"
            f"acl_file {self.acl_file}\n"
            f"# ---- policy ({ROOT / 'mosquitto.conf'})\n"
            f"{policy}\n"
        )
        self.mq_conf.write_text(instance)

    def _tls_listener(self, rt: Runtime) -> str:
        if not rt.mqtt_tls_port:
            return ""
        from gateway.ops.tls import ensure_certs

        certs = ensure_certs(self.home / "tls")
        # listener options follow their listener; the plain one above gets the policy's
        return (
            f"use_username_as_clientid true\n"
            f"listener {rt.mqtt_tls_port} 127.0.0.1\n"
            f"cafile {certs['ca.crt']}\ncertfile {certs['server.crt']}\n"
            f"keyfile {certs['server.key']}\ntls_version tlsv1.2\n"
        )

    def _mq_start(self, rt: Runtime) -> None:
        if self.mq_running():
            return
        self.mq_pid.unlink(missing_ok=True)
        if _port_open(rt.mqtt_port):
            raise StackError(
                f"port {rt.mqtt_port} (Mosquitto) is used by another program; "
                f"stop it or delete {self.runtime_file} to choose new ports"
            )
        self.write_mosquitto_conf(rt)
        from gateway.ops import credentials

        credentials.ensure_service_accounts(self.passwd_file, self.acl_file, rt)
        # The broker is on the leak's path twice (reading in, command out): like the gateway's
        # event loop it runs real-time when permitted (single-threaded: one core at most),
        # else at a high nice value, else as it is.
        start = ["mosquitto", "-c", str(self.mq_conf), "-d"]
        r = _run(["chrt", "-r", str(BROKER_RT_PRIORITY), *start], check=False)
        if r.returncode != 0 and not _port_open(rt.mqtt_port):
            r = _run(["nice", "-n", str(BROKER_NICE), *start], check=False)
        if r.returncode != 0:
            raise StackError(f"Mosquitto did not start: {r.stderr.strip()} (see {self.mq_log})")
        deadline = time.monotonic() + 10
        while not _port_open(rt.mqtt_port):
            if time.monotonic() > deadline:
                raise StackError(f"Mosquitto is not listening on {rt.mqtt_port}; see {self.mq_log}")
            time.sleep(0.05)

    def _mq_stop(self) -> None:
        pid = self._mq_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while self._mq_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._mq_pid() is not None:
            os.kill(pid, signal.SIGKILL)

    def reload_broker(self) -> None:
        """Make Mosquitto re-read its password and ACL files (SIGHUP)."""
        pid = self._mq_pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    # ------------------------------------------------------------ public
    def up(self) -> Runtime:
        rt = self.up_database()
        self._mq_start(rt)
        return rt

    def up_database(self) -> Runtime:
        """PostgreSQL + TimescaleDB alone, migrated (the cluster stack brings its brokers)."""
        self.check_installed()
        rt = self._new_runtime()
        self._pg_ensure_initialised(rt)
        self._pg_start(rt)
        self._pg_bootstrap_db(rt)
        from gateway.storage import schema

        schema.migrate(rt.dsn)
        return rt

    def down(self) -> None:
        self._mq_stop()
        self._pg_stop()

    def restart_broker(self) -> None:
        rt = self.runtime()
        assert rt is not None
        self._mq_stop()
        self._mq_start(rt)

    def status(self) -> dict[str, object]:
        rt = self.runtime()
        if rt is None:
            return {"home": str(self.home), "postgres": "not set up", "mosquitto": "not set up"}
        pg_ok = self.pg_running() and _port_open(rt.pg_port)
        mq_ok = self.mq_running() and _port_open(rt.mqtt_port)
        return {
            "home": str(self.home),
            "postgres": {
                "port": rt.pg_port,
                "data": str(self.pg_data),
                "log": str(self.pg_log),
                "healthy": pg_ok and self._pg_healthy(rt),
            },
            "mosquitto": {
                "port": rt.mqtt_port,
                "pid": self._mq_pid(),
                "log": str(self.mq_log),
                "healthy": mq_ok,
            },
        }

    def _pg_healthy(self, rt: Runtime) -> bool:
        import psycopg

        try:
            with psycopg.connect(rt.dsn, connect_timeout=3) as conn:
                row = conn.execute(
                    "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
                ).fetchone()
                return row is not None
        except psycopg.Error:
            return False
