"""The voice and SMS webhook contract, against the fake phone gateway over real HTTP: each
answer maps to one outcome, and anything off the contract is a failed attempt with its
reason in one line."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from gateway.core.call_chain import Outcome
from gateway.ops.stack import free_port
from gateway.service.phone_channels import LogChannel, WebhookChannel
from simulator.phones import PhoneGateway


@pytest.fixture
def phones() -> Iterator[PhoneGateway]:
    with PhoneGateway(slow_s=4.0) as gw:
        yield gw


def doc(to: str, call_id: str = "n1-voice_owner-1") -> dict[str, object]:
    return {
        "call_id": call_id,
        "to": to,
        "body": "Gas leak.",
        "kind": "leak",
        "household_id": "h1",
        "notification_id": 1,
        "role": "owner",
    }


@pytest.mark.parametrize(
    ("script", "outcome", "detail"),
    [
        ("answered", Outcome.ANSWERED, None),
        ("no_answer", Outcome.NO_ANSWER, None),
        ("failed", Outcome.FAILED, "gateway: failed"),
        ("error", Outcome.FAILED, "gateway answered HTTP 500"),
        ("garbled", Outcome.FAILED, "gateway answer is not a JSON object"),
        ("slow", Outcome.FAILED, "gateway timed out after 2 s"),
    ],
)
def test_voice_answers(
    phones: PhoneGateway, script: str, outcome: Outcome, detail: str | None
) -> None:
    phones.configure("+1", [script])
    # 2 s: an answer on a loaded 2-core machine stays well inside it; `slow` takes 4 s
    ch = WebhookChannel(f"{phones.url}/voice", f"{phones.url}/sms", voice_timeout_s=2.0)

    async def go():
        try:
            return await ch.call(doc("+1"))
        finally:
            await ch.aclose()

    got = asyncio.run(go())
    assert (got.outcome, got.detail) == (outcome, detail)
    (call,) = phones.calls("voice", "+1")
    assert call.call_id == "n1-voice_owner-1" and call.body == "Gas leak."


def test_sms_is_sent_never_answered_and_an_unreachable_gateway_fails(phones: PhoneGateway) -> None:
    phones.configure("+2", ["answered", "failed"])  # a text cannot be answered
    ch = WebhookChannel(None, f"{phones.url}/sms")
    dead = WebhookChannel(f"http://127.0.0.1:{free_port()}/voice", None, voice_timeout_s=1.0)

    async def go():
        try:
            return (
                await ch.text(doc("+2")),
                await ch.text(doc("+2")),
                await dead.call(doc("+2")),
                await dead.text(doc("+2")),
            )
        finally:
            await ch.aclose()
            await dead.aclose()

    sent, failed, unreachable, unset = asyncio.run(go())
    assert sent.outcome is Outcome.SENT and failed.outcome is Outcome.FAILED
    assert unreachable.outcome is Outcome.FAILED
    assert unreachable.detail is not None and unreachable.detail.startswith("gateway unreachable")
    assert (unset.outcome, unset.detail) == (
        Outcome.FAILED,
        "no gateway URL configured for this channel",
    )
    assert phones.texts_to("+2") == ["Gas leak.", "Gas leak."]


def test_the_log_channel_sends_and_never_answers() -> None:
    got = asyncio.run(LogChannel().call(doc("+15550000042")))
    assert got.outcome is Outcome.SENT
