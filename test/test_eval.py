"""vla-ros eval (training/eval.py, the ROS route in vla_ros/nodes/eval_client.py): the report (Wilson intervals, how episodes ended), the worker plan, and short LIBERO episodes
in-process and through the ROS graph (sim_bridge + vla_policy_node, lockstep) giving the same actions and
outcome for one seed, with a tiny native checkpoint whose LoRA adapter the node loads through its parameter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from vla_ros.training.eval import make_specs, parse_tasks, parser, plan_workers
from vla_ros.training.eval_report import build_report, wilson_interval


def test_wilson_interval_matches_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(50, 50)[1] == pytest.approx(1.0) and wilson_interval(50, 50)[0] == pytest.approx(0.9287,
                                                                                                             abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_report_counts_success_and_how_episodes_ended():
    eps = [{"task_id": 0, "init_state_id": i, "instruction": "a", "success": s, "steps": n, "reason": r}
           for i, (s, n, r) in enumerate([(True, 10, "success"), (True, 20, "policy_done"), (False, 30, "step_limit")])]
    eps.append({"task_id": 1, "init_state_id": 0, "instruction": "b", "success": False, "steps": 40,
                "reason": "policy_done"})
    rep = build_report(eps, {"suite": "libero_spatial"})
    t0, t1 = rep["per_task"]
    assert (t0["successes"], t0["episodes"], t0["mean_steps"]) == (2, 3, 20.0)
    assert t0["successes_ended_by"] == {"success": 1, "policy_done": 1}
    assert t0["wilson95"] == pytest.approx(list(wilson_interval(2, 3)))
    assert t1["success_rate"] == 0.0 and t1["ended_by"] == {"policy_done": 1}
    assert rep["overall"]["success_rate"] == 0.5 and rep["overall"]["mean_task_success_rate"] == pytest.approx(1 / 3)


def test_worker_plan_covers_every_episode_once():
    groups = plan_workers([0, 1, 2], episodes=4, record=1, workers=2)
    jobs = sorted(j for g in groups for j in g)
    assert jobs == sorted((t, i, i < 1) for t in range(3) for i in range(4))
    assert all(len({j[0] for j in g}) >= 1 for g in groups) and len(groups) == 2
    # one task, more workers: its episodes are split
    assert [len(g) for g in plan_workers([3], episodes=5, record=0, workers=2)] == [3, 2]
    assert parse_tasks("0,2-4", "libero_spatial") == [0, 2, 3, 4]
    with pytest.raises(ValueError):
        parse_tasks("10", "libero_spatial")


def test_ros_workers_get_distinct_domains(tmp_path, monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", "100")
    a = parser().parse_args(["--backend", "debug", "--tasks", "0-3", "--episodes-per-task", "2", "--workers", "3",
                             "--route", "ros", "--out", str(tmp_path)])
    from vla_ros.nodes.eval_client import run_through_ros

    with pytest.raises(ValueError, match="vla-ros eval"):  # training imports no node module: the runner is handed in
        make_specs(a, tmp_path / "videos")
    specs = make_specs(a, tmp_path / "videos", graph_runner=run_through_ros)
    assert all(s["graph_runner"] is run_through_ros for s in specs)
    assert [s["domain_id"] for s in specs] == [100, 101, 1]  # wraps within 1..101
    assert sum(len(s["jobs"]) for s in specs) == 8


# ------------------------------------------------------------------ LIBERO episodes (sim, ROS)

@pytest.fixture(scope="module")
def tiny_with_adapter(tmp_path_factory):
    """A tiny native checkpoint and a LoRA adapter trained on synthetic data (changes its actions)."""
    from vla_ros.training.checkpoint import build_model, save_policy
    from vla_ros.training.finetune import main as finetune
    from vla_ros.training.synthetic import SyntheticActionDataset

    root = tmp_path_factory.mktemp("eval_model")
    ds = SyntheticActionDataset(8, image_size=56)
    model, tok = build_model("test-fused", ds.instructions, ds.statistics(), text_vocab_size=300, seed=0)
    base = save_policy(model, tok, ds.statistics(), root / "base")
    assert finetune(["--base", str(base), "--synthetic", "8", "--out", str(root / "adapter"), "--steps", "8",
                     "--lr", "3e-2", "--lora-rank", "8", "--batch-size", "4", "--grad-accum", "1",
                     "--no-progress"]) == 0
    return base, root / "adapter"


def _leftover_children() -> list:
    """Child processes still alive, except multiprocessing's resource tracker (one per interpreter, by design)."""
    return [c for c in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(c.cmdline())]


def _eval(out, *extra) -> dict:
    from vla_ros.nodes.eval_client import main  # `vla-ros eval`: both routes

    assert main(["--suite", "libero_spatial", "--tasks", "0", "--episodes-per-task", "1", "--max-steps", "3",
                 "--image-size", "64", "--save-actions", "--out", str(out), *extra]) == 0
    return json.loads((out / "report.json").read_text())


