"""`ros2 launch vla_ros libero_sim.launch.py`: the 'libero_sim' graph of config/graphs.yaml.

`ros2 launch vla_ros libero_sim.launch.py --show-args` lists its arguments; `vla-ros launch libero_sim` starts the
same graph without the ROS launch tools.
"""

from vla_ros.nodes.launch_description import graph_launch_description


def generate_launch_description():
    return graph_launch_description("libero_sim")
