"""The asyncio service around the pipeline: the MQTT connections, the writer's process,
LISTEN/NOTIFY, the notifier, thread priorities and logs."""
