"""Node graphs (config/graphs.yaml) resolved to concrete node invocations, ROS-free.

``ros2 launch vla_ros libero_sim.launch.py`` and the pip runner ``vla-ros launch libero_sim`` both call
:func:`resolve_graph`, so the arguments, executables, params files, parameter overrides and
remappings are the same on both routes; only the process starting differs. A params file given as a
launch argument is looked up in the working directory first, then in the package's config/
(:func:`find_params_file`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vla_ros.config import config_dir, load_yaml, topics

_ARG_REF = re.compile(r"^\$\((\w+)\)$")


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class GraphSpec:
    name: str
    description: str
    arguments: dict[str, LaunchArgument]
    nodes: list[dict]


@dataclass
class ResolvedNode:
    """One node to start: what ``launch_ros.actions.Node`` and the pip runner both need."""

    package: str
    executable: str
    name: str
    params_files: list[Path]
    parameters: dict = field(default_factory=dict)  # typed values (YAML semantics)
    remappings: list[tuple[str, str]] = field(default_factory=list)

    def ros_args(self) -> list[str]:
        """The ``--ros-args`` part of a command line starting this node."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        for f in self.params_files:
            args += ["--params-file", str(f)]
        for key, value in self.parameters.items():
            args += ["-p", f"{key}:={_yaml_scalar(value)}"]
        for src, dst in self.remappings:
            args += ["-r", f"{src}:={dst}"]
        return args


def _yaml_scalar(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def graph_names() -> list[str]:
    return sorted(load_yaml("graphs.yaml"))


def load_graph(name: str) -> GraphSpec:
    graphs = load_yaml("graphs.yaml")
    if name not in graphs:
        raise ValueError(f"unknown graph {name!r}; known: {sorted(graphs)}")
    g = graphs[name]
    args = {
        k: LaunchArgument(k, str(v.get("default", "")), str(v.get("description", "")),
                          tuple(str(c) for c in v["choices"]) if v.get("choices") else None)
        for k, v in (g.get("arguments") or {}).items()
    }
    return GraphSpec(name, str(g.get("description", "")), args, list(g.get("nodes") or []))


def parse_launch_args(tokens: list[str]) -> dict[str, str]:
    """``["suite:=libero_object", "task_id:=3"]`` -> dict, as ``ros2 launch`` takes them."""
    out = {}
    for tok in tokens:
        if ":=" not in tok:
            raise ValueError(f"launch arguments are name:=value, got {tok!r}")
        k, v = tok.split(":=", 1)
        out[k.strip()] = v
    return out


def _is_literal(entry) -> bool:
    """A params file named in graphs.yaml itself (not a launch argument's value)."""
    return isinstance(entry, str) and not _ARG_REF.match(entry.strip())


def find_params_file(name: str, user_given: bool) -> Path:
    """A params file as an absolute path.

    A file named by a launch argument (``config:=my_arm.yaml``) is the user's: an absolute path as it is,
    else relative to the working directory if it exists there, else in the package's config/ (so the
    shipped ``arm.yaml`` still works by its bare name). A file named in graphs.yaml itself is always the
    package's, so a stray ``policy_node.yaml`` in the working directory cannot replace the defaults.
    """
    path = Path(name).expanduser()
    if path.is_absolute():
        tried = [path]
    elif user_given:
        tried = [Path.cwd() / path, config_dir() / path]
    else:
        tried = [config_dir() / path]
    for candidate in tried:
        if candidate.is_file():
            return candidate.absolute()
    raise FileNotFoundError(f"params file {name!r} not found (looked at {', '.join(str(t) for t in tried)})")


def resolve_graph(graph: GraphSpec, values: dict[str, str]) -> list[ResolvedNode]:
    """Substitute argument values into the graph's nodes; unknown names and bad choices are errors."""
    unknown = set(values) - set(graph.arguments)
    if unknown:
        raise ValueError(f"unknown argument(s) {sorted(unknown)} for graph {graph.name!r}; "
                         f"known: {sorted(graph.arguments)}")
    final = {k: str(values.get(k, a.default)) for k, a in graph.arguments.items()}
    for k, a in graph.arguments.items():
        if a.choices and final[k] not in a.choices:
            raise ValueError(f"argument {k}:={final[k]!r} is not one of {list(a.choices)}")

    def value_of(spec):
        if isinstance(spec, dict) and "from" in spec:
            arg = final[spec["from"]]
            mapping = {str(k): v for k, v in spec["map"].items()}
            if arg not in mapping:
                raise ValueError(f"argument {spec['from']}:={arg!r} has no mapping; known: {list(mapping)}")
            return mapping[arg]
        if isinstance(spec, str):
            m = _ARG_REF.match(spec.strip())
            if m:
                raw = final[m.group(1)]
                # YAML typing as ros2 launch does; an empty string stays a string
                return "" if raw == "" else yaml.safe_load(raw)
            return spec
        return spec

    nodes = []
    topic_names = topics()
    for spec in graph.nodes:
        files = spec["params_file"] if isinstance(spec["params_file"], list) else [spec["params_file"]]
        paths = [find_params_file(str(value_of(entry)), user_given=not _is_literal(entry)) for entry in files]
        params = {k: value_of(v) for k, v in (spec.get("parameters") or {}).items()}
        remaps = []
        for key, target in (spec.get("remappings") or {}).items():
            if key not in topic_names:
                raise ValueError(f"remapping of unknown topic key {key!r}; known: {sorted(topic_names)}")
            new = value_of(target)
            if new not in ("", None) and str(new) != topic_names[key]:
                remaps.append((topic_names[key], str(new)))
        nodes.append(ResolvedNode(package=spec.get("package", "vla_ros"), executable=spec["executable"],
                                  name=spec.get("name", spec["executable"]), params_files=paths,
                                  parameters=params, remappings=remaps))
    return nodes
