"""ROS 2 nodes (need rclpy). Thin: parameters, topics, QoS, threading and safety; no model logic."""
