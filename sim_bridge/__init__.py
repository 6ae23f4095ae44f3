"""LIBERO as a ROS 2 node. ``sim_bridge.libero_env`` is ROS-free (bridge and in-process eval share it);
``sim_bridge.bridge_node`` is the node."""
