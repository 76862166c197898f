"""The API's own SMS: one-time sign-in codes for residents, sent straight to the utility's
SMS gateway while the resident waits.

It speaks the gateway's webhook contract (docs/architecture.md, "Owner call chain"; the
notifier's side is gateway/service/phone_channels.py) and reads the same settings:
`response.notify_channel`, `response.notify_sms_url` (or `notify_webhook_url`) and
`response.notify_sms_timeout_s`. It POSTs

    {"call_id": "otp-17", "to": "+15550000042", "body": "...", "kind": "resident_code",
     "household_id": "h000042", "role": "owner"}

and the text counts as sent on a 2xx answer with `{"status": "sent"}` or an empty body.
With `notify_channel = "log"` (the demo) the text goes to the log, code included, outside
production only: a production API without an SMS gateway refuses to issue codes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sent:
    """Whether the gateway took the text, and why not (one line) when it did not."""

    ok: bool
    detail: str | None = None


class SmsSender:
    def __init__(self, url: str | None, timeout_s: float, log_only: bool) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.log_only = log_only

    @classmethod
    def from_settings(cls, settings: Settings) -> SmsSender:
        r = settings.response
        if r.notify_channel == "webhook":
            return cls(r.notify_sms_url or r.notify_webhook_url, r.notify_sms_timeout_s, False)
        return cls(None, r.notify_sms_timeout_s, settings.environment != "production")

    async def send(self, doc: dict[str, Any]) -> Sent:
        if self.url is None:
            if not self.log_only:
                return Sent(False, "no SMS gateway configured (response.notify_sms_url)")
            logger.warning(
                "sms channel=log (not for production) to=***%s household=%s body=%r",
                str(doc.get("to", ""))[-4:],
                doc.get("household_id"),
                doc.get("body"),
            )
            return Sent(True)
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                resp = await client.post(self.url, json=doc)
        except httpx.TimeoutException:
            return Sent(False, f"SMS gateway timed out after {self.timeout_s:g} s")
        except httpx.HTTPError as err:
            return Sent(False, f"SMS gateway unreachable: {type(err).__name__}"[:300])
        if not 200 <= resp.status_code < 300:
            return Sent(False, f"SMS gateway answered HTTP {resp.status_code}")
        if not resp.content.strip():
            return Sent(True)
        try:
            status = resp.json().get("status")
        except (ValueError, AttributeError):
            return Sent(False, "SMS gateway answer is not a JSON object")
        if status == "sent":
            return Sent(True)
        return Sent(False, f"SMS gateway answered status {status!r}"[:300])
