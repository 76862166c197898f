"""Settings of a partition worker (`gas-safety worker`): the `[cluster]` section.

Kept apart from gateway.settings, which only names the section; strict like every section:
an unknown key refuses to start.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ClusterSettings(BaseModel):
    """A partition worker (`gas-safety worker`, docs/cluster.md): the NATS JetStream cluster
    it consumes `gas.in.<partition>` from, and how it takes its share of the partitions."""

    model_config = ConfigDict(extra="forbid")

    # the log's nodes, comma-separated; the client moves to another when one dies
    nats_servers: str = "nats://127.0.0.1:4222"
    # this worker's name in the database's lease table view (application_name) and logs;
    # empty: "worker-<host>-<pid>"
    worker_name: str = Field(default="", max_length=48, pattern=r"^[A-Za-z0-9_.-]*$")
    # how often the leases are checked and free partitions looked for (takeover is within
    # about this plus a partition's rebuild)
    lease_poll_s: float = Field(default=0.5, ge=0.1, le=2.0)
    # the most partitions one worker owns; 0: an even share, ceil(partitions / workers alive)
    max_partitions: int = Field(default=0, ge=0, le=4096)
    # messages one standing pull request asks of a partition's consumer (renewed at half)
    fetch_batch: int = Field(default=512, ge=1, le=10_000)
    # how long messages that arrived collect before one judgement of every owned
    # partition's share (less CPU per reading), for up to this much more latency; 0: judged
    # as soon as the event loop is free
    fetch_linger_s: float = Field(default=0.01, ge=0.0, le=0.5)
    # how long readings of the owned partitions collect before they go to the writer as one
    # transaction (acknowledged after it); alarms, orders, notices and commands go at once,
    # and the cut is never waiting on it
    commit_every_s: float = Field(default=0.25, gt=0.0, le=1.0)
    # JetStream redelivers a message not acknowledged this long after delivery
    ack_wait_s: float = Field(default=30.0, ge=2.0, le=600.0)

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.nats_servers.split(",") if u.strip()]

    @field_validator("nats_servers")
    @classmethod
    def _urls(cls, v: str) -> str:
        urls = [u.strip() for u in v.split(",") if u.strip()]
        if not urls:
            raise ValueError("names no server")
        for u in urls:
            if not u.startswith(("nats://", "tls://")):
                raise ValueError(f"{u!r} is not a nats:// or tls:// URL")
        return v
