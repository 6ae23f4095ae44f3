"""The Markdown rows of a node's parameter table, made from its specs and YAML defaults: README.md,
docs/policy_node.md and docs/sim_bridge.md hold exactly these rows, so the docs cannot drift from the code."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from vla_ros.params import ParamSpec

HEADER = "| name | type | default | when | range / choices | description |"
_TYPE_NAMES = {bool: "bool", int: "int", float: "double", str: "string"}


def table_row(name: str, spec: ParamSpec, default: Any) -> str:
    if spec.type is list:
        kind = _TYPE_NAMES[spec.item] + (f"[{spec.length}]" if spec.length else "[]")
    else:
        kind = _TYPE_NAMES[spec.type]
    if spec.range is not None:
        lo, hi = spec.range
        allowed = f"{lo} … {hi}" if spec.type is int else f"{lo:g} … {hi:g}"
    elif spec.choices is not None:
        allowed = " / ".join(f"`{c}`" if c else '`""`' for c in spec.choices)
    else:
        allowed = ""
    when = "read-only" if spec.read_only else "live"
    return f"| `{name}` | {kind} | `{json.dumps(default)}` | {when} | {allowed} | {spec.description} |"


def table_rows(specs: Mapping[str, ParamSpec], defaults: Mapping[str, Any]) -> list[str]:
    return [table_row(name, spec, defaults[name]) for name, spec in specs.items()]


def documented_rows(markdown: str, names: set[str]) -> list[str]:
    """The table rows of ``markdown`` that describe one of ``names``, in order."""
    return [line for line in markdown.splitlines()
            if line.startswith("| `") and line.split("`")[1] in names]
