"""Test-wide settings: keep DDS on this machine and give each run its own ROS domain."""

from __future__ import annotations

import contextlib
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

# torchvision (imported by timm, hence by the models) pulls in torch._dynamo and triton; importing triton
# after MuJoCo has loaded Mesa's EGL in the same process segfaults (seen: test_sim_bridge.py then
# test_eval.py). Import it first, as the eval worker does by loading the policy before the env.
with contextlib.suppress(ImportError):  # without torch the core's tests fail on their own
    import torchvision  # noqa: F401
