"""`vla-ros send|watch|enable|reset`: what a user does with the running graph when no `ros2` CLI exists.

- ``send "put the bowl on the plate"`` publishes one instruction (like ``ros2 topic pub --once``), after
  waiting for the policy node's subscription to match, so it is not lost.
- ``watch [actions|status|episode|all]`` prints actions, policy status and episode status as they come.
- ``enable true|false`` flips the policy node's enable switch (std_srvs/SetBool).
- ``reset --suite S --task T --init I`` resets the simulator bridge and prints the new instruction.
"""

from __future__ import annotations

import argparse
import sys

import rclpy
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import String
from std_srvs.srv import SetBool

from vla_ros.config import topics
from vla_ros.nodes.qos import command_qos, listener_qos
from vla_ros.nodes.spin import SpinTimeoutError, spin_for, spin_until
from vla_ros_msgs.msg import EpisodeStatus, PolicyStatus, VlaAction
from vla_ros_msgs.srv import ResetEpisode

INSTRUCTION_QOS = command_qos()
WATCH_QOS = listener_qos()


def _waited(executor, predicate, timeout_s: float) -> bool:
    """True when ``predicate`` held within ``timeout_s`` (a tool reports a timeout, it does not raise)."""
    try:
        spin_until(executor, predicate, timeout_s)
    except SpinTimeoutError:
        return False
    return True


def format_action(m: VlaAction) -> str:
    t = m.twist
    flags = (" HOLD(" + m.hold_reason + ")" if m.hold else "") + (" FINISHED" if m.finished else "")
    return (f"action ep={m.episode_id} step={m.step} "
            f"lin=[{t.linear.x:+.4f} {t.linear.y:+.4f} {t.linear.z:+.4f}] m "
            f"ang=[{t.angular.x:+.3f} {t.angular.y:+.3f} {t.angular.z:+.3f}] rad "
            f"gripper={m.gripper:.2f}{flags}")


def format_status(m: PolicyStatus) -> str:
    reason = f" ({m.hold_reason})" if m.hold_reason else ""
    return (f"status {m.state_name}{reason} model={m.model_id} "
            f"infer={m.last_inference_ms:.1f}ms mean={m.mean_inference_ms:.1f}ms rate={m.control_rate_hz:.1f}Hz "
            f"actions={m.actions_published} dropped={m.dropped_frames} rejected={m.rejected_inputs}"
            + (f" error={m.last_error!r}" if m.last_error else ""))


def format_episode(m: EpisodeStatus) -> str:
    end = f" done reason={m.reason}" if m.done else ""
    return (f"episode {m.episode_id} {m.suite}/{m.task_id} init={m.init_state_id} step={m.step}/{m.max_steps} "
            f"success={m.success}{end} '{m.instruction}'")


def cmd_send(opts, node, ex) -> int:
    pub = node.create_publisher(String, opts.topic or topics()["instruction"], INSTRUCTION_QOS)
    if not _waited(ex, lambda: pub.get_subscription_count() > 0, opts.timeout):
        print(f"vla-ros send: no subscriber on {pub.topic_name} after {opts.timeout:.0f} s "
              "(is vla_policy_node running in this ROS_DOMAIN_ID?)", file=sys.stderr)
        return 1
    pub.publish(String(data=opts.text))
    spin_for(ex, 0.3)  # let the reliable writer deliver before we leave
    print(f"sent to {pub.topic_name}: {opts.text!r}")
    return 0


def cmd_watch(opts, node, ex) -> int:
    seen = {"n": 0}
    which = {"actions", "status", "episode"} if opts.what == "all" else {opts.what}

    def printer(fmt):
        def cb(msg):
            seen["n"] += 1
            print(fmt(msg), flush=True)
        return cb

    t = topics()
    if "actions" in which:
        node.create_subscription(VlaAction, t["action"], printer(format_action), WATCH_QOS)
    if "status" in which:
        node.create_subscription(PolicyStatus, t["status"], printer(format_status), WATCH_QOS)
    if "episode" in which:
        node.create_subscription(EpisodeStatus, t["episode_status"], printer(format_episode), WATCH_QOS)
    done = (lambda: seen["n"] >= opts.count) if opts.count else (lambda: False)
    _waited(ex, done, opts.timeout if opts.timeout > 0 else float("inf"))
    return 0 if seen["n"] or not opts.count else 1


def cmd_enable(opts, node, ex) -> int:
    client = node.create_client(SetBool, topics()["enable_service"])
    if not _waited(ex, client.service_is_ready, opts.timeout):
        print("vla-ros enable: the policy node's enable service is not available", file=sys.stderr)
        return 1
    fut = client.call_async(SetBool.Request(data=opts.value == "true"))
    _waited(ex, fut.done, opts.timeout)
    resp = fut.result()
    print(f"enable={opts.value}: {resp.message if resp else 'no answer'}")
    return 0 if resp and resp.success else 1


def cmd_reset(opts, node, ex) -> int:
    client = node.create_client(ResetEpisode, topics()["reset_service"])
    if not _waited(ex, client.service_is_ready, opts.timeout):
        print("vla-ros reset: the simulator bridge's reset service is not available", file=sys.stderr)
        return 1
    fut = client.call_async(ResetEpisode.Request(suite=opts.suite, task_id=opts.task, init_state_id=opts.init))
    _waited(ex, fut.done, max(opts.timeout, 60.0))  # building a LIBERO env takes seconds
    resp = fut.result()
    if resp is None or not resp.success:
        print(f"vla-ros reset failed: {resp.message if resp else 'no answer'}", file=sys.stderr)
        return 1
    print(f"episode {resp.episode_id} ({resp.max_steps} steps): {resp.instruction}")
    return 0


def main(argv: list[str] | None = None, command: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vla-ros", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("send", help="publish one instruction")
    p.add_argument("text")
    p.add_argument("--topic", default="")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a subscriber")
    p = sub.add_parser("watch", help="print actions, status and episode status")
    p.add_argument("what", nargs="?", default="all", choices=["all", "actions", "status", "episode"])
    p.add_argument("--count", type=int, default=0, help="stop after this many messages (0: never)")
    p.add_argument("--timeout", type=float, default=0.0, help="stop after this many seconds (0: never)")
    p = sub.add_parser("enable", help="switch the policy node's output on or off")
    p.add_argument("value", choices=["true", "false"])
    p.add_argument("--timeout", type=float, default=10.0)
    p = sub.add_parser("reset", help="reset the simulator to a task and init state")
    p.add_argument("--suite", default="")
    p.add_argument("--task", type=int, default=-1)
    p.add_argument("--init", type=int, default=-1)
    p.add_argument("--timeout", type=float, default=10.0)
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parser.parse_args(([command] if command else []) + argv)

    rclpy.init()
    node = rclpy.create_node(f"vla_ros_cli_{opts.command}")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    try:
        handler = {"send": cmd_send, "watch": cmd_watch, "enable": cmd_enable, "reset": cmd_reset}[opts.command]
        return handler(opts, node, ex)
    except KeyboardInterrupt:
        return 0
    finally:
        ex.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def send_main(argv=None) -> int:
    return main(argv, "send")


def watch_main(argv=None) -> int:
    return main(argv, "watch")


def enable_main(argv=None) -> int:
    return main(argv, "enable")


def reset_main(argv=None) -> int:
    return main(argv, "reset")
