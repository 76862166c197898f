"""The platform's response: valve command acknowledgements and resends, repair deadlines,
and the owner call chain (`[response]`). Kept apart from gateway.settings, which names the
section; strict like every section: an unknown key refuses to start.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.core.call_chain import ChainPolicy

_STRICT = ConfigDict(extra="forbid")


class ResponseSettings(BaseModel):
    model_config = _STRICT

    ack_timeout_s: float = 5.0
    max_resends: int = 3
    backoff_factor: float = 2.0
    emergency_arrival_s: float = 30 * 60
    routine_repair_s: float = 4 * 3600
    notify_channel: Literal["log", "webhook"] = "log"
    notify_webhook_url: str | None = None
    notify_max_attempts: int = Field(default=5, ge=1)  # attempts per call-chain step
    # The owner call chain (gateway/core/call_chain.py): steps per notice kind, the rest
    # take `notify_chain_default`. Steps: voice_owner, sms_owner, voice_emergency,
    # sms_emergency, control_room (last only). With notify_channel=webhook, voice steps
    # POST to notify_voice_url and SMS steps to notify_sms_url (or notify_webhook_url).
    notify_chains: dict[str, list[str]] = Field(
        default_factory=lambda: {
            kind: ["voice_owner", "sms_owner", "voice_emergency", "control_room"]
            for kind in ("leak", "overflow")
        }
    )
    notify_chain_default: list[str] = Field(default_factory=lambda: ["sms_owner"])
    notify_confirm_s: float = Field(default=600.0, gt=0)  # before the control room is flagged
    notify_backoff_s: float = Field(default=2.0, gt=0)  # first retry of a failed attempt
    notify_backoff_max_s: float = Field(default=300.0, gt=0)
    notify_voice_url: str | None = None
    notify_sms_url: str | None = None
    notify_voice_timeout_s: float = Field(default=60.0, gt=0)  # a call rings, then answers
    notify_sms_timeout_s: float = Field(default=10.0, gt=0)
    notify_poll_s: float = Field(default=0.5, gt=0)
    # a detector's `local_alarm` cut the gas itself: the household's meter must confirm the
    # valve closed within this many seconds, or the platform sends its own close
    local_cut_confirm_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _chains(self) -> ResponseSettings:
        """Every chain must parse (known steps, control_room last), checked at start."""
        for kind, names in {**self.notify_chains, "*": self.notify_chain_default}.items():
            try:
                ChainPolicy.of(names)
            except ValueError as err:
                raise ValueError(f"notify_chains.{kind}: {err}") from None
        if self.notify_channel == "webhook":
            steps = {
                n for c in (*self.notify_chains.values(), self.notify_chain_default) for n in c
            }
            if any(n.startswith("voice_") for n in steps) and not self.notify_voice_url:
                raise ValueError("notify_channel=webhook with voice steps needs notify_voice_url")
            if any(n.startswith("sms_") for n in steps) and not (
                self.notify_sms_url or self.notify_webhook_url
            ):
                raise ValueError("notify_channel=webhook with SMS steps needs notify_sms_url")
        return self
