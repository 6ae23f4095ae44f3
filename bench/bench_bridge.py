"""Steps per second of sim_bridge_node in lockstep with an instant policy vs the bare LIBERO env, same run.

The bare env (``LiberoEpisodeEnv`` stepped in a process of its own) and the bridge (``sim_bridge_node`` as its
own process, answered by an instant policy in this process, as in a real graph) run the same task, init state,
cameras, image size, render setting and action sequence. Runs alternate (bare, bridge, bare, bridge, ...)
so drift in the machine's load hits both. Prints one JSON object; docs/benchmarks.md has the results.

    python bench/bench_bridge.py --steps 200 --image-size 256 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "UDPv4")
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 90 + 5))
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def actions(n: int) -> np.ndarray:
    """A gentle, deterministic motion (circles in x/y, gripper open) that stays inside the workspace."""
    t = np.arange(n) * 0.05
    a = np.zeros((n, 7))
    a[:, 0] = 0.3 * np.sin(2 * np.pi * 0.5 * t)
    a[:, 1] = 0.3 * np.cos(2 * np.pi * 0.5 * t)
    a[:, 6] = -1.0
    return a


def bench_bare(args, seq: np.ndarray) -> float:
    from vla_ros.sim.libero_env import LiberoEpisodeEnv

    env = LiberoEpisodeEnv(args.suite, args.task, image_size=args.image_size, cameras=tuple(args.cameras),
                           fast_render=args.fast_render, max_steps=len(seq) + 10)
    try:
        env.reset(args.init)
        t0 = time.perf_counter()
        for a in seq:
            env.step(a)
        return len(seq) / (time.perf_counter() - t0)
    finally:
        env.close()


def bench_bare_process(args, argv: list[str]) -> float:
    """The bare env in a fresh process of its own, like the bridge: same imports, same warm-up."""
    res = subprocess.run([sys.executable, __file__, *argv, "--bare-only"], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def bench_bridge(args, seq: np.ndarray, log_dir: Path) -> tuple[float, dict]:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from vla_ros.nodes.sim_client import BridgeClient

    exe = shutil.which("sim_bridge_node", path=str(Path(sys.executable).parent)) or "sim_bridge_node"
    cams = "[" + ",".join(args.cameras) + "]"
    cmd = [exe, "--ros-args", "--params-file", str(REPO / "config" / "sim_bridge.yaml"),
           "-p", f"suite:={args.suite}", "-p", f"task_id:={args.task}", "-p", f"init_state_id:={args.init}",
           "-p", f"image_size:={args.image_size}", "-p", f"cameras:={cams}",
           "-p", f"fast_render:={str(args.fast_render).lower()}", "-p", f"max_steps:={len(seq) + 10}",
           "-p", "policy_timeout_s:=0.0", "-p", "publish_instruction:=false"]
    log = open(log_dir / "bridge.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    from diagnostic_msgs.msg import DiagnosticArray

    client = BridgeClient(ctx, ex, name="bench_instant_policy")
    diags: list[dict] = []
    client.node.create_subscription(DiagnosticArray, "/diagnostics",
                                    lambda m: diags.extend({kv.key: kv.value for kv in s.values} for s in m.status), 10)
    try:
        client.spin_until(lambda: client.status, "the bridge's first episode", timeout=300)
        client.wait_connected()
        t0 = time.perf_counter()
        for i, a in enumerate(seq):
            client.step(a)  # answers the current observation at once, waits for the next
            if i % 20 == 0:  # keep the client's memory flat
                for lst in (client.images, client.wrist, client.poses, client.joints):
                    lst.clear()
                del client.status[:-1]
        rate = len(seq) / (time.perf_counter() - t0)
        # The bridge's own split of a step: LIBERO (physics + render) vs publishing (one diagnostics period).
        client.spin_until(lambda: diags and diags[-1].get("stepped") == str(len(seq)), "diagnostics", timeout=30)
        split = {k: float(diags[-1][k]) for k in ("env_step_ms_mean", "bridge_publish_ms_mean")}
        return rate, split
    finally:
        client.close()
        ex.shutdown()
        rclpy.shutdown(context=ctx)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="libero_spatial")
    ap.add_argument("--task", type=int, default=0)
    ap.add_argument("--init", type=int, default=0)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--cameras", nargs="+", default=["agentview", "wrist"])
    ap.add_argument("--fast-render", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bare-only", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    seq = actions(args.steps)
    if args.bare_only:
        print(bench_bare(args, seq))
        return 0
    bare, bridge, splits = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            bare.append(bench_bare_process(args, argv))
            rate, split = bench_bridge(args, seq, Path(tmp))
            bridge.append(rate)
            splits.append(split)
            print(f"bare {bare[-1]:.2f} steps/s, bridge {bridge[-1]:.2f} steps/s", file=sys.stderr, flush=True)
    from importlib.metadata import version

    import mujoco

    b, r = statistics.mean(bare), statistics.mean(bridge)
    out = {
        "suite": args.suite, "task": args.task, "init": args.init, "steps": args.steps,
        "image_size": args.image_size, "cameras": args.cameras, "fast_render": args.fast_render,
        "bare_steps_per_s": [round(x, 2) for x in bare], "bridge_steps_per_s": [round(x, 2) for x in bridge],
        "bare_mean": round(b, 2), "bridge_mean": round(r, 2), "bridge_overhead_pct": round(100 * (b / r - 1), 1),
        "bridge_env_step_ms": [s["env_step_ms_mean"] for s in splits],
        "bridge_publish_ms": [s["bridge_publish_ms_mean"] for s in splits],
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
        "mujoco": mujoco.__version__, "robosuite": version("robosuite"), "rclpy": version("ros-rclpy"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
