"""Training's dataset tools: the compact transport to a GPU machine and ROS bag conversion.

The dataset layout itself (episode record, LIBERO-format HDF5, statistics) is a contract of the core:
:mod:`vla_ros.data`. Nothing here imports LIBERO or rclpy (bags are read through ``rosbags``, pure Python).
"""
