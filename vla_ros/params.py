"""Node parameter specifications, ROS-free: one table per node, defaults only in its ``config/`` YAML file.

A node's table maps each parameter name to a :class:`ParamSpec` (type, description, whether it can change at
run time, range, choices, list item type and length). The default of every parameter is written once, in the
node's params file (``config/<node>.yaml``), read here by :func:`yaml_defaults`. The ROS layer turns a table
into ``ParameterDescriptor`` s and declarations (``vla_ros.nodes.params``); ROS-free code (the simulator's
bridge, tests) reads the same table and the same file.

The read-only rule: every spec states ``read_only`` explicitly (there is no default), so a table never
disagrees with itself about what may change while the node runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

from vla_ros.config import load_yaml

PARAM_TYPES = (bool, int, float, str, list)
LIST_ITEM_TYPES = (float, str)


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: what it is and which values it takes (its default lives in the node's YAML file)."""

    type: type  # bool, int, float, str or list (of ``item``)
    description: str
    _: KW_ONLY
    read_only: bool  # true: fixed once the node has started; false: settable at run time
    range: tuple[float, float] | None = None  # inclusive bounds of an int or float
    choices: tuple[str, ...] | None = None  # allowed strings; for a list of strings, allowed items
    item: type = float  # element type of a list: float (double[]) or str (string[])
    length: int | None = None  # a list's required length

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise TypeError(f"parameter type {self.type!r} is not one of {PARAM_TYPES}")
        if self.type is list and self.item not in LIST_ITEM_TYPES:
            raise TypeError(f"list item type {self.item!r} is not one of {LIST_ITEM_TYPES}")
        if self.range is not None and self.type not in (int, float):
            raise TypeError(f"a range needs an int or float parameter, not {self.type.__name__}")

    def typed(self, value: Any) -> Any:
        """``value`` as the declared type where that loses nothing: YAML's ``20`` for a float is ``20.0``."""
        if self.type is list and isinstance(value, list | tuple):
            return [_widened(v, self.item) for v in value]
        return _widened(value, self.type)

    def is_of_type(self, value: Any) -> bool:
        """Whether ``value`` already has the declared type (a YAML default must: ``20`` is not ``20.0``)."""
        if self.type is list:
            return isinstance(value, list) and all(_exactly(v, self.item) for v in value)
        return _exactly(value, self.type)

    def check(self, name: str, value: Any) -> None:
        """Raise ValueError naming ``name`` if ``value`` breaks the range, the choices or the list's length."""
        if self.range is not None and not self.range[0] <= value <= self.range[1]:
            raise ValueError(f"parameter {name}={value!r}: expected {self.range[0]:g} .. {self.range[1]:g}")
        if self.type is list:
            if self.length is not None and len(value) != self.length:
                raise ValueError(f"parameter {name} needs {self.length} values, got {list(value)!r}")
            if self.item is str and not all(isinstance(v, str) and v.strip() for v in value):
                raise ValueError(f"parameter {name} needs non-empty names, got {list(value)!r}")
            unknown = [v for v in value if self.choices is not None and v not in self.choices]
            if unknown:
                raise ValueError(f"parameter {name}: unknown {unknown[0]!r}; expected items of {self.choices}")
        elif self.choices is not None and value not in self.choices:
            raise ValueError(f"parameter {name}={value!r}: expected one of {self.choices}")


def _exactly(value: Any, kind: type) -> bool:
    # bool is an int subclass in Python; a parameter's type is exact in ROS
    return type(value) is kind


def _widened(value: Any, kind: type) -> Any:
    return float(value) if kind is float and type(value) is int else value


def yaml_defaults(params_file: str, node_name: str) -> dict[str, Any]:
    """The defaults of ``node_name`` as written in ``config/<params_file>`` (a ROS 2 params file)."""
    doc = load_yaml(params_file)
    try:
        return dict(doc[node_name]["ros__parameters"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{params_file} has no {node_name}: ros__parameters: section") from exc


def check_table(specs: Mapping[str, ParamSpec], defaults: Mapping[str, Any], params_file: str) -> None:
    """Raise ValueError unless the specs and the YAML name the same parameters, with valid defaults of their type."""
    differ = sorted(set(specs) ^ set(defaults))
    if differ:
        raise ValueError(f"{params_file} and the parameter specs disagree on {differ}")
    for name, spec in specs.items():
        value = spec.typed(defaults[name])
        if not spec.is_of_type(value):
            raise ValueError(f"{params_file}: the default of {name}, {defaults[name]!r}, is not a {spec.type.__name__}")
        spec.check(name, value)


def checked_values(specs: Mapping[str, ParamSpec], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (e.g. the YAML defaults with overrides) typed and checked, spec by spec; ValueError names one."""
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}")
    out = {}
    for name, value in values.items():
        out[name] = specs[name].typed(value)
        specs[name].check(name, out[name])
    return out
