"""A fake voice and SMS gateway: the utility's phone gateways as the notifier sees them.

An HTTP server (stdlib, one thread per request) speaking the webhook contract of
gateway/service/phone_channels.py: `POST /voice` places a "call" and answers
`{"status": "answered" | "no_answer" | "failed"}`, `POST /sms` "sends" a text and answers
`{"status": "sent"}`. What each number does is configured as a script of outcomes taken in
order, the last one repeating: `["failed", "failed", "answered"]` fails twice then answers.
Besides the JSON statuses, `error` answers HTTP 500, `garbled` a 200 that is not JSON, and
`slow` answers `no_answer` (or `sent`) after `slow_s` (to run past a client's timeout).
Every request is recorded with its message text and outcome, so a test can read what was
said to whom (a one-time code from an SMS, say).

In a test: `with PhoneGateway({"+1555": ["answered"]}) as phones: ... phones.calls()`.
Standalone (a demo): `python -m simulator.phones --port 8099 --default no_answer`; then
`GET /calls` lists the record and `POST /configure {"to": ..., "script": [...],
"channel": "voice"}` changes a number's script (`channel` optional: both).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VOICE_OUTCOMES = ("answered", "no_answer", "failed", "error", "slow", "garbled")
SMS_OUTCOMES = ("sent", "failed", "error", "slow", "garbled")


@dataclass(frozen=True, slots=True)
class Call:
    """One request the gateway received: a call (`voice`) or a text (`sms`)."""

    channel: str
    to: str
    body: str
    call_id: str
    outcome: str
    at: float  # time.time() when it arrived
    doc: dict[str, Any]


class PhoneGateway:
    """The fake gateway; a context manager that serves on 127.0.0.1 in a thread."""

    def __init__(
        self,
        scripts: Mapping[str, Iterable[str]] | None = None,
        default_voice: str = "no_answer",
        default_sms: str = "sent",
        port: int = 0,
        slow_s: float = 5.0,
    ) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[tuple[str, str], list[str]] = {}
        self._taken: dict[tuple[str, str], int] = {}
        self._calls: list[Call] = []
        self.default_voice = default_voice
        self.default_sms = default_sms
        self.slow_s = slow_s
        for to, script in (scripts or {}).items():
            self.configure(to, script)
        self._server = _Server(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ setup
    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configure(self, to: str, script: Iterable[str], channel: str | None = None) -> None:
        """`to`'s outcomes from now on, in order, the last repeating; for one channel
        (`voice` or `sms`) or both (an SMS takes `sent` for `answered`/`no_answer`)."""
        steps = list(script)
        bad = [s for s in steps if s not in VOICE_OUTCOMES + SMS_OUTCOMES]
        if not steps or bad or channel not in (None, "voice", "sms"):
            raise ValueError(f"script for {to}: unknown outcomes {bad}, empty, or bad channel")
        with self._lock:
            for ch in ("voice", "sms") if channel is None else (channel,):
                self._scripts[(to, ch)] = steps
                self._taken.pop((to, ch), None)

    def start(self) -> PhoneGateway:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-phones", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> PhoneGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ record
    def calls(self, channel: str | None = None, to: str | None = None) -> list[Call]:
        with self._lock:
            return [
                c
                for c in self._calls
                if (channel is None or c.channel == channel) and (to is None or c.to == to)
            ]

    def texts_to(self, to: str) -> list[str]:
        """The bodies of the SMS sent to `to`, oldest first."""
        return [c.body for c in self.calls("sms", to)]

    def wait_for(self, check: Callable[[list[Call]], bool], timeout_s: float = 30.0) -> list[Call]:
        """The record once `check(record)` holds; AssertionError with the record if not."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.calls()
            if check(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"fake phones: condition not met; record: {got}")
            time.sleep(0.05)

    # ------------------------------------------------------------------ serve
    def _outcome(self, channel: str, to: str) -> str:
        with self._lock:
            script = self._scripts.get((to, channel))
            if script is None:
                return self.default_voice if channel == "voice" else self.default_sms
            i = self._taken.get((to, channel), 0)
            self._taken[(to, channel)] = i + 1
            got = script[min(i, len(script) - 1)]
        if channel == "sms" and got in ("answered", "no_answer"):
            return "sent"
        return got

    def handle(self, channel: str, doc: dict[str, Any]) -> tuple[int, Any]:
        to, body, call_id = doc.get("to"), doc.get("body"), doc.get("call_id")
        if not all(isinstance(v, str) and v for v in (to, body, call_id)):
            return 400, {"error": "to, body and call_id are required strings"}
        assert isinstance(to, str) and isinstance(body, str) and isinstance(call_id, str)
        outcome = self._outcome(channel, to)
        with self._lock:
            self._calls.append(Call(channel, to, body, call_id, outcome, time.time(), doc))
        if outcome == "slow":
            time.sleep(self.slow_s)
            return 200, {"status": "no_answer" if channel == "voice" else "sent"}
        if outcome == "error":
            return 500, {"error": "configured to fail"}
        if outcome == "garbled":
            return 200, ["not", "the", "contract"]
        return 200, {"status": outcome}


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A caller that hung up mid-call (a gateway killed in a test) is not an error."""
        return None


def _handler(gw: PhoneGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet in tests
            return None

        def _reply(self, code: int, doc: Any) -> None:
            data = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _json(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            try:
                return json.loads(self.rfile.read(n) or b"null")
            except ValueError:
                return None

        def do_GET(self) -> None:
            if self.path == "/calls":
                self._reply(200, [asdict(c) for c in gw.calls()])
            else:
                self._reply(404, {"error": "GET /calls only"})

        def do_POST(self) -> None:
            doc = self._json()
            if not isinstance(doc, dict):
                self._reply(400, {"error": "a JSON object is required"})
            elif self.path in ("/voice", "/sms"):
                self._reply(*gw.handle(self.path[1:], doc))
            elif self.path == "/configure":
                try:
                    gw.configure(str(doc.get("to")), doc.get("script") or [], doc.get("channel"))
                except (ValueError, TypeError) as err:
                    self._reply(400, {"error": str(err)})
                else:
                    self._reply(200, {"ok": True})
            else:
                self._reply(404, {"error": "POST /voice, /sms or /configure"})

    return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="a fake voice and SMS gateway for the notifier")
    ap.add_argument("--port", type=int, default=8099)
    ap.add_argument("--default", choices=VOICE_OUTCOMES, default="no_answer")
    ap.add_argument(
        "--script",
        action="append",
        default=[],
        metavar="NUMBER=OUTCOME,...",
        help="a number's outcomes in order, e.g. +15550000042=failed,answered",
    )
    args = ap.parse_args(argv)
    scripts = {}
    for item in args.script:
        to, _, outcomes = item.partition("=")
        scripts[to] = outcomes.split(",")
    gw = PhoneGateway(scripts, default_voice=args.default, port=args.port)
    print(f"fake phones on {gw.url}: POST /voice, /sms; GET /calls", flush=True)
    try:
        gw._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        gw._server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
