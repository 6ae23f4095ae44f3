"""Training-side code of vla_ros, installed as ``vla_ros.training``: datasets, training, fine-tuning, evaluation.

Imports neither rclpy nor a node module, so it runs on the lent GPU machine and in CI without ROS; the data
contracts it shares with the simulator and the nodes (episode record, dataset layout, statistics, episode
results) are in the core, :mod:`vla_ros.data`.
"""
