"""``vla-ros eval``: evaluate a checkpoint on a LIBERO suite with OpenVLA's protocol, in-process or through
the ROS graph.

Protocol (OpenVLA's ``experiments/robot/libero/run_libero_eval.py``): flipped camera images, the checkpoint's
gripper convention, 10 settle steps, the suite's step limit, the suite's fixed init states ``0..N-1`` for N
episodes per task, one seed. Both routes share the LIBERO episode module (``vla_ros.sim.libero_env``) and the
node's action shaping, so for one seed they give the same actions and outcomes:

- ``--route inprocess``: ``vla_ros.sim.rollout`` runs env and policy in one process per worker;
- ``--route ros``: each worker starts the ``libero_sim`` graph (sim_bridge + vla_policy_node, lockstep) in its
  own ``ROS_DOMAIN_ID`` and drives it through the reset service (``vla_ros.nodes.eval_client``, the ROS layer,
  which runs this command as ``vla-ros eval`` and hands its graph worker in).

Writes ``<out>/report.json`` (per-task and mean success with Wilson 95% intervals, mean steps, how episodes
and successes ended: success check / policy ``done`` / step limit) and mp4s of the chosen episodes.

    vla-ros eval --checkpoint runs/tiny --suite libero_spatial --episodes-per-task 10 --workers 2 --out runs/eval
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import active_children, get_context
from pathlib import Path

import numpy as np
import yaml

from vla_ros.conventions import DEFAULT_IMAGE_FLIP, IMAGE_FLIPS, LIBERO_SUITES, SIM_IMAGE_SIZE
from vla_ros.training.eval_report import build_report, format_report

# A worker's episodes through the ROS graph: spec -> list of EpisodeResult dictionaries.
GraphRunner = Callable[[dict], list]


class EvalError(RuntimeError):
    """The evaluation could not run (a graph node died, a reset was refused); the message says why."""


LIBERO_TASKS_PER_SUITE = {"libero_90": 90}  # every other suite has 10 tasks
MAX_DOMAIN_ID = 101  # CONVENTIONS.md: ROS_DOMAIN_ID 1..101


def parse_tasks(spec: str, suite: str) -> list[int]:
    n = LIBERO_TASKS_PER_SUITE.get(suite, 10)
    if spec.strip() == "all":
        return list(range(n))
    out = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            a, b = (int(x) for x in part.split("-", 1))
            out.extend(range(a, b + 1))
        elif part:
            out.append(int(part))
    bad = [t for t in out if not 0 <= t < n]
    if bad or not out:
        raise ValueError(f"task ids {bad or spec!r} not in 0..{n - 1} for {suite}")
    return sorted(set(out))


def plan_workers(tasks: list[int], episodes: int, record: int, workers: int) -> list[list[tuple[int, int, bool]]]:
    """Split the (task, init state, record?) jobs over workers; a task's episodes stay together where possible
    (one env per task and worker), and are split across workers only when there are fewer tasks than workers."""
    jobs = [(t, i, i < record) for t in tasks for i in range(episodes)]
    workers = max(1, min(workers, len(jobs)))
    if len(tasks) >= workers:
        groups: list[list[tuple[int, int, bool]]] = [[] for _ in range(workers)]
        for k, t in enumerate(tasks):
            groups[k % workers].extend(j for j in jobs if j[0] == t)
        return groups
    return [jobs[k::workers] for k in range(workers)]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # the debug backend needs no torch
        pass


def _policy_options(spec: dict) -> dict:
    opts = dict(spec["backend_options"])
    if spec["center_crop"] != "checkpoint":  # as vla_policy_node passes its center_crop parameter
        opts["center_crop"] = spec["center_crop"] == "on"
    for key in ("device", "adapter", "quantization"):
        if spec.get(key):
            opts[key] = spec[key]
    return opts


def run_inprocess(spec: dict) -> list[dict]:
    """Worker: one env per task, one policy, the jobs in order (imports LIBERO, so only in a worker)."""
    from vla_ros.backends import load_policy
    from vla_ros.sim.libero_env import LiberoEpisodeEnv
    from vla_ros.sim.rollout import run_episode

    _seed_everything(spec["seed"])
    policy = load_policy(spec["backend"], spec["checkpoint"] or None, **_policy_options(spec))
    if policy.metadata.image_flip != spec["image_flip"]:  # the node warns the same way on the bridge's status
        print(f"[eval worker {spec['worker']}] warning: images are flipped with {spec['image_flip']!r} but the "
              f"checkpoint was trained with {policy.metadata.image_flip!r}: actions will be wrong", flush=True)
    results, env = [], None
    try:
        for n, (task_id, init_id, record) in enumerate(spec["jobs"]):
            if env is None or env.task_id != task_id:
                if env is not None:
                    env.close()
                cameras = ("agentview", *policy.metadata.extra_images)
                env = LiberoEpisodeEnv(spec["suite"], task_id, image_size=spec["image_size"], cameras=cameras,
                                       image_flip=spec["image_flip"], max_steps=spec["max_steps"] or None,
                                       end_on_success=spec["end_on_success"], seed=spec["seed"])
            res = run_episode(env, policy, init_id, record_dir=spec["video_dir"] if record else None,
                              episode_id=n + 1)
            results.append(res.to_dict(with_actions=spec["with_actions"]))
            progress(spec, res)
    finally:
        if env is not None:
            env.close()
        policy.close()
    return results


def progress(spec: dict, res) -> None:
    """One line per finished episode (both routes)."""
    print(f"[eval worker {spec['worker']}] task {res.task_id} init {res.init_state_id}: "
          f"{'success' if res.success else 'failure'} ({res.reason}) after {res.steps} steps, {res.wall_s:.1f} s",
          flush=True)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the evaluation stops, its graphs with it."""

    def __init__(self, signum: int):
        super().__init__(signum)  # the one argument, so that it pickles across the process pool
        self.signum = signum

    def __str__(self) -> str:
        return f"signal {self.signum}"


