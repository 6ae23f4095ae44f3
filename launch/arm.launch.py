"""`ros2 launch vla_ros arm.launch.py`: the 'arm' graph of config/graphs.yaml.

`ros2 launch vla_ros arm.launch.py --show-args` lists its arguments; `vla-ros launch arm` starts the
same graph without the ROS launch tools. Both resolve `config:=my_arm.yaml` alike
(vla_ros.graph.find_params_file): an absolute path as it is, else the working directory first, then the
package's config/.
"""

from vla_ros.nodes.launch_description import graph_launch_description


def generate_launch_description():
    return graph_launch_description("arm")
