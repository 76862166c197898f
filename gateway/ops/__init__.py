"""Running the platform: the private stack (Mosquitto, PostgreSQL/TimescaleDB), device
credentials and ACLs, TLS, provisioning, retention and the configuration report."""
