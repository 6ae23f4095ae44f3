"""``vla_bag_recorder``: record the camera, instruction and action topics of a running graph to an MCAP bag.

For real arms: teleoperate (or let a policy run), record, then ``vla_ros.training.data.bag_convert`` turns the bag
into the same LIBERO-format dataset as the simulator's demonstrations, so real data follows the same path
to fine-tuning. The bag is a standard rosbag2 directory (``metadata.yaml`` + ``*.mcap``) written with the
``rosbags`` library (pure Python; no rosbag2 install, which PyPI lacks), so ``ros2 bag info/play`` read it
where ROS 2 is installed.

Messages are subscribed raw (serialized CDR) and written as received: no deserialize/serialize per frame.
The log time of each message is its receive time; conversion aligns by header stamps where present.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from vla_ros.config import topics

# topics.yaml key -> (ROS type name, rclpy type import path); what a demonstration needs.
RECORDED = {
    "camera_image": "sensor_msgs/msg/Image",
    "wrist_image": "sensor_msgs/msg/Image",
    "instruction": "std_msgs/msg/String",
    "action": "vla_ros_msgs/msg/VlaAction",
    "joint_states": "sensor_msgs/msg/JointState",
    "ee_pose": "geometry_msgs/msg/PoseStamped",
}
DEFAULT_KEYS = tuple(RECORDED)


def _msg_class(type_name: str):
    pkg, _, name = type_name.split("/")
    module = __import__(f"{pkg}.msg", fromlist=[name])
    return getattr(module, name)


def _recording_qos(type_name: str) -> QoSProfile:
    """Images: BEST_EFFORT (matches any publisher) but a deep queue, so a recorder never drops frames
    it could have kept; instructions/actions: RELIABLE like their publishers (and `ros2 topic pub`)."""
    if type_name.endswith("/Image") or type_name.endswith("/JointState") or type_name.endswith("/PoseStamped"):
        rel = QoSReliabilityPolicy.BEST_EFFORT
    else:
        rel = QoSReliabilityPolicy.RELIABLE
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=100, reliability=rel,
                      durability=QoSDurabilityPolicy.VOLATILE)


def _msg_dir() -> Path:
    """vla_ros_msgs' .msg files: the ament index, else the venv's share/ (pip-wheel ROS has no
    AMENT_PREFIX_PATH), else the source tree."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("vla_ros_msgs")) / "msg")
    except (LookupError, OSError):
        pass
    candidates += [Path(sys.prefix) / "share" / "vla_ros_msgs" / "msg",
                   Path(__file__).resolve().parents[2] / "vla_ros_msgs" / "msg"]
    for c in candidates:
        if (c / "VlaAction.msg").is_file():
            return c
    raise FileNotFoundError(f"vla_ros_msgs .msg files not found in {candidates}")


def make_typestore():
    """rosbags' Kilted type store plus vla_ros_msgs (read from the installed .msg files)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    share = _msg_dir()
    types = {}
    for f in sorted(share.glob("*.msg")):
        types.update(get_types_from_msg(f.read_text(), f"vla_ros_msgs/msg/{f.stem}"))
    ts.register(types)
    return ts


class BagRecorder(Node):
    """Subscribes to the configured topics and writes every message to ``output`` (a new bag directory)."""

    def __init__(self, output: str | None = None, keys: tuple[str, ...] | None = None, **kwargs):
        super().__init__("vla_bag_recorder", **kwargs)
        self.declare_parameter("output", output or "bags/recording")
        self.declare_parameter("topics", list(keys or DEFAULT_KEYS))
        out = Path(self.get_parameter("output").value)
        chosen = list(self.get_parameter("topics").value)
        unknown = [k for k in chosen if k not in RECORDED]
        if unknown:
            raise ValueError(f"cannot record {unknown}; known topic keys: {sorted(RECORDED)}")
        if out.exists():
            raise FileExistsError(f"bag {out} exists; choose a new output directory")
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path = out
        self._lock = threading.Lock()
        self._writer = Writer(out, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        ts = make_typestore()
        names = topics()
        self.counts: dict[str, int] = {}
        self._subs = []
        for key in chosen:
            topic, type_name = names[key], RECORDED[key]
            conn = self._writer.add_connection(topic, type_name, typestore=ts)
            self.counts[topic] = 0
            self._subs.append(self.create_subscription(
                _msg_class(type_name), topic, self._make_callback(topic, conn), _recording_qos(type_name), raw=True))
        self.get_logger().info(f"recording {sorted(self.counts)} to {out}")

    def _make_callback(self, topic: str, conn):
        def cb(data: bytes) -> None:
            stamp = self.get_clock().now().nanoseconds
            with self._lock:
                if self._writer is None:
                    return
                self._writer.write(conn, stamp, data)
                self.counts[topic] += 1

        return cb

    def close(self) -> None:
        """Finish the bag (writes metadata.yaml); safe to call twice."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
                self.get_logger().info(f"bag closed: {self.counts}")

    def destroy_node(self) -> None:
        self.close()
        super().destroy_node()


def _raise_interrupt(*_) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a recording like Ctrl-C: the bag is closed cleanly


def main(argv: list[str] | None = None) -> int:
    """Console script: ``vla_bag_recorder --ros-args -p output:=bags/run1``; stops on Ctrl-C/SIGTERM."""
    args = sys.argv if argv is None else [sys.argv[0], *argv]
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited as ignored
    node = None
    try:
        node = BagRecorder()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()  # closes the bag
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
