"""The straightforward gateway a newcomer would write: the baseline the real one is measured against.

One paho callback per message, `json.loads`, the leak rules in Python per message, one
INSERT per reading (autocommit) into the same tables, and a `valve_close` published on
`gas/v1/{meter}/cmd` when a leak is seen; acks update valve_commands. Nothing clever on
purpose: it is driven by the same load as the real gateway so the README can show the ratio.

    python bench/baseline_gateway.py            # uses the private stack (GAS_SAFETY_HOME)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
import psycopg

from gateway import settings

logger = logging.getLogger("baseline")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    s = settings.load()
    conn = psycopg.connect(s.db.dsn, autocommit=True)
    kinds: dict[str, tuple[str, str]] = {}
    for dev, kind, hid in conn.execute("SELECT id, kind, household_id FROM devices"):
        kinds[dev] = (kind, hid)
    meters = {hid: dev for dev, (kind, hid) in kinds.items() if kind == "meter"}
    qmax = dict(conn.execute("SELECT id, qmax_m3h FROM households").fetchall())
    last_high: dict[str, bool] = {}
    cut: set[str] = set()
    prefix = s.mqtt.topic_prefix
    stats = {"readings": 0, "rejects": 0, "cuts": 0}

    def reject(topic: str, device: str | None, reason: str, payload: bytes) -> None:
        stats["rejects"] += 1
        conn.execute("INSERT INTO rejects (time, device_id, topic, reason, detail, payload_head)"
                     " VALUES (now(), %s, %s, %s, %s, %s)",
                     (device, topic, reason, reason, payload[:256]))

    def close_valve(client: mqtt.Client, hid: str, device: str, why: str) -> None:
        if hid in cut:
            return
        cut.add(hid)
        meter = meters[hid]
        cmd_id = uuid.uuid4().hex[:16]
        now = time.time()
        conn.execute("INSERT INTO alarms (device_id, household_id, kind, severity, raised_at)"
                     " VALUES (%s, %s, 'leak', 'critical', now()) ON CONFLICT DO NOTHING",
                     (device, hid))
        conn.execute("INSERT INTO valve_commands (cmd_id, meter_id, household_id, action, reason,"
                     " state, attempts, requested_by, issued_at, sent_at)"
                     " VALUES (%s, %s, %s, 'valve_close', %s, 'sent', 1, 'baseline', now(), now())",
                     (cmd_id, meter, hid, why))
        client.publish(f"{prefix}/{meter}/cmd", json.dumps(
            {"cmd_id": cmd_id, "action": "valve_close", "reason": why, "ts": now}), qos=1)
        stats["cuts"] += 1

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        device, channel = parts[-2], parts[-1]
        if device not in kinds:
            return reject(msg.topic, device, "unknown_device", msg.payload)
        try:
            r = json.loads(msg.payload)
        except (ValueError, UnicodeDecodeError):
            return reject(msg.topic, device, "not_json", msg.payload)
        if not isinstance(r, dict):
            return reject(msg.topic, device, "not_object", msg.payload)
        kind, hid = kinds[device]
        if channel == "ack":
            conn.execute("UPDATE valve_commands SET state = 'acked', acked_at = now(),"
                         " ack_ok = %s, ack_valve = %s, ack_error = %s WHERE cmd_id = %s",
                         (r.get("ok"), r.get("valve"), r.get("error"), r.get("cmd_id")))
            return
        try:
            when = dt.datetime.fromtimestamp(float(r["ts"]), dt.UTC)
            if kind == "detector":
                ch4 = float(r["ch4"])
                conn.execute("INSERT INTO detector_readings (time, device_id, seq, ch4_lel, fault,"
                             " received_at) VALUES (%s, %s, %s, %s, %s, now())"
                             " ON CONFLICT DO NOTHING",
                             (when, device, int(r["seq"]), ch4, int(r.get("fault", 0))))
                high = ch4 >= 20
                if ch4 >= 40 or (high and last_high.get(device)):
                    close_valve(client, hid, device, f"ch4 {ch4} %LEL")
                last_high[device] = high
            else:
                flow = float(r["flow"])
                valve = {"open": 0, "closed": 1, "fault": 2}[r["valve"]]
                conn.execute("INSERT INTO meter_readings (time, device_id, seq, vol_m3, flow_m3h,"
                             " valve, batt_v, rssi, received_at)"
                             " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())"
                             " ON CONFLICT DO NOTHING",
                             (when, device, int(r["seq"]), float(r["vol"]), flow, valve,
                              float(r.get("batt", 3.6)), int(r.get("rssi", -80))))
                if flow > 1.5 * qmax[hid]:
                    close_valve(client, hid, device, f"flow {flow} m3/h")
            stats["readings"] += 1
        except (KeyError, TypeError, ValueError, psycopg.DataError) as err:
            reject(msg.topic, device, type(err).__name__, msg.payload)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=s.mqtt.username,
                         clean_session=True)
    client.username_pw_set(s.mqtt.username, s.mqtt.password.get_secret_value())
    client.max_inflight_messages_set(1000)
    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(
        [(f"{prefix}/+/telemetry", 1), (f"{prefix}/+/ack", 1)])
    client.connect(s.mqtt.host, s.mqtt.port, keepalive=30)
    signal.signal(signal.SIGTERM, lambda *a: client.disconnect())
    logger.info("baseline gateway up: %d devices", len(kinds))
    try:
        client.loop_forever()
    except KeyboardInterrupt:
        pass
    logger.info("stopped: %s", stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
