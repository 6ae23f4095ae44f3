"""Training-side code of vla_ros: datasets, statistics and (elsewhere) fine-tuning.

Imports neither rclpy nor LIBERO, so it runs on the lent GPU machine and in CI without the simulator.
"""
