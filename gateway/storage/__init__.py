"""TimescaleDB: the writer (binary COPY, acknowledge after commit) and its own process, the
local spool for database outages, device_state, the schema and its migrations."""
