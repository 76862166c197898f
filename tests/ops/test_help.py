"""`gas-safety --help` as documentation: every option of every command says what it does and,
where it has one, its default; --version answers."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

from ops_support import Cli

from gateway.cli import build_parser, version


def _parsers(p: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _options() -> Iterator[tuple[str, argparse.Action]]:
    for p in _parsers(build_parser()):
        for action in p._actions:
            if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                yield p.prog, action


def test_every_option_is_described() -> None:
    missing = [f"{prog} {a.option_strings or a.dest}" for prog, a in _options() if not a.help]
    assert missing == []


def test_every_default_is_shown() -> None:
    parsers = list(_parsers(build_parser()))
    assert len(parsers) > 20  # stack, db, config, fleet, gateway, watch, status, api, user, sim
    for p in parsers:
        text = p.format_help()
        for action in p._actions:
            if (action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
                    and not isinstance(action, argparse._HelpAction | argparse._VersionAction)):
                assert "default" in (action.help or "") or re.search(
                    r"\(default: [^)]+\)", text), (p.prog, action.option_strings)
    demo = next(p for p in parsers if p.prog.endswith("simulate demo")).format_help()
    assert "(default: 180.0)" in demo and "(default: 200)" in demo
    load = next(p for p in parsers if p.prog.endswith("simulate load")).format_help()
    assert "(default: 20000)" in load and "(default: 20000.0)" in load


def test_long_running_commands_take_config_and_log_level() -> None:
    for p in _parsers(build_parser()):
        if p.prog.split()[1:] in (["gateway"], ["api"], ["status"], ["watch"], ["config", "show"]):
            flags = {f for a in p._actions for f in a.option_strings}
            assert {"--config", "--log-level"} <= flags, p.prog


def test_version(cli: Cli) -> None:
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"gas-safety {version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", version())


def test_user_help_documents_the_password_variable(cli: Cli) -> None:
    r = cli("user", "create", "--help")
    assert "GAS_SAFETY_NEW_PASSWORD" in r.stdout.replace("\n", " ")
