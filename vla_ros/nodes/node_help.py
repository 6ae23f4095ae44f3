"""``<node> --help``: a node's parameters printed from its spec table and YAML defaults, without starting ROS.

``ros2 run vla_ros vla_policy_node --help`` would otherwise start the node (rclpy takes no ``--help``). A
node's ``main`` asks :func:`wants_help` first and, if so, returns :func:`print_node_help` (exit code 0)
before ``rclpy.init``. The printer takes rows ``(name, type name, default, description, read_only)``,
or a spec table (name -> spec with ``type``, ``description``, ``read_only`` and optionally ``item``,
``length``, ``range``, ``choices``), which :func:`param_rows` turns into rows.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

ParamRow = tuple[str, str, Any, str, bool]  # name, type name, default, description, read_only
_TYPE_NAMES = {bool: "bool", int: "int", float: "double", str: "string"}


def wants_help(argv: list[str]) -> bool:
    """``-h``/``--help`` among the node's own arguments (those after ``--ros-args`` are ROS's)."""
    own = argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]
    return "-h" in own or "--help" in own


def _sentence(text: str, extra: str) -> str:
    text = text.rstrip()
    return f"{text}{'' if text.endswith('.') else '.'} {extra}" if text else extra


def param_rows(specs: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[ParamRow]:
    """Rows from a spec table; the default is the YAML one (None where the file has none)."""
    rows = []
    for name, spec in specs.items():
        kind = _TYPE_NAMES.get(spec.type, getattr(spec.type, "__name__", str(spec.type)))
        if spec.type is list:
            length = getattr(spec, "length", None)
            kind = _TYPE_NAMES.get(getattr(spec, "item", float), "double") + (f"[{length}]" if length else "[]")
        description = spec.description
        if getattr(spec, "range", None) is not None:
            lo, hi = spec.range
            description = _sentence(description, f"Range {lo:g} … {hi:g}.")
        if getattr(spec, "choices", None) is not None:
            description = _sentence(description, "One of: " + ", ".join(c or '""' for c in spec.choices) + ".")
        rows.append((name, kind, defaults.get(name), description, bool(spec.read_only)))
    return rows


def format_node_help(node_name: str, specs: Mapping[str, Any] | Iterable[ParamRow],
                     defaults: Mapping[str, Any]) -> str:
    rows = param_rows(specs, defaults) if isinstance(specs, Mapping) else [
        (name, kind, defaults.get(name, default), description, read_only)
        for name, kind, default, description, read_only in specs]
    lines = [f"usage: {node_name} [-h] [--ros-args [-p NAME:=VALUE ...] [--params-file FILE] [-r FROM:=TO ...]]",
             "",
             f"Parameters of {node_name} (default: from its config/ params file;",
             "read-only: fixed once the node runs; live: settable with `ros2 param set`):"]
    for name, kind, default, description, read_only in rows:
        lines.append(f"  {name} ({kind}, {'read-only' if read_only else 'live'}, default: {json.dumps(default)})")
        lines.append(f"      {description}")
    return "\n".join(lines) + "\n"


def print_node_help(node_name: str, specs: Mapping[str, Any] | Iterable[ParamRow], defaults: Mapping[str, Any],
                    out: TextIO | None = None) -> int:
    """Print the node's usage and parameters; returns the exit code (0) for ``main`` to return."""
    (out or sys.stdout).write(format_node_help(node_name, specs, defaults))
    return 0
