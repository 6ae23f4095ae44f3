"""The data contracts every layer shares (ROS-free, LIBERO-free).

- :mod:`vla_ros.data.episode`: one demonstration or rollout, the record the generator writes and training reads;
- :mod:`vla_ros.data.libero_hdf5`: the LIBERO-format HDF5 dataset layout (reader and writer);
- :mod:`vla_ros.data.statistics`: a dataset's action/proprio statistics (OpenVLA's dataset_statistics.json);
- :mod:`vla_ros.data.results`: ``EpisodeResult``, what an evaluated episode produced, on either route.
"""

from vla_ros.data.episode import DONE, OBS_KEYS, Episode

__all__ = ["DONE", "OBS_KEYS", "Episode"]
