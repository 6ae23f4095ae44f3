"""Latency vla_policy_node adds: image publish -> VlaAction receipt, minus the model's own time.

Separate processes, as deployed: vla_policy_node (console script, lockstep, debug backend = an instant
policy) runs in its own process; this process publishes one camera frame, waits for the answer
stamped with that frame's stamp, and publishes the next (one observation in flight, as the simulator
bridge does). The model's own time is the node's ``mean_inference_ms`` (PolicyStatus). For context the
same loop runs against a bare echo process that answers each Image with a VlaAction without decoding
it: the DDS + rclpy transport floor both carry.

    python bench/bench_node.py --samples 500 --size 256
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _ros_env() -> None:
    """Loopback discovery, our own domain, UDP only (CONVENTIONS.md); before rclpy is imported."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = "UDPv4"
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(102, 160)))


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def echo_main() -> int:
    """The transport baseline: answer every Image with a VlaAction carrying its stamp, nothing else."""
    import rclpy
    from sensor_msgs.msg import Image

    from vla_ros.config import topics
    from vla_ros.nodes.qos import command_qos, image_qos
    from vla_ros_msgs.msg import VlaAction

    rclpy.init()
    node = rclpy.create_node("bench_echo")
    pub = node.create_publisher(VlaAction, topics()["action"], command_qos())

    def answer(img: Image) -> None:
        out = VlaAction()
        out.header.stamp = img.header.stamp
        pub.publish(out)

    node.create_subscription(Image, topics()["camera_image"], answer, image_qos())
    with contextlib.suppress(KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        rclpy.spin(node)
    rclpy.try_shutdown()
    return 0


def _measure(samples: int, warmup: int, size: int, want_status: bool) -> dict:
    import numpy as np
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from vla_ros.config import topics
    from vla_ros.image_codec import fill_image_msg
    from vla_ros.nodes.qos import command_qos, image_qos
    from vla_ros_msgs.msg import PolicyStatus, VlaAction

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("bench_client", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    t = topics()
    received: dict[int, int] = {}
    statuses: list[PolicyStatus] = []

    def on_action(msg: VlaAction) -> None:
        if not msg.hold:
            received.setdefault(msg.header.stamp.sec, time.perf_counter_ns())

    node.create_subscription(VlaAction, t["action"], on_action, command_qos())
    node.create_subscription(PolicyStatus, t["status"], statuses.append, command_qos())
    pub_img = node.create_publisher(Image, t["camera_image"], image_qos())
    pub_ins = node.create_publisher(String, t["instruction"], command_qos())
    try:
        deadline = time.monotonic() + 60
        while not (pub_img.get_subscription_count() and node.count_publishers(t["action"])
                   and (not want_status or statuses)):
            if time.monotonic() > deadline:
                raise RuntimeError("the node under test never came up")
            ex.spin_once(timeout_sec=0.1)
        if want_status:  # instruction until it sticks (the node holds without one)
            while not statuses[-1].instruction:
                pub_ins.publish(String(data="put the black bowl on the plate"))
                ex.spin_once(timeout_sec=0.2)
        rgb = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
        msg = fill_image_msg(Image(), rgb)
        lat_us, resent = [], 0
        for i in range(1, warmup + samples + 1):
            msg.header.stamp.sec = i
            t0 = time.perf_counter_ns()
            pub_img.publish(msg)
            while i not in received:
                ex.spin_once(timeout_sec=0.5)
                if i not in received and time.perf_counter_ns() - t0 > 2e9:  # lost (best effort): send again
                    resent += 1
                    t0 = time.perf_counter_ns()
                    pub_img.publish(msg)
            if i > warmup:
                lat_us.append((received[i] - t0) / 1e3)
        model_ms = 0.0
        if want_status:
            n = len(statuses)
            while len(statuses) <= n + 1:  # a status issued after the last sample
                ex.spin_once(timeout_sec=0.5)
            model_ms = statuses[-1].mean_inference_ms
        lat = np.asarray(lat_us)
        added = lat - model_ms * 1e3
        return {"samples": samples, "resent": resent, "image": f"{size}x{size} rgb8",
                "e2e_median_ms": float(np.median(lat)) / 1e3, "e2e_p90_ms": float(np.percentile(lat, 90)) / 1e3,
                "e2e_p99_ms": float(np.percentile(lat, 99)) / 1e3, "model_mean_ms": model_ms,
                "added_median_ms": float(np.median(added)) / 1e3,
                "added_p90_ms": float(np.percentile(added, 90)) / 1e3}
    finally:
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--size", type=int, default=256, help="square image side (LIBERO renders 256 for OpenVLA)")
    ap.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)  # internal: the baseline process
    args = ap.parse_args(argv)
    _ros_env()
    if args.echo:
        return echo_main()
    node_exe = str(Path(sys.executable).parent / "vla_policy_node")
    runs = {
        "vla_policy_node": [node_exe, "--ros-args", "--params-file", str(REPO / "config/policy_node.yaml"),
                            "-p", "backend:=debug", "-p", "lockstep:=true", "-p", "status_rate_hz:=10.0"],
        "echo baseline": [sys.executable, str(Path(__file__).resolve()), "--echo"],
    }
    results = {}
    for name, cmd in runs.items():
        proc = _start(cmd)
        try:
            results[name] = _measure(args.samples, args.warmup, args.size, want_status=name == "vla_policy_node")
        finally:
            _stop(proc)
        if proc.returncode not in (0, -signal.SIGINT):
            print(proc.stderr.read(), file=sys.stderr)

    info = {"python": platform.python_version(), "rclpy": _version("ros-rclpy"), "numpy": _version("numpy"),
            "cpu": _cpu(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "rmw": os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp (default)")}
    print(json.dumps({"env": info, "results": results}, indent=2))
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _cpu() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
