"""The relay's acknowledgement rules, with the log and the broker connection faked: a PUBACK
only after the log's confirm, in arrival order; drops acknowledged in their turn; resends
with the same message id; acks of a session's redelivery wait for the connection."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from gateway.edge.relay import Relay, message_id
from gateway.edge_settings import EdgeSettings
from gateway.protocol.log_subjects import HEADER_EDGE, HEADER_MSG_ID, HEADER_TOPIC
from gateway.protocol.packets import Message


@dataclass
class Ack:
    duplicate: bool = False


class FakeLog:
    """publish_async as nats-py's: a future per message, resolved by the test."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, str], asyncio.Future[Ack]]] = []

    async def publish_async(self, subject: str, payload: bytes, headers: dict[str, str]) -> Any:
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self.sent.append((subject, payload, headers, fut))
        return fut


class FakeClient:
    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.acked: list[int] = []

    def ack(self, ids: list[int]) -> None:
        self.acked.extend(ids)


def relay(**edge: float) -> tuple[Relay, FakeLog, FakeClient]:
    r = Relay(EdgeSettings(name="edge-x", **{"publish_timeout_s": 0.2, **edge}), "dsn", "gas/v1")
    r.map.partitions = {"m1": 7, "m2": 9}
    log = FakeLog()
    r.js = log
    r.generation = 1
    client = FakeClient(1)
    r.client = client  # type: ignore[assignment]
    return r, log, client


def msg(device: str, pid: int, payload: bytes = b'{"seq":1}') -> Message:
    return Message(f"gas/v1/{device}/telemetry", payload, 1, pid, False, False)


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_acks_only_after_the_log_confirms_and_in_arrival_order() -> None:
    async def go() -> None:
        r, log, client = relay()
        r._on_batch([msg("m1", 1)])
        r._on_batch([msg("m2", 2)])
        await _turns()
        assert [s for s, *_ in log.sent] == ["gas.in.7", "gas.in.9"]
        log.sent[1][3].set_result(Ack())  # the later one confirmed first
        await _turns()
        assert client.acked == []
        log.sent[0][3].set_result(Ack())
        await _turns()
        assert client.acked == [1, 2]
        headers = log.sent[0][2]
        assert headers[HEADER_TOPIC] == "gas/v1/m1/telemetry"
        assert headers[HEADER_EDGE] == "edge-x"
        assert headers[HEADER_MSG_ID] == message_id("gas/v1/m1/telemetry", b'{"seq":1}')

    asyncio.run(go())


def test_an_unknown_device_is_dropped_and_acknowledged_in_its_turn() -> None:
    async def go() -> None:
        r, log, client = relay()
        r._on_batch([msg("m1", 1)])
        r._on_batch([msg("stranger", 2)])
        await _turns()
        assert client.acked == [], "not before the earlier reading is confirmed"
        log.sent[0][3].set_result(Ack())
        await _turns()
        assert client.acked == [1, 2]
        assert len(log.sent) == 1
        assert r.metrics.value("gas_relay_rejects_total", reason="unknown_device") == 1

    asyncio.run(go())


def test_an_unconfirmed_publish_is_resent_with_the_same_message_id() -> None:
    async def go() -> None:
        r, log, client = relay()
        r._on_batch([msg("m1", 1)])
        await asyncio.sleep(0.5)  # past publish_timeout_s, then the first retry pause
        assert len(log.sent) >= 2
        assert log.sent[0][3].cancelled()
        assert log.sent[1][2][HEADER_MSG_ID] == log.sent[0][2][HEADER_MSG_ID]
        assert client.acked == []
        log.sent[-1][3].set_result(Ack(duplicate=True))
        await _turns()
        assert client.acked == [1]
        assert r.metrics.value("gas_relay_duplicates_total") == 1

    asyncio.run(go())


def test_a_redelivery_during_the_handshake_is_acknowledged_once_connected() -> None:
    async def go() -> None:
        r, log, _ = relay()
        r.generation = 2
        r.client = None  # connecting: CONNACK came, the session's messages too
        r._on_batch([msg("stranger", 5)])
        r._on_batch([msg("m1", 6)])
        await _turns()
        log.sent[0][3].set_result(Ack())
        await _turns()
        client = FakeClient(2)
        r.client = client  # type: ignore[assignment]
        r._ack_ready()
        assert client.acked == [5, 6]

    asyncio.run(go())


def test_a_lost_connections_batches_are_never_acknowledged_on_the_next() -> None:
    async def go() -> None:
        r, log, _ = relay()
        r._on_batch([msg("m1", 1)])
        await _turns()
        r._forget_connection()
        r.generation = 2
        client = FakeClient(2)
        r.client = client  # type: ignore[assignment]
        r._on_batch([msg("m2", 1)])
        await _turns()
        log.sent[0][3].set_result(Ack())
        log.sent[1][3].set_result(Ack())
        await _turns()
        assert client.acked == [1]  # packet id 1 of the new connection, once

    asyncio.run(go())


def test_resends_wait_less_than_the_first_publish() -> None:
    """Through a log election every publish goes unanswered: the first waits
    publish_timeout_s, each resend only resend_timeout_s, so what was held goes out soon
    after the log answers again, not a whole publish_timeout_s later."""
    async def go() -> None:
        r, log, _ = relay(publish_timeout_s=0.6, resend_timeout_s=0.1)
        r._on_batch([msg("m1", 1)])
        await asyncio.sleep(0.65)
        assert len(log.sent) == 1  # the first publish waited its whole 0.6 s
        # then: pause 0.1, resend, 0.1 wait, pause 0.25, resend (1.15 s in all)
        await asyncio.sleep(0.6)
        assert len(log.sent) == 3
        assert len({sent[2][HEADER_MSG_ID] for sent in log.sent}) == 1

    asyncio.run(go())
