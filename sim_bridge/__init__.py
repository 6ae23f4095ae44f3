"""LIBERO's side of the bridge, installed as ``vla_ros.sim`` (ROS-free; imports only the core).

The episode protocol (:mod:`vla_ros.sim.libero_env`), the bridge's stepping logic, the scripted expert, the
in-process rollout, DAgger and demonstration generation. The ROS 2 node that wraps it is
:mod:`vla_ros.nodes.sim_bridge_node` (``ros2 run vla_ros sim_bridge_node``); docs/architecture.md has the layers.
"""
