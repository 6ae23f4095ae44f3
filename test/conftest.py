"""Test-wide settings: keep DDS on this machine and give each run its own ROS domain."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Loopback-only discovery, a domain of this run's own (offset per xdist worker), and UDP only
# (killed processes otherwise leave stale shared-memory files). Set before rclpy is imported.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = "UDPv4"
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").lstrip("gw") or "0"
if "VLA_ROS_TEST_DOMAIN" not in os.environ:
    os.environ["VLA_ROS_TEST_DOMAIN"] = str(1 + (os.getpid() % 80) + int(_worker) % 20)
os.environ["ROS_DOMAIN_ID"] = os.environ["VLA_ROS_TEST_DOMAIN"]
os.environ.setdefault("MUJOCO_GL", "egl")

sys.path.insert(0, str(Path(__file__).parent))
