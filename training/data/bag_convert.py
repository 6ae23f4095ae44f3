"""Convert a recorded rosbag2 (MCAP or SQLite) to the LIBERO-format dataset; ROS-free (``rosbags``, pure Python).

One step per non-hold ``VlaAction``; its observation is the camera frame the action answers (same header
stamp, as the policy node stamps its actions) or else the newest frame received before it, plus the
newest wrist frame, joint state and end-effector pose. Episodes split where ``episode_id`` or the
instruction changes. Message types are read from the bag itself (``AnyReader``), so no ROS install
and no vla_ros_msgs build are needed here.

Actions are converted message -> LIBERO controller units with ``vla_ros.action_conversion.command_to_libero``
(the one definition; binary gripper -1 open / +1 close, like LIBERO's datasets). Images are stored raw
like LIBERO's: ``source_flip`` undoes the flip the publisher applied (``rot180`` for the sim bridge's
default; real cameras publish upright images: use ``none`` and train such data with ``image_flip: none``,
since rot180 is a mirror of the true view).
"""

from __future__ import annotations

import argparse
import bisect
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla_ros.data.episode import Episode, quat_xyzw_to_axis_angle
from vla_ros.action_conversion import command_to_libero
from vla_ros.conventions import LIBERO_ACTION_SPACE, flip_image, get_action_space
from vla_ros.image_codec import ImageDecodeError, image_msg_to_rgb

log = logging.getLogger(__name__)


@dataclass
class BagTopics:
    """Topic names to read; :meth:`from_config` gives the graph's (``config/topics.yaml``)."""

    camera: str
    wrist: str
    instruction: str
    action: str
    joint_states: str
    ee_pose: str

    @classmethod
    def from_config(cls) -> BagTopics:
        from vla_ros.config import topics  # yaml only; no ROS import

        t = topics()
        return cls(camera=t["camera_image"], wrist=t["wrist_image"], instruction=t["instruction"],
                   action=t["action"], joint_states=t["joint_states"], ee_pose=t["ee_pose"])


@dataclass
class _Stream:
    """Messages of one topic in log-time order, searchable by time and by header stamp."""

    times: list[int] = field(default_factory=list)
    values: list = field(default_factory=list)
    by_stamp: dict[int, int] = field(default_factory=dict)

    def add(self, t: int, value, stamp: int | None = None) -> None:
        self.times.append(t)
        self.values.append(value)
        if stamp is not None:
            self.by_stamp[stamp] = len(self.values) - 1

    def latest(self, t: int):
        i = bisect.bisect_right(self.times, t) - 1
        return self.values[i] if i >= 0 else None

    def at(self, stamp: int, t: int):
        """The message whose header stamp is closest to ``stamp`` (a frame taken with the main camera's),
        or, for unstamped streams, the newest received by log time ``t``."""
        if getattr(self, "_sorted", None) is None or len(self._sorted) != len(self.by_stamp):
            self._sorted = np.array(sorted(s for s in self.by_stamp if s > 0), dtype=np.int64)
        if len(self._sorted) == 0 or stamp <= 0:
            return self.latest(t)
        i = int(np.searchsorted(self._sorted, stamp))
        near = [j for j in (i - 1, i) if 0 <= j < len(self._sorted)]
        best = min((int(self._sorted[j]) for j in near), key=lambda s: abs(s - stamp))
        return self.values[self.by_stamp[best]]


