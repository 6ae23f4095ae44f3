"""The layers of docs/architecture.md, kept by parsing every import of the project's source.

Every ``import``/``from`` statement counts, at module level or inside a function: a lazy import is still a
dependency of the layer that writes it. The rules:

- the core (``vla_ros`` outside ``nodes/``) imports neither rclpy nor any ROS interface package, nor LIBERO or
  its simulator stack, nor ``vla_ros.sim``, ``vla_ros.training`` or ``vla_ros.nodes``;
- the simulator package (``sim_bridge/`` = ``vla_ros.sim``) imports only the core of the project, and no ROS;
- training (``training/`` = ``vla_ros.training``) imports no node module and no ROS, and not LIBERO directly;
- nothing imports the repository folders by their folder names (``sim_bridge``, ``training``).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from helpers import REPO

# Repository folder -> import name (setup.py's PACKAGE_FOLDERS).
FOLDERS = {"vla_ros": "vla_ros", "sim_bridge": "vla_ros.sim", "training": "vla_ros.training"}
ROS = ("rclpy", "rcl_interfaces", "std_msgs", "sensor_msgs", "geometry_msgs", "builtin_interfaces", "std_srvs",
       "diagnostic_msgs", "rosgraph_msgs", "lifecycle_msgs", "action_msgs", "vla_ros_msgs", "launch", "launch_ros")
SIMULATOR = ("libero", "robosuite", "mujoco", "bddl")


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    parts[0] = FOLDERS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from vla_ros import nodes` imports the subpackage too
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> str:
    if _under(module, ("vla_ros.nodes",)):
        return "nodes"
    if _under(module, ("vla_ros.sim",)):
        return "sim"
    if _under(module, ("vla_ros.training",)):
        return "training"
    return "core"


FORBIDDEN = {
    "core": (*ROS, *SIMULATOR, "vla_ros.sim", "vla_ros.training", "vla_ros.nodes"),
    "sim": (*ROS, "vla_ros.training", "vla_ros.nodes"),
    "training": (*ROS, *SIMULATOR, "vla_ros.nodes"),
    "nodes": (),
}
FOLDER_NAMES = ("sim_bridge", "training")  # importable only under vla_ros.*


def violations(root: Path) -> list[str]:
    out = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            module = module_name(path, root)
            layer = layer_of(module)
            for line, target in imports_of(path, module):
                bad = _under(target, FORBIDDEN[layer]) or _under(target, FOLDER_NAMES)
                if bad:
                    out.append(f"{path.relative_to(root)}:{line}: {layer} module {module} imports {target}")
    return out


def test_every_layer_keeps_to_its_imports():
    assert violations(REPO) == []


def test_the_checker_sees_every_layer_break(tmp_path):
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(tmp_path) == []
    breaks = {
        "vla_ros/conventions.py": "def f():\n    import rclpy\n",  # a lazy ROS import in the core
        "vla_ros/policy.py": "from vla_ros.nodes import qos\n",  # the core reaching up into the nodes
        "vla_ros/models/tokenization.py": "from ..sim import rollout\n",  # relative import of the simulator
        "sim_bridge/rollout.py": "from vla_ros.training.eval import main\n",  # simulator -> training
        "sim_bridge/expert.py": "import std_msgs.msg\n",  # simulator -> ROS
        "training/train.py": "from vla_ros.nodes.eval_client import GraphEvaluator\n",  # training -> a node module
        "training/loop.py": "import training.batching\n",  # a folder name as an import name
    }
    for rel, code in breaks.items():
        with (tmp_path / rel).open("a") as f:
            f.write("\n" + code)
    found = violations(tmp_path)
    for rel in breaks:
        assert any(v.startswith(rel + ":") for v in found), (rel, found)
    assert {v.split(":")[0] for v in found} == set(breaks), found


@pytest.mark.parametrize("module", ["vla_ros.sim", "vla_ros.training", "vla_ros.data", "vla_ros.nodes"])
def test_installed_import_names(module):
    """The folders of the design card install under the project's name (setup.py's package_dir)."""
    import importlib

    mod = importlib.import_module(module)
    folder = {"vla_ros.sim": "sim_bridge", "vla_ros.training": "training"}.get(module)
    if folder is not None:
        assert Path(mod.__file__).resolve() == (REPO / folder / "__init__.py").resolve()
