"""The model card is built from the checkpoint's own records and evaluation reports."""

from __future__ import annotations

import json

from vla_ros.training.eval_report import build_report
from vla_ros.training.model_card import main as model_card_main


def _episode(task: int, init: int, success: bool, reason: str) -> dict:
    return {"suite": "libero_spatial", "task_id": task, "init_state_id": init, "instruction": f"task {task}",
            "success": success, "steps": 100 + init, "reason": reason}


def test_model_card_tables_and_commands(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({
        "vision_backbones": [{"image_size": 128}], "extra_images": ["wrist"],
        "proprio_stats": {"layout": "eef_rot6d_gripper"}, "action_chunk": 8, "predict_done": True,
        "done_threshold": 0.5, "image_flip": "rot180", "center_crop": True, "norm_stats": {"libero_scripted": {}}}))
    (ckpt / "training_meta.json").write_text(json.dumps({
        "preset": "tiny-128", "command_line": "vla-ros train --data d --preset tiny-128", "samples": 1234,
        "augment": True, "loop": {"batch_size": 64, "grad_accum": 1, "lr": 3e-4, "schedule": "cosine",
                                  "warmup_steps": 300}}))
    (ckpt / "train_result.json").write_text(json.dumps({"step": 5000, "wall_s": 600.0, "action_accuracy": 0.9,
                                                         "action_l1": 0.01}))
    eps = [_episode(0, 0, True, "policy_done"), _episode(0, 1, True, "success"),
           _episode(1, 0, False, "step_limit"), _episode(1, 1, True, "policy_done")]
    report = build_report(eps, {"checkpoint": "models/x", "suite": "libero_spatial", "episodes_per_task": 2,
                                "seed": 7, "route": "ros", "image_size": 128, "no_end_on_success": True,
                                "workers": 2, "backend_options": "{threads: 1}"})
    rep = tmp_path / "report.json"
    rep.write_text(json.dumps(report))
    assert model_card_main(["--checkpoint", str(ckpt), "--eval", str(rep)]) == 0
    card = (ckpt / "README.md").read_text()
    assert "| 0 | task 0 | 2/2 |" in card and "| 1 | task 1 | 1/2 |" in card
    assert "**3/4 (75.0%)**" in card
    assert "| 1/2 |" in card and "2/3 |" in card  # successes ended by the policy's own done: task 0, overall
    assert ("vla-ros eval --checkpoint models/x --suite libero_spatial --episodes-per-task 2 --seed 7 --route ros "
            "--image-size 128 --no-end-on-success --backend-options \"{threads: 1}\" --workers 2") in card
    assert "end only by the policy's `done`" in card
    assert "10.0 GPU-minutes" in card and "vla-ros train --data d --preset tiny-128" in card
    assert "+ wrist camera + proprio (`eef_rot6d_gripper`)" in card


def test_model_card_of_a_weight_average_names_both_sources(tmp_path):
    ckpt = tmp_path / "m"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"vision_backbones": [{"image_size": 128}],
                                                  "norm_stats": {"libero_scripted_v3": {}}}))
    (ckpt / "training_meta.json").write_text(json.dumps({
        "command": "merge", "command_line": "vla-ros merge-policies a b --weight-b 0.5 --out m", "weight_b": 0.5,
        "preset": "tiny-128", "sources": [
            {"path": "a", "weight": 0.5, "sha256": "ab" * 32, "training_meta": {"command_line": "vla-ros train A"}},
            {"path": "b", "weight": 0.5, "sha256": "cd" * 32, "training_meta": {"command_line": "vla-ros train B"}}]}))
    assert model_card_main(["--checkpoint", str(ckpt), "--train-minutes", "59.2"]) == 0
    card = (ckpt / "README.md").read_text()
    assert "`vla-ros merge-policies a b --weight-b 0.5 --out m`" in card
    assert "0.5 x `a` (sha256 abababababab...), trained with `vla-ros train A`" in card
    assert "`vla-ros train B`" in card and "59.2 GPU-minutes in all" in card


def test_model_card_lists_every_generation_run(tmp_path):
    ckpt = tmp_path / "m"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"vision_backbones": [{"image_size": 128}]}))

    def gen_report(name: str, suite: str, ids: list[int], seed: int):
        cfg = {"out": "data/x", "demos_per_task": 2, "seed": seed, "image_size": 128, "max_len_frac": 0.8,
               "done_steps": 3, "noise_std": 0.15}
        tasks = [{"suite": suite, "task_id": i, "kept": 2, "lengths": [100, 110]} for i in ids]
        (tmp_path / name).write_text(json.dumps({"config": cfg, "tasks": tasks}))
        return str(tmp_path / name)

    a = gen_report("a.json", "libero_spatial", [1, 6], 3)
    b = gen_report("b.json", "libero_object", list(range(10)), 4)
    assert model_card_main(["--checkpoint", str(ckpt), "--generation-report", a, b]) == 0
    card = (ckpt / "README.md").read_text()
    assert "- 4 successful scripted-expert demonstrations (420 steps) of libero_spatial" in card
    assert "--suites libero_spatial --tasks 1,6 --demos-per-task 2 --seed 3" in card
    assert "- 20 successful" in card and "--suites libero_object --demos-per-task 2 --seed 4" in card
