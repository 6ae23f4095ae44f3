"""Model definitions of vla_ros (ROS-free). ``prismatic``: the native Prismatic/OpenVLA-style VLA."""
