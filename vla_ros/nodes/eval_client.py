"""Evaluation through the ROS graph: start ``libero_sim`` (sim_bridge + vla_policy_node, lockstep), drive
episodes through the bridge's reset service and read ``EpisodeStatus`` until each is done.

The graph is resolved from ``config/graphs.yaml`` by :mod:`vla_ros.graph` and started by
:class:`vla_ros.launcher.GraphProcesses` (one process group per node) with an own ``ROS_DOMAIN_ID``, so
parallel evaluation workers never see each other. The bridge starts without an episode
(``reset_on_start: false``): every episode begins with a reset request, and its result is the bridge's final
status (the ground truth). The actions the bridge executed are rebuilt from the policy node's ``VlaAction``
messages (one per observation stamp, holds and re-publications dropped) with
``vla_ros.action_conversion.libero_action``, the function the in-process rollout executes its commands with, so
they compare one to one with in-process evaluation.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import rclpy
import yaml
from rclpy.executors import SingleThreadedExecutor

from vla_ros.action_conversion import libero_action
from vla_ros.config import topics
from vla_ros.conventions import get_action_space
from vla_ros.data.results import EpisodeResult
from vla_ros.graph import load_graph, resolve_graph
from vla_ros.launcher import GraphProcesses
from vla_ros.nodes.qos import command_qos, status_qos
from vla_ros.nodes.spin import SpinTimeoutError, spin_until
from vla_ros.training.eval import EvalError, progress
from vla_ros.training.eval import main as eval_main
from vla_ros_msgs.msg import EpisodeStatus, VlaAction
from vla_ros_msgs.srv import ResetEpisode

LATCHED = status_qos()
RELIABLE = command_qos(depth=100)


class GraphError(RuntimeError):
    """The graph failed to start, a node died, or an episode did not end in time."""


class GraphEvaluator:
    """A running ``libero_sim`` graph plus a client node; use as a context manager.

    ``launch_args`` are the graph's arguments (``suite``, ``task_id``, ``backend``, ``model``, ``adapter``,
    ``image_size``, ``max_steps``, ``record``, ...); ``bridge_params``/``policy_params`` override further node
    parameters (e.g. ``{"cameras": ["agentview"]}``, ``{"backend_options": "{mode: image_mean}"}``).
    """

    def __init__(self, launch_args: dict[str, str], *, domain_id: int | None = None,
                 bridge_params: dict | None = None, policy_params: dict | None = None,
                 log_path: str | os.PathLike | None = None, start_timeout_s: float = 300.0):
        self.domain_id = int(domain_id if domain_id is not None else os.environ.get("ROS_DOMAIN_ID", "0"))
        nodes = resolve_graph(load_graph("libero_sim"), {k: str(v) for k, v in launch_args.items()})
        for node in nodes:
            if node.executable == "sim_bridge_node":
                node.parameters.update({"reset_on_start": False, "auto_reset": False, **(bridge_params or {})})
            elif node.executable == "vla_policy_node":
                node.parameters.update(policy_params or {})
        self.nodes = nodes
        self.log_path = Path(log_path) if log_path else None
        self.start_timeout_s = start_timeout_s
        self.graph: GraphProcesses | None = None
        self._log = None
        self.context = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> GraphEvaluator:
        env = {"ROS_DOMAIN_ID": str(self.domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE":
               os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"),
               "FASTDDS_BUILTIN_TRANSPORTS": os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", "UDPv4"),
               "PYTHONUNBUFFERED": "1"}
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")
        self.graph = GraphProcesses(self.nodes, env=env, stdout=self._log)
        try:
            self.graph.start()
            self.context = rclpy.context.Context()
            rclpy.init(context=self.context, domain_id=self.domain_id)
            self.node = rclpy.create_node("vla_ros_eval_client", context=self.context)
            self.executor = SingleThreadedExecutor(context=self.context)
            self.executor.add_node(self.node)
            t = topics()
            self.status: list[EpisodeStatus] = []
            self.actions: list[VlaAction] = []
            self.node.create_subscription(EpisodeStatus, t["episode_status"], self.status.append, LATCHED)
            self.node.create_subscription(VlaAction, t["action"], self.actions.append, RELIABLE)
            self.reset_client = self.node.create_client(ResetEpisode, t["reset_service"])
            self._spin_until(self.reset_client.service_is_ready, self.start_timeout_s, "the bridge's reset service")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.context is not None:
            with contextlib.suppress(Exception):
                self.executor.shutdown()
                self.node.destroy_node()
            with contextlib.suppress(Exception):
                rclpy.shutdown(context=self.context)
            self.context = None
        if self.graph is not None:
            self.graph.stop(grace_s=15.0)
        if self._log is not None:
            self._log.close()
            self._log = None

    def alive(self) -> bool:
        return self.graph is not None and self.graph.poll_failure() is None

    def _spin_until(self, predicate, timeout_s: float, what: str) -> None:
        def graph_alive() -> None:
            failed = self.graph.poll_failure() if self.graph is not None else None
            if failed is not None:
                raise GraphError(f"node {failed[0].name} exited with code {failed[1]} while waiting for {what}"
                                 + (f" (log: {self.log_path})" if self.log_path else ""))

        try:
            spin_until(self.executor, predicate, timeout_s, what, check=graph_alive)
        except SpinTimeoutError as exc:
            raise GraphError(str(exc)) from None

    # ------------------------------------------------------------------ episodes
    def run_episode(self, suite: str, task_id: int, init_state_id: int, timeout_s: float = 1800.0
                    ) -> EpisodeResult:
        """Reset to (suite, task, init state), wait until the bridge reports the episode done."""
        t0 = time.monotonic()
        fut = self.reset_client.call_async(ResetEpisode.Request(suite=suite, task_id=int(task_id),
                                                                init_state_id=int(init_state_id)))
        self._spin_until(fut.done, self.start_timeout_s, "the reset response")
        resp = fut.result()
        if not resp.success:
            raise GraphError(f"reset to {suite} task {task_id} init {init_state_id} refused: {resp.message}")
        eid = int(resp.episode_id)

        def final() -> EpisodeStatus | None:
            return next((s for s in reversed(self.status) if s.episode_id == eid and s.done), None)

        self._spin_until(lambda: final() is not None, timeout_s, f"the end of episode {eid}")
        end = final()
        return EpisodeResult(suite=end.suite, task_id=int(end.task_id), init_state_id=int(end.init_state_id),
                             instruction=end.instruction or resp.instruction, success=bool(end.success),
                             steps=int(end.step), reason=end.reason, wall_s=time.monotonic() - t0, episode_id=eid,
                             actions=self.executed_actions(eid, int(end.step)))

    def executed_actions(self, episode_id: int, steps: int) -> list[list[float]]:
        """LIBERO actions of the episode's steps, rebuilt from the policy's answers (first answer per
        observation stamp; holds, finished markers and re-publications dropped)."""
        by_stamp: dict[tuple[int, int], VlaAction] = {}
        for m in self.actions:
            if m.episode_id != episode_id or m.hold or m.finished:
                continue
            by_stamp.setdefault((m.header.stamp.sec, m.header.stamp.nanosec), m)
        out = []
        for key in sorted(by_stamp)[:steps]:
            m = by_stamp[key]
            t = m.twist
            out.append([float(v) for v in libero_action(
                [t.linear.x, t.linear.y, t.linear.z], [t.angular.x, t.angular.y, t.angular.z], m.gripper,
                get_action_space(m.action_space))])
        self.actions[:] = [m for m in self.actions if m.episode_id != episode_id]
        return out


# ---------------------------------------------------------------------- the evaluation's ROS route

def checkpoint_extra_images(spec: dict) -> list[str]:
    """Cameras besides the main one that the node's model needs: from a native checkpoint's config.json
    (the graph loads the model in the node, not here); other backends get the wrist camera to be safe."""
    cfg = Path(spec["checkpoint"] or "") / "config.json"
    if spec["backend"] == "native" and cfg.is_file():
        return list(json.loads(cfg.read_text()).get("extra_images") or [])
    return ["wrist"]


def run_through_ros(spec: dict) -> list[dict]:
    """Worker: the libero_sim graph in this worker's ROS domain, one reset per job."""
    try:
        return _run_graphs(spec)
    except GraphError as exc:  # plain message across the process pool
        raise EvalError(str(exc)) from None