@pytest.mark.sim
@pytest.mark.ros
@pytest.mark.slow
def test_in_process_and_ros_graph_give_the_same_episode(tiny_with_adapter, tmp_path):
    pytest.importorskip("robosuite", reason="LIBERO's simulation stack is not installed")
    pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
    base, adapter = tiny_with_adapter
    model = ["--backend", "native", "--checkpoint", str(base), "--device", "cpu"]
    plain = _eval(tmp_path / "plain", *model)
    local = _eval(tmp_path / "local", *model, "--adapter", str(adapter))
    ros = _eval(tmp_path / "ros", *model, "--adapter", str(adapter), "--route", "ros")

    (ep_l,), (ep_r,), (ep_p,) = local["episodes"], ros["episodes"], plain["episodes"]
    assert ep_l["steps"] == 3 and ep_l["reason"] == "step_limit"
    assert (ep_r["steps"], ep_r["reason"], ep_r["success"]) == (ep_l["steps"], ep_l["reason"], ep_l["success"])
    assert ep_r["instruction"] == ep_l["instruction"]
    np.testing.assert_allclose(np.array(ep_r["actions"]), np.array(ep_l["actions"]), rtol=0, atol=1e-6)
    # the node applied the adapter given as its parameter: without it the actions differ
    assert not np.allclose(np.array(ep_p["actions"]), np.array(ep_l["actions"]))
    for rep, out in ((local, tmp_path / "local"), (ros, tmp_path / "ros")):
        assert rep["overall"]["episodes"] == 1 and rep["per_task"][0]["ended_by"] == {"step_limit": 1}
        videos = list((out / "videos").glob("*.mp4"))
        assert len(videos) == 1 and videos[0].stat().st_size > 0, videos
    assert not _leftover_children(), "a graph process was left behind"


@pytest.mark.sim
@pytest.mark.ros
@pytest.mark.slow
def test_wrist_and_proprio_checkpoint_gives_the_same_episode_in_process_and_through_the_graph(tmp_path):
    """The node feeds the wrist camera and the proprio (joint_states + ee_pose, paired by stamp) exactly as the
    in-process rollout does: same actions, step for step."""
    pytest.importorskip("robosuite", reason="LIBERO's simulation stack is not installed")
    pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
    from core_fixtures import save_wrist_proprio

    ckpt = save_wrist_proprio(tmp_path / "wrist_proprio")
    model = ["--backend", "native", "--checkpoint", str(ckpt), "--device", "cpu", "--record-episodes", "0"]
    local = _eval(tmp_path / "local", *model)
    ros = _eval(tmp_path / "ros", *model, "--route", "ros")
    (ep_l,), (ep_r,) = local["episodes"], ros["episodes"]
    assert ep_l["steps"] == 3 and ep_l["reason"] == "step_limit"
    assert (ep_r["steps"], ep_r["reason"], ep_r["success"]) == (ep_l["steps"], ep_l["reason"], ep_l["success"])
    np.testing.assert_allclose(np.array(ep_r["actions"]), np.array(ep_l["actions"]), rtol=0, atol=1e-6)
    assert not _leftover_children(), "a graph process was left behind"


@pytest.mark.sim
@pytest.mark.slow
def test_parallel_workers_and_policy_done(tmp_path):
    pytest.importorskip("robosuite", reason="LIBERO's simulation stack is not installed")
    rep = _eval(tmp_path / "w", "--backend", "debug", "--backend-options", "{done_after: 2}", "--tasks", "0,1",
                "--workers", "2", "--record-episodes", "0")
    assert rep["config"]["workers"] == 2 and [t["task_id"] for t in rep["per_task"]] == [0, 1]
    for t in rep["per_task"]:  # the policy declared done at its 2nd call: one step executed, then policy_done
        assert t["ended_by"] == {"policy_done": 1} and t["mean_steps"] == 1.0
    assert not list((tmp_path / "w" / "videos").glob("*.mp4"))
    assert not _leftover_children(), "a worker process was left behind"


@pytest.mark.sim
@pytest.mark.ros
@pytest.mark.slow
def test_ros_eval_fails_fast_and_cleanly_when_the_policy_cannot_load(tmp_path, capsys):
    pytest.importorskip("robosuite", reason="LIBERO's simulation stack is not installed")
    pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
    from vla_ros.nodes.eval_client import main

    out = tmp_path / "broken"
    assert main(["--route", "ros", "--backend", "native", "--checkpoint", str(tmp_path / "missing"), "--tasks", "0",
                 "--episodes-per-task", "1", "--max-steps", "3", "--image-size", "64", "--out", str(out)]) == 1
    assert "vla_policy_node exited with code 1" in capsys.readouterr().err
    assert not (out / "report.json").exists()
    assert not list((out / "videos").glob(".worker*")), "the bridge's scratch recordings were left behind"
    assert not _leftover_children(), "a graph process was left behind"


def _graph_processes(pid: int) -> list[psutil.Process]:
    out = []
    for c in psutil.Process(pid).children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(c.cmdline()):
                out.append(c)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.sim
@pytest.mark.ros
@pytest.mark.slow
def test_sigterm_stops_the_evaluation_and_every_graph_it_started(tmp_path):
    """The nodes run in sessions of their own (no terminal signal reaches them): a `kill` of the evaluation
    must still stop both workers' graphs, not leave simulators running."""
    pytest.importorskip("robosuite", reason="LIBERO's simulation stack is not installed")
    pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vla_ros.cli", "eval", "--route", "ros", "--backend", "debug", "--suite", "libero_spatial",
           "--tasks", "0,1", "--workers", "2", "--episodes-per-task", "3", "--image-size", "64",
           "--record-episodes", "0", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, bridges = time.monotonic() + 180, []
        while len(bridges) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            bridges = [c for c in _graph_processes(proc.pid) if "sim_bridge_node" in " ".join(c.cmdline())]
        assert len(bridges) == 2, f"both workers' graphs should be up (eval exited: {proc.poll()})"
        started = _graph_processes(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by signal 15" in err
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, f"left running: {[' '.join(p.cmdline()[:2]) for p in alive]}"
    assert not (out / "report.json").exists()
