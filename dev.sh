#!/usr/bin/env bash
# The two README commands. Each installs what it needs first (idempotent, seconds when done).
#   ./dev.sh demo   the stack, the gateway, the API and a simulated fleet with leaks, live
#   ./dev.sh test   the test suite against private Mosquitto and TimescaleDB instances
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
venv=.venv/bin
case "${1:-}" in
  demo)
    shift
    exec "$venv/gas-safety" simulate demo "$@"
    ;;
  test)
    shift
    exec "$venv/python" -m pytest "$@"
    ;;
  *)
    echo "usage: ./dev.sh demo|test [args]" >&2
    exit 2
    ;;
esac
