"""MQTT account names and the password each derives from the fleet key.

Pure and dependency-free, so that the settings, the simulator and the operations tools can
all name the same accounts and recreate their passwords without importing the broker's
file handling (gateway.ops.credentials) or the private stack it needs.

Passwords are HMAC-SHA256 of the account name under the fleet key: the simulator and the
factory recreate a device's password without a plaintext list on disk, and rotating the fleet
key rotates every password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

GATEWAY = "gateway"
# The gateway's second connection, for valve commands only: on the ingest connection a
# command would queue behind thousands of PUBACKs the broker reads one packet at a time.
COMMANDS = "gateway-cmd"
MONITOR = "monitor"  # read-only observer of the whole tree (tests, tools)
# operations tools (field tools, `gas-safety watch`): read the whole tree, send nothing;
# valve commands go out only through the gateway, authorised and audited by the API
OPS = "ops"
BRIDGE_PREFIX = "fleet-bridge-"  # trusted network servers publishing for many devices
BRIDGES = 8
# edge relays (gas-safety relay): read every device's uplink, write valve commands; one
# account per relay instance on a broker (a client id is its username, so two relays on one
# broker need two accounts)
RELAY_PREFIX = "edge-relay-"
RELAYS = 4
SERVICE_PREFIX = "service:"  # service passwords derive from this plus the account name


def derive_password(fleet_key: str, account: str) -> str:
    """The password of `account` (a device id, or SERVICE_PREFIX + a service account)."""
    digest = hmac.new(bytes.fromhex(fleet_key), account.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def service_password_from_key(fleet_key: str, account: str) -> str:
    """A service account's derived password (the gateway's own is random, in runtime.json)."""
    return derive_password(fleet_key, SERVICE_PREFIX + account)
