"""Finding and reading the YAML files under ``config/`` (topic names, node parameters).

The files are installed to ``share/vla_ros/config`` by colcon and live at the repo root in an
editable install; both routes read the same files through :func:`config_dir`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import yaml

_REPO_CONFIG = Path(__file__).resolve().parents[1] / "config"


def config_dir() -> Path:
    """Directory holding vla_ros's YAML config: $VLA_ROS_CONFIG_DIR, the source tree, or share/."""
    env = os.environ.get("VLA_ROS_CONFIG_DIR")
    if env:
        return Path(env)
    if (_REPO_CONFIG / "topics.yaml").is_file():
        return _REPO_CONFIG
    try:  # colcon install space
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("vla_ros")) / "config"
    except Exception as exc:  # pragma: no cover - only without both routes
        raise FileNotFoundError(
            "vla_ros config not found: set VLA_ROS_CONFIG_DIR or install the package"
        ) from exc


def config_path(name: str) -> Path:
    path = config_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"no config file {name!r} in {config_dir()}")
    return path


def load_yaml(name: str) -> dict:
    with open(config_path(name)) as f:
        return yaml.safe_load(f) or {}


@lru_cache(maxsize=1)
def topics() -> dict[str, str]:
    """Topic/service/action names from ``config/topics.yaml``."""
    return {str(k): str(v) for k, v in load_yaml("topics.yaml").items()}
