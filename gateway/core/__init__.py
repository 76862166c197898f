"""The detection core and the response rules, pure: NumPy (and numba) over per-device state
arrays, dataclasses and plain functions, the clock and id sources passed in. No asyncio, no
MQTT, no SQL, no HTTP: `lint-imports` holds it."""