def _stop_on_signal(signum: int, _frame) -> None:
    """SIGTERM (``kill``, ``timeout``, a job scheduler) ends an evaluation the way Ctrl-C does, so that the
    ``finally`` blocks stop the graphs' nodes (they run in sessions of their own and see no terminal signal).
    Later signals are ignored: a second one must not cut that clean-up short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Interrupted(signum)


def _pool_worker(spec: dict) -> list[dict]:
    """A worker process of the pool: its own interpreter, so its own signal handling."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_on_signal)
    return _worker(spec)


def _worker(spec: dict) -> list[dict]:
    if spec["route"] == "ros":
        os.environ["ROS_DOMAIN_ID"] = str(spec["domain_id"])
        return spec["graph_runner"](spec)
    return run_inprocess(spec)


def make_specs(a: argparse.Namespace, video_dir: Path, graph_runner: GraphRunner | None = None) -> list[dict]:
    """One picklable work description per worker; through ROS, worker k uses ROS_DOMAIN_ID base + k (in 1..101).

    ``graph_runner`` runs a worker's episodes through the ROS graph (route ``ros``); it is a module-level function
    of the ROS layer, so it pickles by name into spawned workers (``vla_ros.nodes.eval_client.run_through_ros``).
    """
    if a.route == "ros" and graph_runner is None:
        raise ValueError("--route ros runs through the ROS layer: use `vla-ros eval` (vla_ros.nodes.eval_client)")
    tasks = parse_tasks(a.tasks, a.suite)
    groups = plan_workers(tasks, a.episodes_per_task, a.record_episodes, a.workers)
    base_domain = int(a.domain_id if a.domain_id is not None else os.environ.get("ROS_DOMAIN_ID", "1") or 1)
    backend_options = yaml.safe_load(a.backend_options) or {}
    if not isinstance(backend_options, dict):
        raise ValueError(f"--backend-options must be a YAML mapping, got {a.backend_options!r}")
    return [{"route": a.route, "worker": k, "jobs": g, "suite": a.suite, "backend": a.backend,
             "checkpoint": a.checkpoint, "adapter": a.adapter, "device": a.device, "quantization": a.quantization,
             "backend_options": backend_options, "seed": a.seed, "image_size": a.image_size,
             "image_flip": a.image_flip, "center_crop": a.center_crop, "max_steps": a.max_steps,
             "end_on_success": not a.no_end_on_success,
             "video_dir": str(video_dir), "log_dir": str(a.out), "with_actions": a.save_actions,
             "domain_id": 1 + (base_domain - 1 + k) % MAX_DOMAIN_ID, "graph_runner": graph_runner}
            for k, g in enumerate(groups)]


