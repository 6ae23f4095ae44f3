"""Steps per second of one lockstep episode through the libero_sim graph vs the same policy in process.

The in-process rollout (``vla_ros.sim.rollout.run_episode``: env and policy in one process) times its two parts
per step: the simulator step (``LiberoEpisodeEnv.step``: physics + rendering of the policy's cameras) and the
policy's decision (``policy.act``). The graph run (sim_bridge_node + vla_policy_node as their own processes,
lockstep, started by ``vla_ros.nodes.eval_client.GraphEvaluator`` exactly as ``vla-ros eval --route ros`` does)
runs the same task, init state, seed, cameras and image size. The figure of merit is

    graph steps/s  /  (1 / (mean sim step + mean inference))      target: >= 0.90

Runs alternate (in-process, graph, in-process, graph, ...) so drift in the machine's load hits both. The graph's
environment is the demo's (one math thread per process, see ``vla_ros.nodes.demo``). Prints one JSON object;
docs/benchmarks.md has the results.

    python bench/bench_lockstep.py --repeats 2                       # the demo's episode, shipped model
    python bench/bench_lockstep.py --suite libero_object --task 3 --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "UDPv4")
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 90 + 5))
os.environ.setdefault("MUJOCO_GL", "egl")

REPO = Path(__file__).resolve().parents[1]


class Timed:
    """Wraps a callable and keeps the wall time of each call."""

    def __init__(self, fn):
        self.fn, self.times = fn, []

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.times.append(time.perf_counter() - t0)


def run_inprocess(args) -> dict:
    import torch

    from vla_ros.backends import load_policy
    from vla_ros.sim.libero_env import LiberoEpisodeEnv
    from vla_ros.sim.rollout import run_episode

    torch.set_num_threads(1)  # as the graph's processes run (OMP_NUM_THREADS=1)
    policy = load_policy("native", args.model, device="cpu")
    env = LiberoEpisodeEnv(args.suite, args.task, image_size=args.image_size,
                           cameras=("agentview", *policy.metadata.extra_images), max_steps=args.steps or None,
                           end_on_success=True, seed=args.seed)
    try:
        env.step = Timed(env.step)
        policy.act = Timed(policy.act)
        first_act = []
        act = policy.act

        def act_marking_the_first(*a, **k):
            first_act.append(time.perf_counter())
            return act(*a, **k)

        policy.act = act_marking_the_first
        t0 = time.perf_counter()
        run_episode(env, policy, args.init)  # warm-up episode, as in the graph run
        env.step.times.clear()
        act.times.clear()
        first_act.clear()
        t0 = time.perf_counter()
        res = run_episode(env, policy, args.init)
        wall = time.perf_counter() - t0
        steps = res.steps
        sim_ms = 1e3 * statistics.mean(env.step.times[-steps:])  # the reset's settle steps are not counted
        act_ms = 1e3 * statistics.mean(act.times)
        # stepping only, as for the graph: from the second decision (the graph's first status after a step)
        stepping_s = time.perf_counter() - first_act[1]
        return {"steps": steps, "reason": res.reason, "wall_s": round(wall, 2), "sim_step_ms": round(sim_ms, 1),
                "inference_ms": round(act_ms, 1), "stepping_steps_per_s": round((steps - 1) / stepping_s, 2),
                "parts_steps_per_s": round(1e3 / (sim_ms + act_ms), 2)}
    finally:
        env.close()
        policy.close()


def run_graph(args) -> dict:
    from vla_ros.nodes.eval_client import GraphEvaluator

    os.environ["OMP_NUM_THREADS"] = "1"  # as the demo sets it for its graph
    launch = {"suite": args.suite, "task_id": args.task, "init_state_id": args.init, "backend": "native",
              "model": args.model, "device": "cpu", "step_mode": "lockstep", "image_size": args.image_size,
              "max_steps": args.steps, "record": ""}
    with tempfile.TemporaryDirectory() as tmp, \
            GraphEvaluator(launch, bridge_params={"seed": args.seed}, log_path=Path(tmp) / "graph.log") as graph:
        from vla_ros.config import topics
        from vla_ros.nodes.eval_client import LATCHED
        from vla_ros_msgs.msg import EpisodeStatus

        seen: list[tuple[float, int, int]] = []  # (receipt time, episode, step) of every status
        graph.node.create_subscription(EpisodeStatus, topics()["episode_status"],
                                       lambda m: seen.append((time.perf_counter(), m.episode_id, m.step)), LATCHED)
        graph.run_episode(args.suite, args.task, args.init)  # the first episode warms the caches (first renders,
        before = {n.name: proc_stat(p.pid) for n, p in graph.graph.procs}  # first inference, lazy imports)
        res = graph.run_episode(args.suite, args.task, args.init)
        after = {n.name: proc_stat(p.pid) for n, p in graph.graph.procs}
    per_node = {name: {k: round(after[name][k] - before[name][k], 2) for k in before[name]} for name in before}
    # stepping only (the reset is not a step): from the status of step 1 to that of the last step
    # (a status may be missed between two spins: the first and last seen of the episode's steps count)
    times = {step: t for t, ep, step in seen if ep == res.episode_id and step >= 1}
    first, last = min(times), max(times)
    return {"steps": res.steps, "reason": res.reason, "wall_s": round(res.wall_s, 2),
            "stepping_steps_per_s": round((last - first) / (times[last] - times[first]), 2), "per_node": per_node}


def proc_stat(pid: int) -> dict[str, float]:
    """CPU seconds (user, system) and page faults (minor, major) of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return {"user_s": int(fields[11]) / tick, "system_s": int(fields[12]) / tick,
            "minor_faults": int(fields[7]), "major_faults": int(fields[9])}


def main(argv: list[str] | None = None) -> int:
    from vla_ros.shipped import bundled_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="libero_spatial")
    p.add_argument("--task", type=int, default=5)
    p.add_argument("--init", type=int, default=0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=0, help="step limit (0: the suite's)")
    p.add_argument("--model", default="", help="checkpoint (default: the suite's shipped one)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--route", choices=["both", "inprocess", "ros"], default="both")
    args = p.parse_args(argv)
    args.model = args.model or str(bundled_model(args.suite))
    runs: dict[str, list[dict]] = {"inprocess": [], "ros": []}
    for _ in range(args.repeats):
        if args.route in ("both", "inprocess"):
            runs["inprocess"].append(run_inprocess(args))
            print(f"[bench] in-process: {runs['inprocess'][-1]}", file=sys.stderr, flush=True)
        if args.route in ("both", "ros"):
            runs["ros"].append(run_graph(args))
            print(f"[bench] graph: {runs['ros'][-1]}", file=sys.stderr, flush=True)
    out: dict = {"args": vars(args), "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                  "load_avg": os.getloadavg()},
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **runs}
    if runs["inprocess"] and runs["ros"]:
        parts = statistics.mean(r["parts_steps_per_s"] for r in runs["inprocess"])
        graph = statistics.mean(r["stepping_steps_per_s"] for r in runs["ros"])
        inproc = statistics.mean(r["stepping_steps_per_s"] for r in runs["inprocess"])
        out["graph_vs_parts"] = round(graph / parts, 3)
        out["graph_vs_inprocess"] = round(graph / inproc, 3)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
