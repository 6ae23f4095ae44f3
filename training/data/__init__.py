"""Datasets for vla_ros: LIBERO-format HDF5, OpenVLA-style statistics, compact transport, rosbag conversion.

Nothing here imports LIBERO or rclpy (the converters read MCAP bags through ``rosbags``, pure Python).
"""

from training.data.episode import DONE, OBS_KEYS, Episode

__all__ = ["DONE", "OBS_KEYS", "Episode"]
