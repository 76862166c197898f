"""The MQTT edge of a cluster: relays from each Mosquitto broker into the replicated log."""
