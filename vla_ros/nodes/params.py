"""Declaring a node's parameters from its spec table (``vla_ros.params``) and its YAML defaults: the ROS side.

Both nodes call :func:`declare_from_specs`: it checks that ``config/<params_file>`` and the table name the same
parameters, declares each with the YAML default and a ``ParameterDescriptor`` (description, read-only, range,
choices), and checks the values the node starts with (defaults plus any overrides): a bad choice or list length
is a ValueError naming the parameter. rclpy itself enforces the ranges and read-only flags from then on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from vla_ros.params import ParamSpec, check_table, yaml_defaults


def descriptor(name: str, spec: ParamSpec) -> ParameterDescriptor:
    """The descriptor rclpy enforces: read-only flag and range; the choices are stated for ``ros2 param describe``."""
    d = ParameterDescriptor(name=name, description=spec.description, read_only=spec.read_only)
    if spec.range is not None and spec.type is float:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]), to_value=float(spec.range[1]),
                                                     step=0.0)]
    elif spec.range is not None and spec.type is int:
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=0)]
    if spec.choices is not None:
        each = "each item " if spec.type is list else ""
        d.additional_constraints = f"{each}one of: " + ", ".join(repr(c) for c in spec.choices)
    if spec.length is not None:
        d.additional_constraints = "; ".join(filter(None, (d.additional_constraints, f"{spec.length} values")))
    return d


def declare_from_specs(node, specs: Mapping[str, ParamSpec], params_file: str, node_name: str) -> dict[str, Any]:
    """Declare every parameter of ``specs`` with its ``params_file`` default; the values the node starts with.

    ValueError if the file and the specs name different parameters, or a start value breaks its spec.
    """
    defaults = yaml_defaults(params_file, node_name)
    check_table(specs, defaults, params_file)
    node.declare_parameters("", [(name, spec.typed(defaults[name]), descriptor(name, spec))
                                 for name, spec in specs.items()])
    values = {name: node.get_parameter(name).value for name in specs}
    for name, spec in specs.items():
        spec.check(name, values[name])
    return values
