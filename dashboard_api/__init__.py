"""The operator API: FastAPI over the platform's TimescaleDB (see dashboard_api.main)."""
