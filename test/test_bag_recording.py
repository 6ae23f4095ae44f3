"""Record a tiny in-process graph to an MCAP bag with vla_bag_recorder, convert it to a LIBERO-format dataset."""

from __future__ import annotations

import threading

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
pytest.importorskip("rosbags", reason="the rosbags library is not installed")

from rclpy.executors import MultiThreadedExecutor
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from helpers import wait_for
from vla_ros.config import topics
from vla_ros.conventions import flip_image
from vla_ros.data.libero_hdf5 import LiberoHdf5Reader, check_libero_layout
from vla_ros.image_codec import fill_image_msg
from vla_ros.nodes.bag_recorder import BagRecorder
from vla_ros.nodes.qos import command_qos, image_qos
from vla_ros.training.data.bag_convert import read_bag
from vla_ros_msgs.msg import VlaAction

pytestmark = pytest.mark.ros
DEADLINE = 30.0


class Graph:
    """A publisher node standing in for camera, instruction, arm and policy, and the recorder, one Context."""

    def __init__(self, bag_path):
        self.ctx = rclpy.context.Context()
        rclpy.init(context=self.ctx)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.ctx)
        self.pub_node = rclpy.create_node("bag_test_publisher", context=self.ctx)
        tp = topics()
        self.pub_image = self.pub_node.create_publisher(Image, tp["camera_image"], image_qos("reliable"))
        self.pub_wrist = self.pub_node.create_publisher(Image, tp["wrist_image"], image_qos("reliable"))
        self.pub_instr = self.pub_node.create_publisher(String, tp["instruction"], command_qos())
        self.pub_action = self.pub_node.create_publisher(VlaAction, tp["action"], command_qos(100))
        self.pub_joints = self.pub_node.create_publisher(JointState, tp["joint_states"], image_qos("reliable"))
        self.recorder = BagRecorder(output=str(bag_path), context=self.ctx)
        self.executor.add_node(self.pub_node)
        self.executor.add_node(self.recorder)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.recorder.close()
        self.executor.shutdown(timeout_sec=2.0)
        self.pub_node.destroy_node()
        self.recorder.destroy_node()
        rclpy.shutdown(context=self.ctx)
        self._thread.join(timeout=5.0)


def frame(i: int, size: int = 24) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = 10 * i
    img[1:4, 2:9] = [255, 255, 0]  # asymmetric: a wrong flip is detectable
    return img


@pytest.fixture
def graph(tmp_path):
    g = Graph(tmp_path / "bag")
    yield g
    g.close()


def test_recorded_bag_converts_to_dataset(graph, tmp_path):
    g = graph
    tp = topics()
    wait_for(lambda: all(p.get_subscription_count() > 0 for p in
                         (g.pub_image, g.pub_wrist, g.pub_instr, g.pub_action, g.pub_joints)),
             DEADLINE, what="recorder subscriptions to match")
    g.pub_instr.publish(String(data="put the bowl on the plate"))
    wait_for(lambda: g.recorder.counts[tp["instruction"]] == 1, DEADLINE, what="instruction recorded")
    n, published = 6, []
    for i in range(n):
        stamp = g.pub_node.get_clock().now().to_msg()
        img = fill_image_msg(Image(), frame(i))
        img.header.stamp = stamp
        g.pub_image.publish(img)
        wrist = fill_image_msg(Image(), frame(i)[::-1].copy())
        wrist.header.stamp = stamp  # taken with the main frame: matched by stamp, not arrival
        g.pub_wrist.publish(wrist)
        joints = JointState(position=[0.1 * i] * 7 + [0.04, -0.04])
        joints.header.stamp = stamp
        g.pub_joints.publish(joints)
        wait_for(lambda i=i: g.recorder.counts[tp["camera_image"]] == i + 1
                 and g.recorder.counts[tp["wrist_image"]] == i + 1 and g.recorder.counts[tp["joint_states"]] == i + 1,
                 DEADLINE, what=f"frame {i} recorded")
        a = VlaAction(episode_id=3, step=i, action_space="libero_osc_pose_20hz", dt=0.05,
                      gripper=1.0 if i >= 3 else 0.0, finished=i == n - 1)
        a.header.stamp = stamp  # the policy answers the frame it used
        a.twist.linear.x = 0.01 * i  # metres per step: 0.2 * i controller units
        g.pub_action.publish(a)
        published.append(a)
    hold = VlaAction(episode_id=3, step=n, hold=True, hold_reason="test")
    g.pub_action.publish(hold)  # holds are not steps
    wait_for(lambda: g.recorder.counts[tp["action"]] == n + 1, DEADLINE, what="actions recorded")
    g.recorder.close()
    bag = g.recorder.path
    assert (bag / "metadata.yaml").is_file() and list(bag.glob("*.mcap")), list(bag.iterdir())

    # the sim bridge publishes rot180-flipped frames; the dataset stores them raw, like LIBERO's
    episodes, stats = read_bag(bag, source_flip="rot180")
    assert stats.holds_skipped == 1 and stats.no_image == 0 and stats.bad_images == 0
    assert len(episodes) == 1
    ep = episodes[0]
    assert len(ep) == n and ep.instruction == "put the bowl on the plate"
    for i in range(n):
        np.testing.assert_array_equal(ep.obs["agentview_rgb"][i], flip_image(frame(i), "rot180"))
        np.testing.assert_array_equal(ep.obs["eye_in_hand_rgb"][i], flip_image(frame(i)[::-1], "rot180"))
    np.testing.assert_allclose(ep.actions[:, 0], 0.2 * np.arange(n), atol=1e-6)
    assert ep.actions[:, 6].tolist() == [-1, -1, -1, 1, 1, 1]  # closure 0/1 -> LIBERO's -1 open / +1 close
    np.testing.assert_allclose(ep.obs["joint_states"][:, 0], 0.1 * np.arange(n))
    assert ep.obs["gripper_states"][0].tolist() == [0.04, -0.04]
    assert ep.dones.tolist() == [0] * (n - 1) + [1]

    from vla_ros.training.data.bag_convert import convert_bag

    out = tmp_path / "real" / "put_the_bowl_on_the_plate_demo.hdf5"
    convert_bag(bag, out, source_flip="rot180")
    assert check_libero_layout(out) == []
    with LiberoHdf5Reader(out) as r:  # reading back with the same setting gives the published frames
        back = r[0]
        assert len(back) == n
        np.testing.assert_array_equal(back.obs["agentview_rgb"], np.stack([frame(i) for i in range(n)]))


def test_recorder_refuses_existing_output_and_unknown_topics(tmp_path):
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        (tmp_path / "exists").mkdir()
        with pytest.raises(FileExistsError):
            BagRecorder(output=str(tmp_path / "exists"), context=ctx)
        with pytest.raises(ValueError, match="cannot record"):
            BagRecorder(output=str(tmp_path / "new"), keys=("camera_image", "nonsense"), context=ctx)
    finally:
        rclpy.shutdown(context=ctx)
