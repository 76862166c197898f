"""`gas-safety watch`: a live tail for the control room and for field technicians.

With no device named, the platform's live events (alarms, commands, work orders, notices:
gateway.ops.event_feed). With `--device ID` (or device ids, `--household`, `--fleet`), the
devices' own MQTT traffic: it subscribes read-only (the broker's `monitor` account on the
private stack; any account with read rights in production) to one device, a household's
devices, or the whole fleet, and prints each message as it arrives: readings, events,
status, command and acknowledgement, each decoded by the protocol's own decoder (an
invalid payload shows its reject reason).

aiomqtt serves here where it does not on the gateway's hot path: a tail acknowledges on
receipt, needs no ordering guarantees against commits, and carries tens of messages a
second, not tens of thousands.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt

from gateway import protocol
from gateway.protocol import Channel, Rejected

CHANNELS = ("telemetry", "event", "status", "ack", "cmd")
_STYLES = {"cmd": "bold cyan", "ack": "green", "event": "yellow", "status": "dim"}
_DECODERS: dict[str, type[Any]] = {
    "event": protocol.DeviceEvent,
    "status": protocol.Status,
    "ack": protocol.Ack,
    "cmd": protocol.Command,
}


class WatchError(Exception):
    """The tail cannot start: the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class Line:
    """One message, as shown."""

    at: float
    device_id: str
    channel: str
    fields: dict[str, Any]
    error: str | None = None

    @property
    def style(self) -> str:
        return "bold red" if self.error is not None else _STYLES.get(self.channel, "")

    def text(self) -> str:
        stamp = dt.datetime.fromtimestamp(self.at).strftime("%H:%M:%S.%f")[:-3]
        body = (
            f"invalid: {self.error}"
            if self.error is not None
            else " ".join(f"{k}={v}" for k, v in self.fields.items())
        )
        return f"{stamp} {self.device_id:<20} {self.channel:<9} {body}"

    def json(self) -> str:
        return json.dumps(
            {
                "at": round(self.at, 3),
                "device": self.device_id,
                "channel": self.channel,
                "fields": self.fields,
                "error": self.error,
            }
        )


def topics(prefix: str, devices: Sequence[str], channels: Sequence[str]) -> list[str]:
    """The subscriptions: each device's chosen channels, or the fleet's (`+`)."""
    ids = list(devices) or ["+"]
    return [f"{prefix}/{d}/{c}" for d in ids for c in channels]


def describe(topic_name: str, payload: bytes, prefix: str, now: float) -> Line | None:
    """A message as a line; None for a topic outside the protocol."""
    parts = topic_name.split("/")
    if len(parts) != prefix.count("/") + 3 or "/".join(parts[:-2]) != prefix:
        return None
    device_id, channel = parts[-2], parts[-1]
    doc: Any
    try:
        if channel == Channel.TELEMETRY:
            try:
                doc = protocol.decode(protocol.DetectorReading, payload, device_id)
            except Rejected:
                doc = protocol.decode(protocol.MeterReading, payload, device_id)
        elif channel in _DECODERS:
            doc = protocol.decode(_DECODERS[channel], payload, device_id)
        else:
            return None
    except Rejected as rej:
        return Line(now, device_id, channel, {}, str(rej))
    fields = {f: getattr(doc, f) for f in doc.__struct_fields__}
    return Line(now, device_id, channel, fields)


