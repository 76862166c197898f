"""`gas-safety simulate demo`: the whole platform on one machine, with leaks, live.

Starts the private stack, provisions a city, starts the gateway and the API as child
processes (each is optional: if one is not installed or dies at start, the demo says so and
goes on without it), runs a scenario and shows what happens, reading valve commands, work
orders and notifications from the database. The gateway's notifier calls a fake voice and
SMS gateway (simulator/phones.py) run by the demo, where most owners answer and some do not
(their notice's chain walks on to the text and the emergency contact). Ctrl-C ends the
scenario early, still scores it, and stops the children cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console()


class Child:
    """A platform process started by the demo, with its log in the stack's folder."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_s: float = 2.5) -> bool:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.time() + wait_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace").splitlines()[-5:]
                console.print(
                    f"[red]{self.name} exited at start (code {self.proc.returncode})"
                    f"; last lines of {self.log}:[/red]\n" + "\n".join(tail)
                )
                return False
            time.sleep(0.1)
        console.print(f"[green]{self.name}[/green] running (pid {self.proc.pid}, log {self.log})")
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _command(sub: str) -> list[str]:
    exe = Path(sys.executable).parent / "gas-safety"
    if exe.exists():
        return [str(exe), sub]
    return [
        sys.executable,
        "-c",
        f"import sys; from gateway.cli import main; sys.exit(main(['{sub}']))",
    ]


DEMO_USERS = (("demo.operator", "operator"), ("demo.engineer", "engineer"), ("demo.admin", "admin"))
"""Who can sign in to the demo's console; their passwords are made once and kept in the
stack's folder (`demo-sign-in.json`, mode 0600), so every demo run prints the same."""