def _stamp_ns(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


@dataclass
class ConvertStats:
    steps: int = 0
    episodes: int = 0
    holds_skipped: int = 0
    no_image: int = 0
    bad_images: int = 0
    bad_actions: int = 0


def read_bag(path: str | Path, topics: BagTopics | None = None, source_flip: str = "rot180",
             image_size: int | None = None) -> tuple[list[Episode], ConvertStats]:
    """The episodes in a bag (raw images, LIBERO actions) and counts of what was skipped and why."""
    from rosbags.highlevel import AnyReader

    topics = topics or BagTopics.from_config()
    flip_image(np.zeros((1, 1, 3), np.uint8), source_flip)  # validate early
    stats = ConvertStats()
    cam, wrist, instr, joints, pose = _Stream(), _Stream(), _Stream(), _Stream(), _Stream()
    actions: list[tuple[int, object]] = []
    with AnyReader([Path(path)]) as reader:
        wanted = {topics.camera, topics.wrist, topics.instruction, topics.action, topics.joint_states,
                  topics.ee_pose}
        conns = [c for c in reader.connections if c.topic in wanted]
        if not any(c.topic == topics.action for c in conns):
            raise ValueError(f"bag {path} has no {topics.action} messages; topics: "
                             f"{sorted({c.topic for c in reader.connections})}")
        for conn, t, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic in (topics.camera, topics.wrist):
                try:
                    img = flip_image(image_msg_to_rgb(msg), source_flip)
                except ImageDecodeError as e:
                    stats.bad_images += 1
                    log.warning("skipping image on %s: %s", conn.topic, e)
                    continue
                if image_size and img.shape[:2] != (image_size, image_size):
                    img = _resize(img, image_size)
                (cam if conn.topic == topics.camera else wrist).add(t, img, _stamp_ns(msg))
            elif conn.topic == topics.instruction:
                instr.add(t, str(msg.data))
            elif conn.topic == topics.joint_states:
                joints.add(t, np.asarray(msg.position, dtype=np.float64), _stamp_ns(msg))
            elif conn.topic == topics.ee_pose:
                p, q = msg.pose.position, msg.pose.orientation
                pose.add(t, (np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w])), _stamp_ns(msg))
            else:
                actions.append((t, msg))

    episodes: list[Episode] = []
    current: dict[str, list] | None = None
    key = None
    for t, msg in actions:
        if msg.hold:
            stats.holds_skipped += 1
            continue
        stamp = _stamp_ns(msg)
        if stamp in cam.by_stamp:  # the frame the policy answered
            img, frame_stamp = cam.values[cam.by_stamp[stamp]], stamp
        else:
            img, frame_stamp = cam.latest(t), 0
        if img is None:
            stats.no_image += 1
            continue
        try:
            space = get_action_space(msg.action_space) if msg.action_space else LIBERO_ACTION_SPACE
            lin, ang = msg.twist.linear, msg.twist.angular
            a = command_to_libero([lin.x, lin.y, lin.z], [ang.x, ang.y, ang.z], float(msg.gripper), space)
        except ValueError as e:
            stats.bad_actions += 1
            log.warning("skipping action: %s", e)
            continue
        if not np.all(np.isfinite(a)):
            stats.bad_actions += 1
            continue
        instruction = instr.latest(t) or ""
        new_key = (int(msg.episode_id), instruction)
        if current is None or new_key != key:
            if current is not None:
                episodes.append(_episode(current))
            current = {k: [] for k in ("actions", "agent", "wrist", "joints", "pos", "quat", "finished")}
            current["instruction"] = instruction
            key = new_key
        w = wrist.at(frame_stamp, t)
        current["actions"].append(a)
        current["agent"].append(img)
        current["wrist"].append(w if w is not None else np.zeros_like(img))
        j = joints.at(frame_stamp, t)
        current["joints"].append(j if j is not None else np.zeros(9))
        pq = pose.at(frame_stamp, t)
        current["pos"].append(pq[0] if pq else np.zeros(3))
        current["quat"].append(pq[1] if pq else np.array([0.0, 0.0, 0.0, 1.0]))
        current["finished"].append(bool(msg.finished))
    if current is not None:
        episodes.append(_episode(current))
    stats.episodes = len(episodes)
    stats.steps = sum(len(e) for e in episodes)
    return episodes, stats


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def _episode(c: dict) -> Episode:
    joints = np.stack([np.resize(j, 9) if len(j) != 9 else j for j in c["joints"]])
    pos = np.stack(c["pos"])
    ori = quat_xyzw_to_axis_angle(np.stack(c["quat"]))
    t = len(c["actions"])
    dones = np.zeros(t, np.uint8)
    finished = np.flatnonzero(c["finished"])
    dones[finished[0] if len(finished) else t - 1:] = 1  # the policy/teleoperator's "done", else the end
    obs = {"agentview_rgb": np.stack(c["agent"]), "eye_in_hand_rgb": np.stack(c["wrist"]),
           # a Panda's JointState lists 7 arm joints then the 2 fingers (as LIBERO's gripper_states)
           "joint_states": joints[:, :7], "gripper_states": joints[:, 7:9], "ee_pos": pos, "ee_ori": ori,
           "ee_states": np.concatenate([pos, ori], 1)}
    return Episode(actions=np.stack(c["actions"]), obs=obs, states=np.zeros((t, 0)), dones=dones,
                   instruction=c["instruction"], attrs={"source": "rosbag"})


def convert_bag(bag: str | Path, out_file: str | Path, *, topics: BagTopics | None = None,
                source_flip: str = "rot180", image_size: int | None = None) -> ConvertStats:
    """Write the bag's episodes to one LIBERO-format file (appending, like the generator)."""
    from vla_ros.data.libero_hdf5 import LiberoHdf5Writer

    episodes, stats = read_bag(bag, topics, source_flip, image_size)
    if not episodes:
        raise ValueError(f"no usable steps in {bag}: {stats}")
    with LiberoHdf5Writer(out_file, env_name="real_robot", problem_name="rosbag",
                          language_instruction=episodes[0].instruction, domain_name="ros2",
                          env_kwargs={"source_bag": str(bag), "source_flip": source_flip}) as w:
        for ep in episodes:
            w.add(ep)
    return stats


def main(argv: list[str] | None = None) -> int:
    """``vla-ros bag-to-dataset BAG OUT.hdf5``: a recorded bag to a LIBERO-format dataset file."""
    p = argparse.ArgumentParser(prog="vla-ros bag-to-dataset", description=main.__doc__)
    p.add_argument("bag", help="rosbag2 directory (metadata.yaml + .mcap/.db3)")
    p.add_argument("out", help="output .hdf5 (appended to if it exists)")
    p.add_argument("--source-flip", default="rot180", choices=("rot180", "vflip", "none"),
                   help="flip the publisher applied (sim bridge: rot180; real upright camera: none)")
    p.add_argument("--image-size", type=int, default=None, help="resize frames to this square size")
    a = p.parse_args(argv)  # topic names: config/topics.yaml (VLA_ROS_CONFIG_DIR to point elsewhere)
    stats = convert_bag(a.bag, a.out, source_flip=a.source_flip, image_size=a.image_size)
    print(f"{a.out}: {stats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
