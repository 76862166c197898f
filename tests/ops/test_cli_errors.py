"""One error style for the whole command line: a single line saying what is wrong and what
to do, a non-zero exit status, and a traceback only with --debug. Each case here is one an
operator met as a traceback or a pydantic dump."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from ops_support import Cli, one_line


def test_malformed_toml_names_the_file_and_the_line(cli: Cli) -> None:
    r = cli("config", "show", config="[mqtt\nport = 1883\n")
    line = one_line(r, 2)
    assert line.startswith("gas-safety: gas-safety.toml: not valid TOML:")
    assert "line 1" in line


def test_a_port_that_is_not_a_number(cli: Cli) -> None:
    r = cli("gateway", config='[mqtt]\nport = "eighty"\n')
    assert one_line(r, 2) == ("gas-safety: gas-safety.toml: mqtt.port: Input should be a valid "
                              "integer, unable to parse string as an integer (got 'eighty')")


def test_a_port_out_of_range(cli: Cli) -> None:
    r = cli("status", config="metrics_port = 70000\n")
    line = one_line(r, 2)
    assert "metrics_port" in line and "65535" in line


@pytest.mark.parametrize("households, said", [
    ("-5", "households: from 1 to 1,000,000, got -5"),
    ("1000000000000", "households: from 1 to 1,000,000, got 1,000,000,000,000"),
    ("many", "not a whole number of households: 'many'"),
])
def test_provision_refuses_impossible_fleets(cli: Cli, households: str, said: str) -> None:
    r = cli("fleet", "provision", "--households", households)
    assert one_line(r, 2) == (f"gas-safety fleet provision: error: argument --households: "
                              f"{said} (see --help)")


def test_simulator_counts_are_checked_too(cli: Cli) -> None:
    r = cli("simulate", "load", "--devices", "-1")
    assert "devices: from 1 to 1,000,000, got -1" in one_line(r, 2)
    r = cli("simulate", "demo", "--duration", "0")
    assert "must be above 0" in one_line(r, 2)


@pytest.mark.parametrize("program", ["gateway", "worker"])
def test_metrics_port_in_use_names_the_address_and_the_setting(cli: Cli, program: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = cli(program, env={"GAS_SAFETY_METRICS_PORT": str(port)})
    line = one_line(r, 3)
    assert line == (f"gas-safety {program}: metrics endpoint 127.0.0.1:{port}: Address already in "
                    "use (set metrics_port or metrics_host to a free address, or "
                    "metrics_port = 0 to turn the endpoint off)")


def test_database_away_one_line_and_traceback_only_with_debug(cli: Cli) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"GAS_SAFETY_DB__DSN": f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=2"}
    line = one_line(cli("user", "list", env=env), 1)
    assert line.startswith("gas-safety user: cannot reach the database:")
    assert f"port {port} failed" in line and "gas-safety status" in line
    debug = cli("--debug", "user", "list", env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_user_create_needs_a_role(cli: Cli) -> None:
    line = one_line(cli("user", "create", "alice"), 2)
    assert line == ("gas-safety user create: error: the following arguments are required: "
                    "--role (see --help)")


def test_config_option_must_name_a_file(cli: Cli, tmp_path: Path) -> None:
    assert one_line(cli("gateway", "--config", "nowhere.toml"), 2) == (
        "gas-safety: --config nowhere.toml: no such file")
    (tmp_path / "other.toml").write_text('[mqtt]\nport = "x"\n')
    assert "other.toml: mqtt.port" in one_line(cli("config", "show", "--config", "other.toml"), 2)


def test_log_level_option_is_the_setting(cli: Cli) -> None:
    r = cli("config", "show", "--json", "--log-level", "debug")
    assert r.returncode == 0, r.stderr
    import json
    doc = json.loads(r.stdout)["settings"]["log_level"]
    assert doc == {"value": "DEBUG", "source": "env", "from": "GAS_SAFETY_LOG_LEVEL"}
    assert "invalid choice: 'LOUD'" in one_line(cli("gateway", "--log-level", "loud"), 2)


def test_log_file_that_cannot_be_opened(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    r = cli("config", "show", env={"GAS_SAFETY_LOG_FILE": str(tmp_path / "f" / "x.log")})
    assert one_line(r, 2).startswith(f"gas-safety: log_file {tmp_path / 'f' / 'x.log'}: cannot")
