"""vla_ros: a Vision-Language-Action model in charge of a robot arm.

The package root and everything below it except ``vla_ros.nodes`` is ROS-free: it imports neither
rclpy nor LIBERO, so training, evaluation and benchmarks use it on machines that have neither.
"""

__version__ = "0.1.0"
