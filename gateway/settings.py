"""Typed settings for every component, from environment, a TOML file and the private stack.

Precedence, highest first: environment variables (`GAS_SAFETY_<SECTION>__<FIELD>`, e.g.
`GAS_SAFETY_DB__DSN`), the TOML file named by `GAS_SAFETY_CONFIG` (or `gas-safety.toml`
in the working directory), the ports of the private stack when it runs (`.stack/runtime.json`),
then the defaults below. Point `mqtt` and `db` at existing servers to run without the stack.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.credentials import COMMANDS, derive_password
from gateway.detection import Thresholds

ROOT = Path(__file__).resolve().parent.parent


def stack_home() -> Path:
    return Path(os.environ.get("GAS_SAFETY_HOME", ROOT / ".stack"))


class PrioritySettings(BaseModel):
    """CPU scheduling of the gateway's threads (Linux).

    The event loop thread reads, judges and cuts valves: it must get a CPU the moment it has
    work, whatever else the machine runs (the database's bulk writes, the API, other
    services). Measured here with another process keeping one of the two cores busy: as an
    ordinary thread, even at nice -10, it waited up to 24 ms at a time for a CPU; as a
    real-time (SCHED_RR) thread it did not wait at all. It is single-threaded, so it can
    hold at most one core. Real-time and negative nice need root or CAP_SYS_NICE (systemd:
    `AmbientCapabilities=CAP_SYS_NICE`); without them the gateway says so and runs as given.
    Bulk threads (database writer, device_state, notifications) default to real-time at the
    lowest priority: ahead of ordinary processes, so that one preempted while holding
    Python's GIL does not stall the event loop, and behind the event loop.
    """

    loop_rt_priority: int = Field(default=10, ge=0, le=99)  # SCHED_RR; 0: use loop_nice
    loop_nice: int = Field(default=-10, ge=-20, le=19)
    background_rt_priority: int = Field(default=1, ge=0, le=99)  # 0: use background_nice
    background_nice: int = Field(default=0, ge=-20, le=19)


class MqttSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = "gateway"
    password: SecretStr = SecretStr("")
    client_id: str = "gas-safety-gateway"
    # Valve commands go out on a connection of their own (account `gateway-cmd`), so they
    # never queue behind the ingest connection's PUBACKs; empty password: one connection.
    command_username: str = "gateway-cmd"
    command_password: SecretStr = SecretStr("")
    topic_prefix: str = "gas/v1"
    keepalive_s: int = 30
    # Unacknowledged QoS 1 messages we let the broker keep in flight towards us; Mosquitto
    # must allow at least this many (max_inflight_messages in mosquitto.conf).
    max_unacked: int = Field(default=50_000, ge=100, le=60_000)
    judge_slice: int = Field(default=512, ge=1)  # messages evaluated at once, at most


class DbSettings(BaseModel):
    dsn: str = "host=127.0.0.1 port=5432 dbname=gas_safety user=gas_safety"
    batch_rows: int = Field(default=5_000, ge=1)
    batch_max_s: float = Field(default=0.010, gt=0)
    # While the database is away, batches go to a durable local spool (then are acked);
    # past spool_max_mb they wait in memory unacknowledged and the broker holds the rest.
    spool_dir: str | None = None  # default: <stack home>/spool
    spool_max_mb: int = Field(default=2048, ge=1)
    # After this long without a commit, a batch is spooled instead of waited for.
    spool_after_s: float = Field(default=2.0, gt=0)
    retention_days: int = Field(default=365, ge=1)
    # How often each device's latest values reach device_state (the fleet view).
    state_interval_s: float = Field(default=5.0, gt=0)
    # The writer in a process of its own (gateway/writer_process.py): the event loop then
    # shares the GIL with no busy thread. False: a thread of the gateway's process.
    writer_process: bool = True


class DetectionSettings(BaseModel):
    """Rule thresholds (defaults: shared/ARCHITECTURE.md section 3, in gateway.detection).

    `models` overrides some thresholds for one device model, on top of `thresholds`:
    `GAS_SAFETY_DETECTION__MODELS='{"LD-200": {"leak_lel": 15}}'`.
    """

    thresholds: Thresholds = Thresholds()
    models: dict[str, dict[str, float]] = Field(default_factory=dict)
    clock_skew_s: float = Field(default=300.0, gt=0)
    sweep_interval_s: float = Field(default=1.0, gt=0)
    incident_window_s: float = Field(default=600.0, gt=0)

    def for_model(self, model: str) -> Thresholds:
        return dataclasses.replace(self.thresholds, **self.models.get(model, {}))


class ResponseSettings(BaseModel):
    ack_timeout_s: float = 5.0
    max_resends: int = 3
    backoff_factor: float = 2.0
    emergency_arrival_s: float = 30 * 60
    routine_repair_s: float = 4 * 3600
    notify_channel: Literal["log", "webhook"] = "log"
    notify_webhook_url: str | None = None
    notify_max_attempts: int = 5


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    jwt_secret: SecretStr | None = None
    token_ttl_s: int = Field(default=3600, ge=60, le=7 * 86400)
    max_points: int = 10_000
    max_range_days: int = 400


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GAS_SAFETY_", env_nested_delimiter="__",
                                      extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"
    log_json: bool = False
    metrics_port: int = 9108
    mqtt: MqttSettings = MqttSettings()
    db: DbSettings = DbSettings()
    detection: DetectionSettings = DetectionSettings()
    response: ResponseSettings = ResponseSettings()
    api: ApiSettings = ApiSettings()
    priority: PrioritySettings = PrioritySettings()

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        return v.upper()

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _DictSource(settings_cls, _file_values()),
                _DictSource(settings_cls, _stack_values()))


class _DictSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def _file_values() -> dict[str, Any]:
    path = Path(os.environ.get("GAS_SAFETY_CONFIG", "gas-safety.toml"))
    if not path.is_file():
        return {}
    with path.open("rb") as f:
        return tomllib.load(f)


def _stack_values() -> dict[str, Any]:
    """Where the private stack runs, so that every command finds it with no configuration."""
    runtime = stack_home() / "runtime.json"
    if not runtime.is_file():
        return {}
    info = json.loads(runtime.read_text())
    return {
        "mqtt": {"host": "127.0.0.1", "port": info["mqtt_port"], "username": "gateway",
                 "password": info["gateway_password"],
                 "command_password": derive_password(info["fleet_key"],
                                                     "service:" + COMMANDS)},
        "db": {"dsn": info["dsn"]},
    }


def load() -> Settings:
    return Settings()