def demo_sign_in(home: Path, dsn: str) -> dict[str, str]:
    """The demo's console users (username -> password), created or reset as needed through
    `gas-safety user` (the API's own rules: password policy, audit)."""
    import json
    import secrets

    import psycopg

    kept = home / "demo-sign-in.json"
    passwords: dict[str, str] = json.loads(kept.read_text()) if kept.is_file() else {}
    with psycopg.connect(dsn) as conn:
        existing = {
            r[0]
            for r in conn.execute(
                "SELECT username FROM users WHERE username = ANY(%s)",
                ([u for u, _ in DEMO_USERS],),
            )
        }
    for user, role in DEMO_USERS:
        if user in existing and user in passwords:
            continue
        password = passwords.get(user) or "demo-" + secrets.token_urlsafe(12)
        action = (
            ["reset-password", user, "--actor", "demo"]
            if user in existing
            else ["create", user, "--role", role]
        )
        r = subprocess.run(
            [*_command("user"), *action],
            env={**os.environ, "GAS_SAFETY_NEW_PASSWORD": password},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if r.returncode != 0:
            console.print(f"[yellow]demo user {user} not ready: {r.stderr.strip()[-300:]}[/yellow]")
            continue
        passwords[user] = password
    kept.write_text(json.dumps(passwords, indent=2))
    kept.chmod(0o600)
    return passwords


def platform_poll(dsn: str, fleet: Any) -> Any:
    """A function returning the latest valve commands, work orders and notices as lines."""
    import psycopg

    def poll(since_wall: float) -> dict[str, list[str]]:
        since = dt.datetime.fromtimestamp(since_wall - 1, dt.UTC)
        out: dict[str, list[str]] = {}
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            out["valve_commands"] = [
                f"{m} {a.removeprefix('valve_')} {s}"
                + (f" +{1000 * lat:.0f} ms" if lat is not None else "")
                for m, a, s, lat in conn.execute(
                    "SELECT meter_id, action, state,"
                    " extract(epoch FROM acked_at - issued_at)::float8"
                    " FROM valve_commands WHERE issued_at >= %s AND household_id = ANY(%s)"
                    " ORDER BY issued_at DESC LIMIT 8",
                    (since, fleet.household_ids),
                )
            ]
            out["work_orders"] = [
                f"{h} {c} [{p}] {s}"
                for h, c, p, s in conn.execute(
                    "SELECT household_id, cause, priority, status FROM work_orders"
                    " WHERE opened_at >= %s AND household_id = ANY(%s)"
                    " ORDER BY opened_at DESC LIMIT 8",
                    (since, fleet.household_ids),
                )
            ]
            out["notifications"] = [
                f"{h} {k} via {c}: {s}"
                for h, k, c, s in conn.execute(
                    "SELECT household_id, kind, channel, state FROM notifications"
                    " WHERE created_at >= %s AND household_id = ANY(%s)"
                    " ORDER BY created_at DESC LIMIT 8",
                    (since, fleet.household_ids),
                )
            ]
        return out

    return poll


NO_ANSWER_EVERY = 4
"""One owner in this many does not answer a call (by household order): the chain walks on."""


def start_phones(dsn: str, fleet: Any) -> Any:
    """The fake phone gateway with a scripted mix of owners, and the gateway's notifier
    pointed at it (environment of the children started after this)."""
    import psycopg

    from simulator.phones import PhoneGateway

    phones = PhoneGateway(default_voice="answered", default_sms="sent")
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        owners = conn.execute(
            "SELECT id, owner_phone FROM households WHERE id = ANY(%s) ORDER BY id",
            (fleet.household_ids,),
        ).fetchall()
    silent = [phone for k, (_, phone) in enumerate(owners) if k % NO_ANSWER_EVERY == 1 and phone]
    for phone in silent:
        phones.configure(phone, ["no_answer"], channel="voice")
    phones.start()
    os.environ.update(
        {
            "GAS_SAFETY_RESPONSE__NOTIFY_CHANNEL": "webhook",
            "GAS_SAFETY_RESPONSE__NOTIFY_VOICE_URL": f"{phones.url}/voice",
            "GAS_SAFETY_RESPONSE__NOTIFY_SMS_URL": f"{phones.url}/sms",
        }
    )
    console.print(
        f"[green]phones[/green] fake voice/SMS gateway on {phones.url}: "
        f"{len(owners) - len(silent)} owners answer, {len(silent)} do not"
    )
    return phones


def main(args: argparse.Namespace) -> int:
    from gateway import settings
    from gateway.ops.stack import Stack
    from simulator import cli

    console.print("[bold]gas-safety demo[/bold]: starting the private stack ...")
    stack = Stack()
    rt = stack.up()
    os.environ.setdefault("GAS_SAFETY_HOME", str(stack.home))
    s = settings.load()
    fleet = cli.ensure_fleet(s.db.dsn, args.households, args.seed, args.prefix)
    console.print(
        f"fleet: {fleet.households} households, {fleet.devices} devices "
        f"(mosquitto 127.0.0.1:{rt.mqtt_port}, postgres 127.0.0.1:{rt.pg_port})"
    )
    logs = stack.home / "logs"
    phones = start_phones(s.db.dsn, fleet)
    children: list[Child] = []
    gw = Child("gateway", _command("gateway"), logs / "gateway.log")
    if gw.start():
        children.append(gw)
    else:
        console.print("[yellow]going on without the gateway: leaks will not be cut[/yellow]")
    if not args.no_api:
        if importlib.util.find_spec("dashboard_api.main") is None:
            console.print(
                "[yellow]the API is not installed yet (dashboard_api/main.py is "
                "missing): no dashboard[/yellow]"
            )
        else:
            api = Child("api", _command("api"), logs / "api.log")
            if api.start():
                children.append(api)
                console.print(
                    f"[bold]console[/bold] http://{s.api.host}:{s.api.port}/  (API docs on /docs)"
                )
                for user, password in demo_sign_in(stack.home, s.db.dsn).items():
                    console.print(f"  sign in as [bold]{user}[/bold]  password {password}")
    try:
        scores = asyncio.run(
            cli._with_sigint(
                lambda stop: cli.scenario(
                    args,
                    fleet,
                    rt,
                    s.db.dsn,
                    platform_poll=platform_poll(s.db.dsn, fleet),
                    stop=stop,
                )
            )
        )
    finally:
        for child in reversed(children):
            child.stop()
            console.print(f"{child.name} stopped")
        phones.stop()
    cli.print_scores(scores)
    if args.truth_out:
        console.print(f"ground truth written to {args.truth_out}")
    return cli.verdict(scores)