async def tail(
    host: str,
    port: int,
    username: str,
    password: str,
    subscriptions: list[str],
    prefix: str,
    as_json: bool,
    count: int | None,
    duration_s: float | None,
) -> int:
    """Print messages until `count` of them, `duration_s`, or Ctrl-C; how many were shown."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False, soft_wrap=True)
    shown = 0
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        async with aiomqtt.Client(
            host,
            port,
            username=username,
            password=password,
            identifier=f"watch-{username}-{time.time_ns() % 10**9}",
            clean_session=True,
        ) as client:
            for t in subscriptions:
                await client.subscribe(t, qos=1)
            print(
                f"watching {len(subscriptions)} topic(s) on {host}:{port} as {username}",
                file=sys.stderr,
                flush=True,
            )
            messages = client.messages
            while count is None or shown < count:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                try:
                    msg = await asyncio.wait_for(anext(messages), left)
                except TimeoutError:
                    break
                line = describe(msg.topic.value, bytes(msg.payload), prefix, time.time())
                if line is None:
                    continue
                if as_json:
                    print(line.json(), flush=True)
                else:
                    console.print(escape(line.text()), style=line.style)
                shown += 1
    except aiomqtt.MqttError as err:
        raise WatchError(f"mqtt {host}:{port} as {username}: {err}") from None
    return shown


def register(subparsers: Any) -> None:
    """Adds `watch` to the `gas-safety` command line."""
    from gateway.ops.event_feed import KINDS
    from gateway.ops.options import add_service_options

    p = subparsers.add_parser(
        "watch",
        help="live tail: the platform's events, or devices' MQTT traffic (read-only)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "devices",
        nargs="*",
        metavar="DEVICE",
        help="device ids whose MQTT traffic to show (as --device)",
    )
    p.add_argument(
        "--device",
        action="append",
        default=[],
        dest="device_opts",
        metavar="ID",
        help="show this device's MQTT traffic (repeatable)",
    )
    p.add_argument(
        "--household",
        help="show the MQTT traffic of every device of this household (from the registry)",
    )
    p.add_argument("--fleet", action="store_true", help="show the MQTT traffic of every device")
    p.add_argument(
        "--events",
        action="append",
        choices=sorted(KINDS),
        dest="kinds",
        help="live events to show, repeatable (default: all; ignored for MQTT traffic)",
    )
    p.add_argument(
        "--channel",
        action="append",
        choices=CHANNELS,
        dest="channels",
        help="MQTT channels to show, repeatable (default: all)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--count", type=_positive_int, help="stop after this many lines (default: never)"
    )
    p.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop after this long (default: never)"
    )
    p.add_argument(
        "--username",
        help="MQTT account with read rights (default: the private stack's `monitor` account)",
    )
    add_service_options(p)
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _household_devices(dsn: str, household: str) -> list[str]:
    import psycopg

    with psycopg.connect(dsn, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT id FROM devices WHERE household_id = %s ORDER BY id", (household,)
        ).fetchall()
    if not rows:
        raise WatchError(f"no household {household!r} (or it has no devices)")
    return [r[0] for r in rows]


def _account(username: str | None) -> tuple[str, str]:
    from gateway.ops import credentials
    from gateway.ops.stack import Stack
    from gateway.settings import stack_home

    if username is not None:
        return username, getpass.getpass(f"MQTT password for {username}: ")
    rt = Stack(stack_home()).runtime()
    if rt is None:
        raise WatchError(
            "the private stack is not running: give --username of an account with read rights"
        )
    return credentials.MONITOR, credentials.service_password(rt, credentials.MONITOR)


def run(args: argparse.Namespace) -> int:
    from gateway import settings as settings_mod

    s = settings_mod.load()
    devices = list(args.devices) + list(args.device_opts)
    if not devices and not args.household and not args.fleet:
        return _events(s.db.dsn, args)
    try:
        if args.household:
            devices += _household_devices(s.db.dsn, args.household)
        for d in devices:
            if not protocol.DEVICE_ID_RE.fullmatch(d):
                raise WatchError(f"not a device id: {d!r} (letters, digits, _ and -; 1-64)")
        username, password = _account(args.username)
        subs = topics(s.mqtt.topic_prefix, devices, args.channels or CHANNELS)
        asyncio.run(
            tail(
                s.mqtt.host,
                s.mqtt.port,
                username,
                password,
                subs,
                s.mqtt.topic_prefix,
                args.json,
                args.count,
                args.duration,
            )
        )
    except WatchError as err:
        print(f"gas-safety watch: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def _events(dsn: str, args: argparse.Namespace) -> int:
    from gateway.ops.event_feed import KINDS, Feed, FeedError

    kinds = set(args.kinds or KINDS)
    try:
        asyncio.run(Feed(dsn, kinds, args.json, args.count, args.duration).run())
    except FeedError as err:
        print(f"gas-safety watch: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
