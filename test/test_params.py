"""The one parameter-spec mechanism of both nodes: ``vla_ros.params`` (ROS-free specs, defaults from the YAML
files only) and ``vla_ros.nodes.params`` (descriptors and declarations), and the docs' tables made from them."""

from __future__ import annotations

import pytest
from param_tables import HEADER, documented_rows, table_rows

from helpers import REPO
from vla_ros.params import ParamSpec, check_table, checked_values, yaml_defaults
from vla_ros.sim import bridge_params

SPECS = {
    "mode": ParamSpec(str, "how", choices=("a", "b"), read_only=True),
    "rate": ParamSpec(float, "how often", range=(0.5, 10.0), read_only=False),
    "count": ParamSpec(int, "how many", range=(0, 5), read_only=False),
    "names": ParamSpec(list, "which", item=str, length=2, read_only=True),
    "cams": ParamSpec(list, "cameras", item=str, choices=("front", "wrist"), read_only=True),
    "gains": ParamSpec(list, "gains", read_only=False),
    "on": ParamSpec(bool, "whether", read_only=False),
}
DEFAULTS = {"mode": "a", "rate": 2.0, "count": 3, "names": ["l", "r"], "cams": ["front"], "gains": [1.0, 2.0],
            "on": True}


def test_every_spec_states_read_only():
    with pytest.raises(TypeError, match="read_only"):
        ParamSpec(bool, "no read-only flag")  # no default to disagree about
    with pytest.raises(TypeError):
        ParamSpec(bool, "positional flag", True)  # keyword only: the table says which it is


def test_both_nodes_use_the_one_spec_class():
    pytest.importorskip("rclpy", reason="policy_params is the ROS layer's")
    from vla_ros.nodes import policy_params

    assert policy_params.ParamSpec is ParamSpec
    for table in (policy_params.SPECS, bridge_params.SPECS):
        assert all(type(spec) is ParamSpec for spec in table.values())


def test_check_names_the_parameter_for_a_bad_choice_length_range_or_item():
    bad = {"mode": "c", "names": ["only"], "count": 6, "rate": 0.1, "cams": ["front", "top"]}
    for name, value in bad.items():
        with pytest.raises(ValueError, match=rf"parameter {name}\b"):
            SPECS[name].check(name, value)
    with pytest.raises(ValueError, match="non-empty names"):
        SPECS["names"].check("names", ["l", " "])
    for name, value in DEFAULTS.items():
        SPECS[name].check(name, value)


def test_typed_widens_ints_to_floats_and_nothing_else():
    assert SPECS["rate"].typed(2) == 2.0 and type(SPECS["rate"].typed(2)) is float
    assert [type(v) for v in SPECS["gains"].typed([1, 2.5])] == [float, float]
    assert SPECS["count"].typed(3) == 3 and SPECS["on"].typed(True) is True
    assert not SPECS["rate"].is_of_type(2) and SPECS["rate"].is_of_type(2.0)
    assert not SPECS["count"].is_of_type(True)  # a bool is no int in ROS
    assert not SPECS["gains"].is_of_type([1.0, "x"])


def test_check_table_wants_the_same_names_and_valid_defaults():
    check_table(SPECS, DEFAULTS, "x.yaml")
    check_table(SPECS, {**DEFAULTS, "rate": 2}, "x.yaml")  # YAML's 2 for 2.0 declares fine once widened
    with pytest.raises(ValueError, match=r"disagree on \['extra', 'on'\]"):
        check_table(SPECS, {**{k: v for k, v in DEFAULTS.items() if k != "on"}, "extra": 1}, "x.yaml")
    with pytest.raises(ValueError, match="default of count"):
        check_table(SPECS, {**DEFAULTS, "count": "three"}, "x.yaml")
    with pytest.raises(ValueError, match="parameter mode"):
        check_table(SPECS, {**DEFAULTS, "mode": "z"}, "x.yaml")


def test_checked_values_types_checks_and_refuses_unknown_names():
    assert checked_values(SPECS, {"rate": 3, "mode": "b"}) == {"rate": 3.0, "mode": "b"}
    with pytest.raises(ValueError, match="unknown parameter"):
        checked_values(SPECS, {"speed": 1})