def evaluate(a: argparse.Namespace, graph_runner: GraphRunner | None = None) -> dict:
    """Run the evaluation described by the parsed arguments; returns (and writes) the report."""
    out = Path(a.out)
    video_dir = out / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    specs = make_specs(a, video_dir, graph_runner)
    t0 = time.monotonic()
    if len(specs) == 1:
        episodes = _worker(specs[0])
    else:  # spawn: each worker its own interpreter, env, policy and (through ROS) DDS participant
        pool = ProcessPoolExecutor(len(specs), mp_context=get_context("spawn"))
        try:
            episodes = [e for part in pool.map(_pool_worker, specs) for e in part]
        except BaseException:
            # a worker failed or we were interrupted: stop the others now rather than after their last episode;
            # SIGTERM makes each stop its graph first (_stop_on_signal)
            workers = active_children()
            for w in workers:
                w.terminate()
            for w in workers:
                w.join(30)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    config.update(tasks=parse_tasks(a.tasks, a.suite), workers=len(specs), wall_s=round(time.monotonic() - t0, 1),
                  protocol="OpenVLA run_libero_eval: flipped images, 10 settle steps, suite step limit, "
                           "fixed init states 0..N-1")
    report = build_report(episodes, config)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vla-ros eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="", help="policy checkpoint directory (backend-specific)")
    p.add_argument("--backend", default="native", help="policy backend (native, hf, remote, debug)")
    p.add_argument("--adapter", default="", help="LoRA adapter directory")
    p.add_argument("--device", default="", help="torch device (empty: the backend's default)")
    p.add_argument("--quantization", default="", help="none, 8bit, 4bit (empty: the backend's default)")
    p.add_argument("--backend-options", default="{}", help="YAML mapping of further backend options")
    p.add_argument("--suite", default="libero_spatial", choices=list(LIBERO_SUITES))
    p.add_argument("--tasks", default="all", help="all, or ids like 0,2,5-7")
    p.add_argument("--episodes-per-task", type=int, default=50, help="init states 0..N-1 of each task")
    p.add_argument("--seed", type=int, default=7, help="simulator and policy seed (OpenVLA's default is 7)")
    p.add_argument("--max-steps", type=int, default=0, help="step limit (0: the suite's limit)")
    p.add_argument("--image-size", type=int, default=SIM_IMAGE_SIZE, help="rendered camera size")
    p.add_argument("--image-flip", default=DEFAULT_IMAGE_FLIP, choices=list(IMAGE_FLIPS))
    p.add_argument("--center-crop", default="checkpoint", choices=["checkpoint", "on", "off"],
                   help="OpenVLA's 90%% centre crop (checkpoint: as the checkpoint records it)")
    p.add_argument("--no-end-on-success", action="store_true",
                   help="do not end at the success check (measures the policy's own episode end)")
    p.add_argument("--route", default="inprocess", choices=["inprocess", "ros"])
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (each its own env)")
    p.add_argument("--domain-id", type=int, default=None, help="first worker's ROS_DOMAIN_ID (route ros)")
    p.add_argument("--record-episodes", type=int, default=1, help="record mp4s of the first N episodes per task")
    p.add_argument("--save-actions", action="store_true", help="store every executed action in the report")
    p.add_argument("--out", required=True, type=Path, help="output directory (report.json, videos/)")
    return p


def main(argv: list[str] | None = None, graph_runner: GraphRunner | None = None) -> int:
    """The evaluation command. Route ``ros`` needs ``graph_runner`` (``vla-ros eval`` passes the ROS layer's);
    this package imports no node module (docs/architecture.md)."""
    a = parser().parse_args(argv)
    if a.episodes_per_task < 1 or a.workers < 1:
        print("vla-ros eval: --episodes-per-task and --workers must be >= 1", file=sys.stderr)
        return 2
    if a.backend != "debug" and not a.checkpoint:
        print(f"vla-ros eval: backend {a.backend!r} needs --checkpoint", file=sys.stderr)
        return 2
    handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous = {sig: signal.signal(sig, _stop_on_signal) for sig in handled}
    try:
        report = evaluate(a, graph_runner)
    except Interrupted as exc:
        print(f"vla-ros eval: stopped by signal {exc.signum}; no report written", file=sys.stderr)
        return 128 + exc.signum
    except ValueError as exc:
        print(f"vla-ros eval: {exc}", file=sys.stderr)
        return 2
    except EvalError as exc:
        print(f"vla-ros eval: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(format_report(report))
    print(f"report: {Path(a.out) / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
