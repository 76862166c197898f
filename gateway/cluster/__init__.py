"""Partition workers: the gateway's pipeline judging the building partitions a worker owns,
fed from the replicated log (NATS JetStream) instead of one MQTT connection. See
docs/cluster.md."""
