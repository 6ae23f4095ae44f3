"""`vla_policy_node --help` / `sim_bridge_node --help` (issue #20): the parameters, printed without starting ROS."""

from __future__ import annotations

import io

import pytest

from vla_ros.nodes.node_help import param_rows, print_node_help, wants_help
from vla_ros.params import ParamSpec

ROWS = [("rate", "double", 1.0, "How often.", False), ("mode", "string", "a", "Which mode.", True)]


def _help(node: str, specs, defaults) -> str:
    out = io.StringIO()
    assert print_node_help(node, specs, defaults, out=out) == 0
    return out.getvalue()


def test_help_lists_each_parameter_with_type_default_description_and_read_only():
    text = _help("my_node", ROWS, {"rate": 20.0})
    assert "usage: my_node" in text and "--ros-args" in text
    rate = text[text.index("  rate"):text.index("  mode")]
    assert "double" in rate and "20.0" in rate and "How often." in rate and "live" in rate  # the YAML default wins
    mode = text[text.index("  mode"):]
    assert "string" in mode and '"a"' in mode and "read-only" in mode


def test_help_rows_come_from_spec_tables():
    specs = {"names": ParamSpec(list, "Two joints.", item=str, length=2, read_only=True),
             "gain": ParamSpec(float, "A gain.", range=(0.0, 2.0), read_only=False),
             "kind": ParamSpec(str, "A kind.", choices=("x", "y"), read_only=True)}
    rows = param_rows(specs, {"names": ["l", "r"], "gain": 1.5, "kind": "x"})
    assert rows == [("names", "string[2]", ["l", "r"], "Two joints.", True),
                    ("gain", "double", 1.5, "A gain. Range 0 … 2.", False),
                    ("kind", "string", "x", "A kind. One of: x, y.", True)]
    text = _help("n", specs, {"names": ["l", "r"], "gain": 1.5, "kind": "x"})
    assert '["l", "r"]' in text and "Range 0 … 2." in text


def test_help_is_asked_for_before_the_ros_arguments_only():
    assert wants_help(["vla_policy_node", "--help"]) and wants_help(["vla_policy_node", "-h"])
    assert not wants_help(["vla_policy_node"])
    assert not wants_help(["vla_policy_node", "--ros-args", "-p", "x:=--help"])  # a ROS argument's value


@pytest.mark.ros
def test_help_of_both_nodes_names_every_parameter():
    pytest.importorskip("rclpy", reason="policy_params is the ROS layer's")
    import rclpy

    from vla_ros.nodes import policy_params
    from vla_ros.sim import bridge_params

    for name, specs, defaults in [(policy_params.NODE_NAME, policy_params.SPECS, policy_params.yaml_defaults()),
                                  (bridge_params.NODE_NAME, bridge_params.SPECS, bridge_params.yaml_defaults())]:
        text = _help(name, specs, defaults)
        assert all(f"  {p} " in text for p in specs), name
    assert "max_instruction_chars (int, live, default: 512)" in _help(
        policy_params.NODE_NAME, policy_params.SPECS, policy_params.yaml_defaults())
    assert not rclpy.ok()  # printing help never initialised ROS


@pytest.mark.ros
@pytest.mark.parametrize(("script", "params"), [("vla_policy_node", "vla_ros.nodes.policy_params"),
                                                 ("sim_bridge_node", "vla_ros.sim.bridge_params")])
def test_console_scripts_print_their_parameters_and_exit_0(script, params):
    """The installed console script: parameters on stdout, exit 0, no ROS started (it would log or wait)."""
    import importlib
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / script
    if not exe.exists():
        pytest.fail(f"console script {exe} is not installed (pip install -e . in the venv)")
    specs = importlib.import_module(params).SPECS
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ") and all(f"  {p} (" in proc.stdout for p in specs)
    assert "rclpy" not in proc.stderr and "[INFO]" not in proc.stderr + proc.stdout
