"""Settings of the edge relay (`gas-safety relay`): the `[edge]` section of the settings.

Kept apart from gateway.settings, which only names the section; strict like every section:
an unknown key refuses to start.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class EdgeSettings(BaseModel):
    """One relay: its broker (a provisioned `edge-relay-<n>` account) and the log's nodes."""

    model_config = ConfigDict(extra="forbid")

    # the edge node's name, sent in the Gas-Edge header of every relayed message
    name: str = Field(default="edge", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    # the account is also the MQTT client id (use_username_as_clientid): one per relay on a
    # broker; its persistent session keeps what the relay has not acknowledged
    username: str = "edge-relay-0"
    password: SecretStr = SecretStr("")
    # device messages in flight (received, not yet confirmed by the log); the broker holds
    # the rest. Mosquitto must allow at least this many (max_inflight_messages).
    max_unacked: int = Field(default=10_000, ge=100, le=60_000)
    # JetStream: any of the cluster's nodes; the client fails over between them
    nats_urls: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1)
    # a publish not confirmed within this is sent again (same Nats-Msg-Id). A confirm takes
    # milliseconds, but at saturation thousands queue ahead of one; a short first wait
    # would resend what is merely queued and add to the load
    publish_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # how long each resend waits (the log is known to be in trouble by then): short, so that
    # readings held through a log election (a leak among them) go out within about a second
    # of the log answering again
    resend_timeout_s: float = Field(default=1.0, gt=0, le=60)
    # the device -> partition map is reloaded on NOTIFY gas_registry and at least this often
    registry_refresh_s: float = Field(default=300.0, gt=0)
    # Prometheus /metrics of the relay; 0: none
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)

    @field_validator("nats_urls")
    @classmethod
    def _nats_scheme(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("nats://", "tls://")):
                raise ValueError(f"{url!r} is not a nats:// or tls:// URL")
        return urls
