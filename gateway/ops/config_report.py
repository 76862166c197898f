"""`gas-safety config check`: the settings a command would run with, and where each came from.

Each key's value is what validation made of the sources, labelled with the source that set
it (an environment variable, the TOML file, the private stack's runtime.json, or the
default), so that an operator sees at once whether the file they edited is the one in use.
Secrets never appear: SecretStr values and keys named like passwords or secrets are masked,
and a DSN or URL keeps its shape with only its password replaced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, SecretStr

from gateway.settings import Settings, Sources, ThresholdOverrides, dotted, holds, is_secret

logger = logging.getLogger(__name__)

MASK = "********"
_DSN_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^@\s]+@")


@dataclass(frozen=True)
class Entry:
    """One setting: its key, its value (masked), and the source that set it."""

    key: str
    value: Any  # JSON-able
    source: str  # "default" | "file" | "env" | "stack runtime"
    origin: str | None  # the file, the variable or the runtime file; None for defaults


def mask_text(text: str) -> str:
    """A DSN or URL with its password replaced, the rest kept for diagnosis."""
    return _URL_PASSWORD.sub(rf"\g<1>{MASK}@", _DSN_PASSWORD.sub(rf"\g<1>{MASK}", text))


def shown(path: tuple[str, ...], value: Any) -> Any:
    """A value as it may be printed."""
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else ""
    if is_secret(path) and value:
        return MASK
    if isinstance(value, str):
        return mask_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {}  # an empty mapping (a non-empty one is listed key by key)
    if isinstance(value, (list, tuple)):
        return [shown(path, item) for item in value]
    return str(value)


def leaves(obj: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every setting's path and value; per-model overrides list only the keys they set."""
    items: dict[str, Any] | None = None
    if isinstance(obj, BaseModel):
        names = (
            obj.model_fields_set if isinstance(obj, ThresholdOverrides) else type(obj).model_fields
        )
        items = {name: getattr(obj, name) for name in names}
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif isinstance(obj, dict) and obj:
        items = {str(k): v for k, v in obj.items()}
    if items is None:
        yield path, obj
        return
    for key in sorted(items):
        yield from leaves(items[key], (*path, key))


def source_of(path: tuple[str, ...], sources: Sources) -> tuple[str, str | None]:
    """Who set `path`, in the order Settings reads them: env, file, stack runtime, default."""
    for var in sources.env:
        if path[: len(var.path)] == var.path:
            return "env", var.name
    if holds(sources.file_values, path):
        return "file", str(sources.file)
    if holds(sources.stack_values, path):
        return "stack runtime", str(sources.stack)
    return "default", None


def report(settings: Settings, sources: Sources) -> list[Entry]:
    entries = []
    for path, value in leaves(settings):
        source, origin = source_of(path, sources)
        entries.append(Entry(dotted(path), shown(path, value), source, origin))
    return entries


def as_json(entries: list[Entry], sources: Sources) -> dict[str, Any]:
    return {
        "valid": True,
        "sources": {
            "file": str(sources.file) if sources.file else None,
            "stack_runtime": str(sources.stack) if sources.stack else None,
            "env": [var.name for var in sources.env],
        },
        "settings": {
            e.key: {"value": e.value, "source": e.source, "from": e.origin} for e in entries
        },
    }


def as_text(entries: list[Entry], sources: Sources) -> str:
    lines = [
        "settings are valid; read from, highest first:",
        "  env:           " + (", ".join(v.name for v in sources.env) or "(none)"),
        f"  file:          {sources.file or '(none)'}",
        f"  stack runtime: {sources.stack or '(none)'}",
        "",
    ]
    width = max(len(e.key) for e in entries)
    for e in entries:
        where = e.source if e.origin is None else f"{e.source} {e.origin}"
        lines.append(f"{e.key:<{width}} = {json.dumps(e.value):<24}  # {where}")
    return "\n".join(lines)
