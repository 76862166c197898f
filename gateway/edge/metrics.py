"""Prometheus metrics of one edge relay (one registry per relay, so tests can read them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class RelayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.received = Counter(
            "gas_relay_received", "Device messages received from the broker", registry=r
        )
        self.relayed = Counter("gas_relay_relayed", "Messages the log confirmed as new", registry=r)
        self.duplicates = Counter(
            "gas_relay_duplicates",
            "Messages the log confirmed as already stored (same Nats-Msg-Id)",
            registry=r,
        )
        self.resent = Counter(
            "gas_relay_resent", "Publishes sent again after no confirmation", registry=r
        )
        self.acked = Counter("gas_relay_acked", "Messages acknowledged to the broker", registry=r)
        self.rejects = Counter(
            "gas_relay_rejects", "Messages dropped, by reason", ["reason"], registry=r
        )
        self.commands = Counter(
            "gas_relay_commands",
            "Valve commands from the log, by outcome",
            ["outcome"],
            registry=r,
        )
        self.unacked = Gauge(
            "gas_relay_unacked", "Messages received, not yet acknowledged", registry=r
        )
        self.devices = Gauge(
            "gas_relay_registry_devices", "Devices in the partition map", registry=r
        )
        self.broker_up = Gauge("gas_relay_broker_up", "Connected to its broker", registry=r)
        self.log_up = Gauge("gas_relay_log_up", "Connected to the log", registry=r)
        self.log_up.set(1)

    def serve(self, port: int, host: str) -> None:
        """/metrics on host:port (0: nothing); OSError when it cannot bind."""
        if port:
            start_http_server(port, host, registry=self.registry)

    def value(self, name: str, **labels: str) -> float:
        v = self.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v

    def summary(self) -> str:
        """The totals, one line, for the log at shutdown."""
        rejected = sum(
            s.value
            for m in self.registry.collect()
            if m.name == "gas_relay_rejects"
            for s in m.samples
            if s.name.endswith("_total")
        )
        return (
            f"received={self.value('gas_relay_received_total'):.0f}"
            f" relayed={self.value('gas_relay_relayed_total'):.0f}"
            f" duplicates={self.value('gas_relay_duplicates_total'):.0f}"
            f" resent={self.value('gas_relay_resent_total'):.0f}"
            f" rejected={rejected:.0f}"
        )