def test_yaml_defaults_come_from_the_node_section_of_its_file(tmp_path, monkeypatch):
    assert yaml_defaults(bridge_params.PARAMS_FILE, bridge_params.NODE_NAME) == bridge_params.yaml_defaults()
    (tmp_path / "n.yaml").write_text("other:\n  ros__parameters: {a: 1}\n")
    monkeypatch.setenv("VLA_ROS_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="no n: ros__parameters"):
        yaml_defaults("n.yaml", "n")


def test_the_bridge_docs_table_is_the_specs_and_the_yaml():
    doc = (REPO / "docs" / "sim_bridge.md").read_text()
    section = doc[doc.index("## Parameters"):doc.index("## Recording")]
    assert HEADER in section
    want = table_rows(bridge_params.SPECS, bridge_params.yaml_defaults())
    assert documented_rows(section, set(bridge_params.SPECS)) == want


@pytest.mark.parametrize("doc", ["README.md", "docs/policy_node.md"])
def test_the_policy_node_docs_tables_are_the_specs_and_the_yaml(doc):
    pytest.importorskip("rclpy", reason="policy_params is the ROS layer's")
    from vla_ros.nodes import policy_params

    text = (REPO / doc).read_text()
    assert HEADER in text
    want = table_rows(policy_params.SPECS, policy_params.yaml_defaults())
    assert documented_rows(text, set(policy_params.SPECS)) == want


# ---------------------------------------------------------------- the ROS side: descriptors and declarations
@pytest.fixture
def ros_node(tmp_path, monkeypatch):
    rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
    import yaml
    from rclpy.parameter import Parameter

    (tmp_path / "n.yaml").write_text(yaml.safe_dump({"n": {"ros__parameters": DEFAULTS}}))
    monkeypatch.setenv("VLA_ROS_CONFIG_DIR", str(tmp_path))
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    made = []

    def make(**overrides):
        node = rclpy.create_node("n", context=ctx, parameter_overrides=[Parameter(k, value=v)
                                                                         for k, v in overrides.items()])
        made.append(node)
        return node

    yield make
    for node in made:
        node.destroy_node()
    rclpy.shutdown(context=ctx)


@pytest.mark.ros
def test_declare_from_specs_uses_the_yaml_defaults_and_the_descriptors(ros_node):
    from rcl_interfaces.msg import ParameterType
    from rclpy.parameter import Parameter

    from vla_ros.nodes.params import declare_from_specs

    node = ros_node(count=4)
    values = declare_from_specs(node, SPECS, "n.yaml", "n")
    assert values == {**DEFAULTS, "count": 4}  # overrides win as usual
    d = {name: node.describe_parameter(name) for name in SPECS}
    assert d["mode"].read_only and not d["rate"].read_only and d["rate"].description == "how often"
    assert (d["rate"].floating_point_range[0].from_value, d["rate"].floating_point_range[0].to_value) == (0.5, 10.0)
    assert (d["count"].integer_range[0].from_value, d["count"].integer_range[0].to_value) == (0, 5)
    assert "'a', 'b'" in d["mode"].additional_constraints and "2 values" in d["names"].additional_constraints
    assert d["names"].type == ParameterType.PARAMETER_STRING_ARRAY
    assert d["gains"].type == ParameterType.PARAMETER_DOUBLE_ARRAY
    assert not node.set_parameters([Parameter("count", value=9)])[0].successful  # range, enforced by rclpy
    assert not node.set_parameters([Parameter("mode", value="b")])[0].successful  # read-only
    assert node.set_parameters([Parameter("rate", value=5.0)])[0].successful


@pytest.mark.ros
@pytest.mark.parametrize(("override", "says"), [
    ({"mode": "c"}, "parameter mode"),
    ({"names": ["only_one"]}, "parameter names"),
    ({"cams": ["front", "top"]}, "parameter cams"),
])
def test_declare_from_specs_refuses_a_bad_start_value_naming_it(ros_node, override, says):
    from vla_ros.nodes.params import declare_from_specs

    with pytest.raises(ValueError, match=says):
        declare_from_specs(ros_node(**override), SPECS, "n.yaml", "n")


@pytest.mark.ros
def test_declare_from_specs_refuses_a_yaml_that_names_other_parameters(ros_node):
    from vla_ros.nodes.params import declare_from_specs

    with pytest.raises(ValueError, match=r"disagree on \['speed'\]"):
        declare_from_specs(ros_node(), {**SPECS, "speed": ParamSpec(float, "", read_only=False)}, "n.yaml", "n")
