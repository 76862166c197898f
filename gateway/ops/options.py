"""Command-line options several commands share: --config, --log-level and bounded counts."""

from __future__ import annotations

import argparse
from collections.abc import Callable

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def count_type(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number of `what` from low to high (both included)."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number of {what}: {text!r}") from None
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"{what}: from {low:,} to {high:,}, got {n:,}")
        return n

    return parse


def add_service_options(p: argparse.ArgumentParser) -> None:
    """--config and --log-level of the long-running commands (gateway, api, watch, status).

    Applied by gateway.cli.main before the settings are read, as the variables they stand
    for, so that child processes (the writer) and `config show` see the same."""
    p.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="settings file (default: $GAS_SAFETY_CONFIG, else ./gas-safety.toml if present)",
    )
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="log level (default: the log_level setting, INFO)",
    )