def _run_graphs(spec: dict) -> list[dict]:
    results: list[dict] = []
    jobs = spec["jobs"]
    record_dir = Path(spec["video_dir"]) / f".worker{spec['worker']}" if any(j[2] for j in jobs) else None
    try:
        # one graph per task: the graph's task argument also fixes what the bridge builds first
        for task_id in dict.fromkeys(j[0] for j in jobs):
            _run_task_graph(spec, task_id, record_dir, results)
    finally:
        if record_dir is not None:
            shutil.rmtree(record_dir, ignore_errors=True)
    return results


def _run_task_graph(spec: dict, task_id: int, record_dir: Path | None, results: list[dict]) -> None:
    """One ``libero_sim`` graph for ``task_id``: every job of that task, one reset each."""
    jobs = spec["jobs"]
    args = {"suite": spec["suite"], "task_id": task_id, "init_state_id": 0, "backend": spec["backend"],
            "model": spec["checkpoint"], "adapter": spec["adapter"] or "", "device": spec["device"] or "",
            "quantization": spec["quantization"] or "none", "step_mode": "lockstep",
            "image_size": spec["image_size"], "max_steps": spec["max_steps"],
            "record": str(record_dir) if record_dir else ""}
    # the viewer video and the plot are for people watching one episode: not worth their time in every one here
    bridge = {"cameras": ["agentview", *checkpoint_extra_images(spec)], "image_flip": spec["image_flip"],
              "seed": spec["seed"], "end_on_success": spec["end_on_success"], "record_viewer_size": 0,
              "record_plot": False}
    policy = {"backend_options": yaml.safe_dump(spec["backend_options"], default_flow_style=True).strip(),
              "center_crop": spec["center_crop"]}
    log = Path(spec["log_dir"]) / f"graph_worker{spec['worker']}_task{task_id:02d}.log"
    with GraphEvaluator(args, domain_id=spec["domain_id"], bridge_params=bridge, policy_params=policy,
                        log_path=log) as graph:
        for _, init_id, record in (j for j in jobs if j[0] == task_id):
            res = graph.run_episode(spec["suite"], task_id, init_id)
            if record_dir is not None:
                res.video = _keep_recording(record_dir, Path(spec["video_dir"]), res, record)
            results.append(res.to_dict(with_actions=spec["with_actions"]))
            progress(spec, res)


def _keep_recording(src: Path, dst: Path, res, keep: bool, timeout_s: float = 60.0) -> str | None:
    """The bridge records every episode of a graph that records, and closes the file just after publishing
    the final status: wait for its sidecar, keep the chosen episode's files, drop the others."""
    pattern = f"*_task{res.task_id:02d}_init{res.init_state_id:02d}_ep{res.episode_id:05d}_*"
    deadline = time.monotonic() + timeout_s
    while not list(src.glob(pattern + ".json")) and time.monotonic() < deadline:
        time.sleep(0.1)  # another process writes it; nothing to spin here
    video = None
    for f in sorted(src.glob(pattern)):
        if keep and not f.name.startswith("."):
            target = dst / f.name
            shutil.move(str(f), target)
            if target.suffix == ".mp4":
                video = str(target)
        else:
            f.unlink(missing_ok=True)
    return video


def main(argv: list[str] | None = None) -> int:
    """``vla-ros eval``: :func:`vla_ros.training.eval.main` with this layer's graph worker for ``--route ros``."""
    return eval_main(argv, graph_runner=run_through_ros)
