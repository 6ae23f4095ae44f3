"""Follows a simulated episode from the outside (EpisodeStatus + PolicyStatus) and reports it.

Used by `vla-ros demo`; it only listens, so it works against any running graph.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor

from vla_ros.config import topics
from vla_ros.nodes.qos import listener_qos, status_qos
from vla_ros_msgs.msg import EpisodeStatus, PolicyStatus

# also receives the bridge's latest status if it was sent before we matched
LATCHED = status_qos()
ANY = listener_qos()


class EpisodeMonitor:
    """Prints the instruction once, a progress line, and the outcome of the first episode that ends."""

    def __init__(self, output_dir: Path | None = None, show_progress: bool = True):
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("vla_ros_episode_monitor", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        t = topics()
        self.node.create_subscription(EpisodeStatus, t["episode_status"], self._on_episode, LATCHED)
        self.node.create_subscription(PolicyStatus, t["status"], self._on_policy, ANY)
        self.output_dir = output_dir
        self.show_progress = show_progress
        self.current: EpisodeStatus | None = None
        self.finished: EpisodeStatus | None = None
        self.policy: PolicyStatus | None = None
        self.episode_started: float | None = None
        self._created = time.time()
        self.episode_seconds = 0.0
        self._bar = None

    def _on_episode(self, msg: EpisodeStatus) -> None:
        if self.finished is not None:
            return
        if self.current is None or msg.episode_id != self.current.episode_id:
            if not msg.instruction or msg.done:
                return  # a stale status from before our episode
            self.episode_started = time.monotonic()
            print(f"[demo] episode {msg.episode_id}: {msg.suite} task {msg.task_id} init state "
                  f"{msg.init_state_id}\n[demo] instruction: {msg.instruction!r}", flush=True)
            if self.show_progress:
                from tqdm import tqdm

                self._bar = tqdm(total=msg.max_steps, desc="[demo] steps", unit="step", leave=True)
        self.current = msg
        if self._bar is not None and msg.step > self._bar.n:
            self._bar.update(msg.step - self._bar.n)
        if msg.done:
            self.finished = msg
            self.episode_seconds = time.monotonic() - (self.episode_started or time.monotonic())
            if self._bar is not None:
                self._bar.close()

    def _on_policy(self, msg: PolicyStatus) -> None:
        self.policy = msg

    def spin_once(self, timeout_s: float = 0.1) -> None:
        self.executor.spin_once(timeout_sec=timeout_s)

    def summary(self, total_seconds: float) -> str:
        ep = self.finished
        if ep is None:
            return "[demo] the episode did not finish"
        lines = [
            f"[demo] result: {'SUCCESS' if ep.success else 'failure'} ({ep.reason}) after {ep.step} steps "
            f"in {self.episode_seconds:.1f} s ({ep.step / max(self.episode_seconds, 1e-6):.1f} steps/s); "
            f"{total_seconds:.1f} s in all, start-up included",
        ]
        if self.policy is not None:
            lines.append(f"[demo] policy {self.policy.model_id}: mean inference "
                         f"{self.policy.mean_inference_ms:.1f} ms, {self.policy.actions_published} actions")
        video = self.recording()
        if video is not None:
            lines.append(f"[demo] policy camera: {video} (+ {video.with_suffix('.json').name})")
            sidecar = json.loads(video.with_suffix(".json").read_text())
            for key, label in (("viewer_video", "viewer video"), ("plot", "action plot")):
                if sidecar.get(key):
                    lines.append(f"[demo] {label}: {video.parent / sidecar[key]}")
                elif sidecar.get(f"{key}_error"):
                    lines.append(f"[demo] {label} failed: {sidecar[f'{key}_error']}")
        return "\n".join(lines)

    def recording(self) -> Path | None:
        """The finished mp4 of this run's episode (its JSON sidecar written), if any."""
        if self.output_dir is None:
            return None
        done = [p for p in Path(self.output_dir).glob("*.json")
                if not p.name.startswith(".") and p.stat().st_mtime >= self._created
                and p.with_suffix(".mp4").is_file()]
        return max(done, key=lambda p: p.stat().st_mtime).with_suffix(".mp4") if done else None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
