"""Typed settings for every component, from environment, a TOML file and the private stack.

Precedence, highest first: environment variables (`GAS_SAFETY_<SECTION>__<FIELD>`, e.g.
`GAS_SAFETY_DB__DSN`), the TOML file named by `GAS_SAFETY_CONFIG` (or `gas-safety.toml`
in the working directory), the ports of the private stack when it runs (`.stack/runtime.json`),
then the defaults below. Point `mqtt` and `db` at existing servers to run without the stack.

Strict: an unknown key in the file (at any depth), an unknown `GAS_SAFETY_` variable or a
file named by `GAS_SAFETY_CONFIG` that does not exist refuses to start, with a SettingsError
naming the key, where it was set and the closest valid name. A misspelt threshold would
otherwise leave the default the operator meant to change, silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.accounts import COMMANDS, service_password_from_key
from gateway.api_settings import ApiSettings
from gateway.cluster_settings import ClusterSettings
from gateway.core.thresholds import Thresholds
from gateway.edge_settings import EdgeSettings
from gateway.response_settings import ResponseSettings

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "GAS_SAFETY_"
CONFIG_ENV = "GAS_SAFETY_CONFIG"
DEFAULT_CONFIG = "gas-safety.toml"
# The project's own variables that are not settings: where things live, test and tool switches.
OTHER_ENV = frozenset(
    {
        "GAS_SAFETY_HOME",  # the private stack's folder
        CONFIG_ENV,  # the TOML file
        "GAS_SAFETY_KEEP_TEST_HOME",  # tests: keep the temporary stack for a post-mortem
        "GAS_SAFETY_NEW_PASSWORD",  # `user create` in scripts (dashboard_api.users)
        "GAS_SAFETY_FUZZ_DEEP",  # tests/api/test_fuzz.py: the long schemathesis phase
    }
)
_STRICT = ConfigDict(extra="forbid")


class SettingsError(ValueError):
    """A configuration the platform refuses to run with; the message names the key and where
    it was set, in one line for the operator."""


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

    model_config = _STRICT

    loop_rt_priority: int = Field(default=10, ge=0, le=99)  # SCHED_RR; 0: use loop_nice
    loop_nice: int = Field(default=-10, ge=-20, le=19)
    background_rt_priority: int = Field(default=1, ge=0, le=99)  # 0: use background_nice
    background_nice: int = Field(default=0, ge=-20, le=19)


class MqttSettings(BaseModel):
    model_config = _STRICT

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
    model_config = _STRICT

    dsn: str = "host=127.0.0.1 port=5432 dbname=gas_safety user=gas_safety"
    # A streaming replica for the API's reads that may lag (dashboard_api/reads.py); none:
    # every read from dsn. Past read_max_lag_s behind, reads go to dsn.
    read_dsn: str | None = None
    read_max_lag_s: float = Field(default=5.0, gt=0)
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


_OVERRIDABLE: dict[str, Any] = {
    f.name: (float | None, None) for f in dataclasses.fields(Thresholds)
}
ThresholdOverrides: type[BaseModel] = create_model(
    "ThresholdOverrides", __config__=_STRICT, **_OVERRIDABLE
)
ThresholdOverrides.__doc__ = "Some of Thresholds' numbers, for one device model."


class DetectionSettings(BaseModel):
    """Rule thresholds (defaults: the product's detection rules, in gateway.core.thresholds).

    `models` overrides some thresholds for one device model, on top of `thresholds`:
    `GAS_SAFETY_DETECTION__MODELS='{"LD-200": {"leak_lel": 15}}'`.
    """

    model_config = _STRICT

    thresholds: Thresholds = Thresholds()
    models: dict[str, ThresholdOverrides] = Field(default_factory=dict)  # type: ignore[valid-type]
    clock_skew_s: float = Field(default=300.0, gt=0)
    sweep_interval_s: float = Field(default=1.0, gt=0)
    incident_window_s: float = Field(default=600.0, gt=0)
    # the reading-driven rules: "compiled" (numba, 3-4x faster; about 100 MB of LLVM per
    # process), "numpy" (the specification, no numba), "auto" (compiled if numba imports)
    engine: Literal["auto", "compiled", "numpy"] = "auto"

    @model_validator(mode="after")
    def _models_consistent(self) -> DetectionSettings:
        """A model's overrides must make valid thresholds with the rest (checked at start)."""
        for model in self.models:
            try:
                self.for_model(model)
            except ValueError as err:
                raise ValueError(f"models.{model}: {err}") from None
        return self

    def for_model(self, model: str) -> Thresholds:
        overrides = self.models.get(model)
        if overrides is None:
            return self.thresholds
        return dataclasses.replace(self.thresholds, **overrides.model_dump(exclude_none=True))


class ClockSettings(BaseModel):
    """The platform clock. For tests of time-based rules only: a clock that runs `speed`
    times faster than the wall clock from `wall_origin` (epoch seconds; standing still at
    `sim_origin` until then), so that hours or days of device life pass in seconds. Every
    rule, ack timeout and deadline then runs that much faster, and devices on the real clock
    look skewed: refused unless `environment` is "test" (see Settings)."""

    model_config = _STRICT

    speed: float = Field(default=1.0, gt=0)
    wall_origin: float | None = None
    sim_origin: float | None = None  # the platform's time at wall_origin (default: wall_origin)

    @property
    def accelerated(self) -> bool:
        return self.speed != 1.0 or self.sim_origin is not None

    def source(self, wall: Callable[[], float] = time.time) -> Callable[[], float]:
        """The clock function: `wall` itself unless accelerated or shifted."""
        if not self.accelerated:
            return wall
        w0 = wall() if self.wall_origin is None else self.wall_origin
        s0 = w0 if self.sim_origin is None else self.sim_origin
        speed = self.speed
        return lambda: s0 + max(0.0, wall() - w0) * speed


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid"
    )

    environment: Literal["development", "test", "production"] = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_json: bool = False
    # Logs go to stderr (the journal under systemd); with log_file also to that file, rotated
    # at log_max_mb and keeping log_backups old files.
    log_file: str | None = None
    log_max_mb: int = Field(default=100, ge=1)
    log_backups: int = Field(default=5, ge=0)
    # The gateway's Prometheus /metrics and /healthz; 0.0.0.0 to be scraped from elsewhere.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9108, ge=0, le=65535)  # 0: no metrics endpoint
    mqtt: MqttSettings = MqttSettings()
    db: DbSettings = DbSettings()
    detection: DetectionSettings = DetectionSettings()
    response: ResponseSettings = ResponseSettings()
    api: ApiSettings = ApiSettings()
    priority: PrioritySettings = PrioritySettings()
    clock: ClockSettings = ClockSettings()
    edge: EdgeSettings = EdgeSettings()  # `gas-safety relay` (gateway.edge_settings)
    cluster: ClusterSettings = ClusterSettings()

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _clock_for_tests_only(self) -> Settings:
        if self.clock.accelerated and self.environment != "test":
            raise ValueError(
                "clock: an accelerated or shifted clock is for tests only"
                f" (environment is {self.environment!r}, not 'test')"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        check_environment(os.environ)
        return (
            init_settings,
            env_settings,
            _DictSource(settings_cls, read_file()[1]),
            _DictSource(settings_cls, read_stack()[1]),
        )


class _DictSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


# ------------------------------------------------------------------ sources, read strictly


@dataclass(frozen=True)
class EnvSetting:
    """One `GAS_SAFETY_…` variable that sets a setting, and the path it sets."""

    name: str
    path: tuple[str, ...]  # as pydantic-settings reads it: lower case, split at "__"
    value: str


@dataclass(frozen=True)
class Sources:
    """Everything settings are read from, for `config check` and for error messages."""

    env: list[EnvSetting]
    file: Path | None
    file_values: dict[str, Any]
    stack: Path | None
    stack_values: dict[str, Any]


def config_file() -> tuple[Path, bool]:
    """The TOML file, and whether GAS_SAFETY_CONFIG named it (then it must exist)."""
    named = os.environ.get(CONFIG_ENV)
    return (Path(named), True) if named is not None else (Path(DEFAULT_CONFIG), False)


def read_file() -> tuple[Path | None, dict[str, Any]]:
    """The TOML file's values, every key known; (None, {}) when no file is used."""
    path, named = config_file()
    if not path.is_file():
        if named:
            raise SettingsError(_missing_file(path))
        return None, {}
    try:
        with path.open("rb") as f:
            values = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise SettingsError(f"{path}: not valid TOML: {err}") from None
    except OSError as err:
        raise SettingsError(f"{path}: cannot read it: {err.strerror}") from None
    unknown = find_unknown(Settings, values)
    if unknown is not None:
        key, candidates, value = unknown
        what = "section" if isinstance(value, dict) else "key"
        raise SettingsError(f"{path}: unknown {what} {dotted(key)}{_hint(key[-1], candidates)}")
    return path, values


def read_stack() -> tuple[Path | None, dict[str, Any]]:
    """Where the private stack runs, so that every command finds it with no configuration."""
    runtime = stack_home() / "runtime.json"
    if not runtime.is_file():
        return None, {}
    try:
        info = json.loads(runtime.read_text())
        return runtime, {
            "mqtt": {
                "host": "127.0.0.1",
                "port": info["mqtt_port"],
                "username": "gateway",
                "password": info["gateway_password"],
                "command_password": service_password_from_key(info["fleet_key"], COMMANDS),
            },
            "db": {"dsn": info["dsn"], **_replica_dsn(runtime.with_name("replica.json"))},
            **_cluster_log(runtime.parent / "cluster" / "cluster.json"),
        }
    except (ValueError, KeyError, TypeError) as err:
        raise SettingsError(
            f"{runtime}: not a runtime file of `gas-safety stack up` ({err!r}); "
            "run `gas-safety stack up` again or remove it"
        ) from None


def _cluster_log(path: Path) -> dict[str, Any]:
    """`cluster.nats_servers` from `gas-safety stack up --cluster`'s file, when there is one:
    `gas-safety worker` then joins the private cluster with no configuration."""
    if not path.is_file():
        return {}
    return {"cluster": {"nats_servers": ",".join(json.loads(path.read_text())["nats_urls"])}}


def _replica_dsn(path: Path) -> dict[str, str]:
    """`db.read_dsn` from the file `gas-safety stack replica up` writes, when there is one."""
    if not path.is_file():
        return {}
    return {"read_dsn": json.loads(path.read_text())["dsn"]}


def env_settings(environ: Any = None) -> list[EnvSetting]:
    """The `GAS_SAFETY_…` variables meant as settings (all but OTHER_ENV), sorted by name."""
    environ = os.environ if environ is None else environ
    found = []
    for name, value in environ.items():
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in OTHER_ENV:
            path = tuple(name[len(ENV_PREFIX) :].lower().split("__"))
            found.append(EnvSetting(name, path, value))
    return sorted(found, key=lambda v: v.name)


def check_environment(environ: Any = None) -> None:
    """Refuse a `GAS_SAFETY_…` variable that names no setting (pydantic-settings skips it)."""
    for var in env_settings(environ):
        target, bad = _walk(var.path)
        if bad is not None:
            raise SettingsError(
                f"{var.name}: unknown setting {dotted(var.path[: bad + 1])}"
                f"{_env_hint(var, bad, target)}"
            )
        if table_fields(target) is None and _mapping_item(target) is None:
            continue
        try:  # a whole section or mapping, as JSON (pydantic-settings decodes it so)
            value = json.loads(var.value)
        except ValueError as err:
            raise SettingsError(
                f"{var.name}: not valid JSON for {dotted(var.path)} ({err})"
            ) from None
        unknown = find_unknown(target, value, var.path)
        if unknown is not None:
            key, candidates, _ = unknown
            raise SettingsError(
                f"{var.name}: unknown key {dotted(key)}{_hint(key[-1], candidates)}"
            )


def sources() -> Sources:
    """Read (and check) every source as Settings does."""
    check_environment()
    file, file_values = read_file()
    stack, stack_values = read_stack()
    return Sources(env_settings(), file, file_values, stack, stack_values)


def load() -> Settings:
    """Settings as every command uses them; SettingsError, one line, when they are not valid."""
    try:
        return Settings()
    except ValidationError as err:
        raise SettingsError(explain(err)) from None
    except ValueError as err:  # pydantic-settings' own (a value it could not decode)
        if isinstance(err, SettingsError):
            raise
        raise SettingsError(str(err).splitlines()[0]) from None


def explain(err: ValidationError) -> str:
    """One line for the first error: where it was set, the key, what is wrong."""
    first = err.errors()[0]
    loc = tuple(str(part) for part in first["loc"])
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    where = _origin_of(loc)
    if first["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        target, _ = _walk(loc[:-1])
        candidates = sorted(table_fields(target) or {})
        return f"{where}: unknown key {dotted(loc)}{_hint(loc[-1], candidates)}{more}"
    got = first.get("input")
    shown = f" (got {got!r})" if isinstance(got, (int, float, str)) and not is_secret(loc) else ""
    return f"{where}: {dotted(loc) or 'settings'}: {first['msg']}{shown}{more}"


def is_secret(path: Sequence[str]) -> bool:
    """Values never shown: passwords, secrets, keys and tokens (DSNs are shown masked)."""
    name = path[-1].lower() if path else ""
    return (
        bool({"password", "secret"} & set(name.split("_")))
        or name.endswith(("_key", "_token"))
        or name in ("key", "token")
    )


# ------------------------------------------------------------------ the settings' shape


def table_fields(tp: Any) -> dict[str, Any] | None:
    """The keys a table of this type may hold, with their types; None: not a table."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {name: f.annotation for name, f in tp.model_fields.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return {f.name: f.type for f in dataclasses.fields(tp)}
    return None


def _mapping_item(tp: Any) -> Any:
    """The value type of a mapping with free keys (per-model overrides), else None."""
    return get_args(tp)[1] if get_origin(tp) is dict else None


def find_unknown(
    tp: Any, value: Any, path: tuple[str, ...] = ()
) -> tuple[tuple[str, ...], list[str], Any] | None:
    """The first key of `value` that `tp` does not have: (its path, the valid names, value)."""
    if not isinstance(value, dict):
        return None
    item = _mapping_item(tp)
    if item is not None:
        for key, sub in value.items():
            found = find_unknown(item, sub, (*path, str(key)))
            if found is not None:
                return found
        return None
    known = table_fields(tp)
    if known is None:
        return None
    for key, sub in value.items():
        if key not in known:
            return (*path, str(key)), sorted(known), sub
        found = find_unknown(known[key], sub, (*path, key))
        if found is not None:
            return found
    return None


def _walk(path: Sequence[str]) -> tuple[Any, int | None]:
    """The type at `path` from Settings, and the index of the first part that is no key."""
    tp: Any = Settings
    for i, part in enumerate(path):
        item = _mapping_item(tp)
        if item is not None:
            tp = item
            continue
        known = table_fields(tp)
        if known is None or part not in known:
            return tp, i
        tp = known[part]
    return tp, None


def _env_names(tp: Any, path: tuple[str, ...] = ()) -> list[str]:
    """Every variable name that sets something under `tp` (mapping entries excluded)."""
    names = [ENV_PREFIX + "__".join(path).upper()] if path else []
    for key, sub in (table_fields(tp) or {}).items():
        names += _env_names(sub, (*path, key))
    return names


def dotted(path: Sequence[str]) -> str:
    """A key path as TOML writes it: detection.models."LD 200".leak_lel."""
    return ".".join(
        p if p and all(c.isalnum() or c in "_-" for c in p) else json.dumps(p) for p in path
    )


def _hint(name: str, candidates: Sequence[str]) -> str:
    near = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean {near[0]}?)" if near else ""


def _env_hint(var: EnvSetting, bad: int, target: Any) -> str:
    level = [
        ENV_PREFIX + "__".join((*var.path[:bad], key)).upper()
        for key in (table_fields(target) or {})
    ]
    everything = [*_env_names(Settings), *sorted(OTHER_ENV)]
    if bad == 0:
        level += sorted(OTHER_ENV)
    # a key of a section named without its section: LEAK_LEL for DETECTION__THRESHOLDS__LEAK_LEL
    nested = [n for n in everything if n.endswith("__" + var.name.upper()[len(ENV_PREFIX) :])]
    near = (
        nested[:1]
        or difflib.get_close_matches(var.name.upper(), level, n=1)
        or difflib.get_close_matches(var.name.upper(), everything, n=1)
    )
    return f" (did you mean {near[0]}?)" if near else ""


def _missing_file(path: Path) -> str:
    what = "is not a file" if path.exists() else "no such file"
    folder = path.parent
    names = [p.name for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    near = difflib.get_close_matches(path.name, names, n=1)
    hint = f" (did you mean {folder / near[0]}?)" if near else ""
    return f"{CONFIG_ENV}={path}: {what}{hint}"


def _origin_of(path: tuple[str, ...]) -> str:
    """Which source set `path` (or a key above or below it), as a message names it."""
    for var in env_settings():
        n = min(len(var.path), len(path))
        if var.path[:n] == path[:n]:
            return var.name
    for getter in (read_file, read_stack):
        try:
            where, values = getter()
        except SettingsError:
            continue
        if where is not None and holds(values, path):
            return str(where)
    return "settings"


def holds(values: Any, path: Sequence[str]) -> bool:
    """Whether nested tables `values` set the key at `path`."""
    for part in path:
        if not isinstance(values, dict) or part not in values:
            return False
        values = values[part]
    return True
