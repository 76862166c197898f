"""How a call-chain step reaches a phone: the utility's voice and SMS gateways as HTTP
webhooks, or the log (the demo default).

The webhook contract (docs/architecture.md, "Owner call chain"): the gateway POSTs JSON

    {"call_id": "n17-voice_owner-1", "to": "+15550000042", "body": "...",
     "kind": "leak", "household_id": "h000042", "notification_id": 17, "role": "owner"}

`call_id` is unique per attempt, so the gateway may deduplicate a repeated request. The
voice gateway places the call and answers when it is over, with
`{"status": "answered" | "no_answer" | "failed"}`: `answered` only when the callee took the
call and confirmed (pressed a key). The SMS gateway answers any 2xx once it accepted the
text (`{"status": "sent"}` or an empty body), or `{"status": "failed"}`. A non-2xx answer,
a timeout, an unreachable gateway or an answer that is not this JSON is a failed attempt,
with its reason in one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from gateway.core.call_chain import Outcome
from gateway.settings import ResponseSettings

logger = logging.getLogger(__name__)

_VOICE = {"answered": Outcome.ANSWERED, "no_answer": Outcome.NO_ANSWER, "failed": Outcome.FAILED}
_SMS = {"sent": Outcome.SENT, "failed": Outcome.FAILED}


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    detail: str | None = None  # why it failed, one line


class PhoneChannel(Protocol):
    async def call(self, doc: dict[str, Any]) -> Result: ...

    async def text(self, doc: dict[str, Any]) -> Result: ...

    async def aclose(self) -> None: ...


class LogChannel:
    """The demo channel: the notice goes to the log (never the full phone number). Nobody
    can answer a log line, so a voice step is `sent`, never `answered`."""

    async def _log(self, how: str, doc: dict[str, Any]) -> Result:
        logger.info(
            "notify channel=log %s to=***%s household=%s kind=%s call_id=%s body=%r",
            how,
            str(doc.get("to", ""))[-4:],
            doc.get("household_id"),
            doc.get("kind"),
            doc.get("call_id"),
            str(doc.get("body", ""))[:120],
        )
        return Result(Outcome.SENT)

    async def call(self, doc: dict[str, Any]) -> Result:
        return await self._log("voice", doc)

    async def text(self, doc: dict[str, Any]) -> Result:
        return await self._log("sms", doc)

    async def aclose(self) -> None:
        return None


class WebhookChannel:
    """POSTs each attempt to the voice or SMS gateway (one pooled async client)."""

    def __init__(
        self,
        voice_url: str | None,
        sms_url: str | None,
        voice_timeout_s: float = 60.0,
        sms_timeout_s: float = 10.0,
    ) -> None:
        self.voice_url = voice_url
        self.sms_url = sms_url
        self.voice_timeout_s = voice_timeout_s
        self.sms_timeout_s = sms_timeout_s
        self.client = httpx.AsyncClient()

    async def _post(
        self, url: str | None, doc: dict[str, Any], timeout_s: float, answers: dict[str, Outcome]
    ) -> Result:
        if not url:
            return Result(Outcome.FAILED, "no gateway URL configured for this channel")
        try:
            resp = await self.client.post(url, json=doc, timeout=timeout_s)
        except httpx.TimeoutException:
            return Result(Outcome.FAILED, f"gateway timed out after {timeout_s:g} s")
        except httpx.HTTPError as err:
            return Result(Outcome.FAILED, f"gateway unreachable: {type(err).__name__}: {err}"[:300])
        if not 200 <= resp.status_code < 300:
            return Result(Outcome.FAILED, f"gateway answered HTTP {resp.status_code}")
        if not resp.content.strip() and Outcome.SENT in answers.values():
            return Result(Outcome.SENT)
        try:
            status = resp.json().get("status")
        except (ValueError, AttributeError):
            return Result(Outcome.FAILED, "gateway answer is not a JSON object")
        outcome = answers.get(status) if isinstance(status, str) else None
        if outcome is None:
            return Result(Outcome.FAILED, f"gateway answered an unknown status {status!r}"[:300])
        return Result(outcome, None if outcome is not Outcome.FAILED else "gateway: failed")

    async def call(self, doc: dict[str, Any]) -> Result:
        return await self._post(self.voice_url, doc, self.voice_timeout_s, _VOICE)

    async def text(self, doc: dict[str, Any]) -> Result:
        return await self._post(self.sms_url, doc, self.sms_timeout_s, _SMS)

    async def aclose(self) -> None:
        await self.client.aclose()


def make_channel(r: ResponseSettings) -> PhoneChannel:
    if r.notify_channel == "webhook":
        return WebhookChannel(
            r.notify_voice_url,
            r.notify_sms_url or r.notify_webhook_url,
            r.notify_voice_timeout_s,
            r.notify_sms_timeout_s,
        )
    return LogChannel()
