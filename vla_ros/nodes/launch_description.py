"""Turns a graph of config/graphs.yaml into a ``launch`` description (needs ROS 2's launch packages).

Both launch files call :func:`graph_launch_description`; the pip runner resolves the same graph with
the same :func:`vla_ros.graph.resolve_graph`, so the two routes cannot drift apart.
"""

from __future__ import annotations

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vla_ros.graph import load_graph, resolve_graph


def graph_launch_description(graph_name: str) -> LaunchDescription:
    graph = load_graph(graph_name)

    def nodes(context, *_args, **_kwargs):
        values = {name: LaunchConfiguration(name).perform(context) for name in graph.arguments}
        return [
            Node(package=n.package, executable=n.executable, name=n.name, output="screen",
                 parameters=[*(str(f) for f in n.params_files), n.parameters], remappings=n.remappings)
            for n in resolve_graph(graph, values)
        ]

    declared = []
    for a in graph.arguments.values():
        kwargs = {"default_value": a.default, "description": a.description}
        if a.choices:
            kwargs["choices"] = list(a.choices)
        declared.append(DeclareLaunchArgument(a.name, **kwargs))
    return LaunchDescription([*declared, OpaqueFunction(function=nodes)])
