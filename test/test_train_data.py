"""training/step_dataset.py over training/data's readers: steps indexed with no-ops dropped, images flipped
as the bridge flips them, action chunks padded at the episode's end, and `train --data` on a LIBERO-format file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vla_ros.conventions import flip_image
from vla_ros.data.episode import Episode
from vla_ros.data.libero_hdf5 import LiberoHdf5Writer
from vla_ros.training.step_dataset import StepDataset, open_training_data

T = 6


def _episode(seed: int, instruction: str = "put the bowl on the plate") -> Episode:
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-0.5, 0.5, size=(T, 7))
    actions[:, -1] = [-1, -1, -1, 1, 1, 1]
    actions[2, :6] = 0.0  # a no-op: no arm motion, same gripper as the step before
    obs = {"agentview_rgb": rng.integers(0, 255, (T, 16, 16, 3), dtype=np.uint8),
           "eye_in_hand_rgb": rng.integers(0, 255, (T, 16, 16, 3), dtype=np.uint8),
           "ee_states": rng.normal(size=(T, 6)), "ee_pos": rng.normal(size=(T, 3)),
           "ee_ori": rng.normal(size=(T, 3)) * 0.1, "gripper_states": rng.normal(size=(T, 2)),
           "joint_states": rng.normal(size=(T, 7))}
    return Episode(actions=actions, obs=obs, states=rng.normal(size=(T, 10)), instruction=instruction)


def _write(path, episodes) -> None:
    with LiberoHdf5Writer(path, env_name="test", problem_name="test", language_instruction=episodes[0].instruction) as w:
        for ep in episodes:
            w.add(ep, compression=None)


def test_steps_skip_noops_and_pad_chunks():
    ep = _episode(0)
    ds = StepDataset([ep], camera="agentview_rgb", action_chunk=3)
    assert len(ds) == T - 1  # step 2 is a no-op
    last = ds[len(ds) - 1]
    assert last["done"] and last["action"].shape == (3, 7)
    np.testing.assert_array_equal(last["action"], np.repeat(ep.actions[-1:], 3, axis=0))
    np.testing.assert_array_equal(ds[2]["action"][0], ep.actions[3])  # index 2 is step 3 (step 2 dropped)


def test_open_training_data_reads_hdf5_with_the_camera_flip(tmp_path):
    eps = [_episode(0), _episode(1)]
    _write(tmp_path / "task.hdf5", eps)
    ds, stats, instructions = open_training_data(tmp_path)
    assert len(ds) == 2 * (T - 1) and instructions == ["put the bowl on the plate"]
    (key,) = stats
    assert stats[key]["num_transitions"] == 2 * (T - 1) and stats[key]["action"]["mask"][-1] is False
    np.testing.assert_array_equal(ds[0]["image"], flip_image(eps[0].obs["agentview_rgb"][0], "rot180"))


def test_train_cli_on_a_libero_file(tmp_path):
    from vla_ros.training.train import main

    _write(tmp_path / "data" / "task.hdf5", [_episode(0), _episode(1)])
    out = tmp_path / "run"
    assert main(["--data", str(tmp_path / "data"), "--preset", "test-fused", "--out", str(out), "--steps", "2",
                 "--batch-size", "4", "--no-progress", "--text-vocab-size", "300", "--augment"]) == 0
    stats = json.loads((out / "dataset_statistics.json").read_text())
    assert list(stats) == ["data"]
    assert json.loads((out / "config.json").read_text())["center_crop"] is True  # augmented: evaluate centre-cropped


def test_several_datasets_train_on_their_union_with_statistics_over_all(tmp_path):
    small, wide = [_episode(0), _episode(1)], [_episode(2)]
    for ep in wide:  # a second source whose actions reach further: the union's bins must cover it
        ep.actions[:, :6] *= 4.0
    _write(tmp_path / "v3" / "task.hdf5", small)
    _write(tmp_path / "v4" / "task.hdf5", wide)  # the same file name in both: episodes are not confused
    one, one_stats, _ = open_training_data(tmp_path / "v3")
    both, stats, _ = open_training_data([tmp_path / "v3", tmp_path / "v4"])
    assert len(both) == len(one) + (T - 1) and list(stats) == ["v3+v4"]
    (key,) = one_stats
    assert max(stats["v3+v4"]["action"]["q99"][:6]) > 1.5 * max(one_stats[key]["action"]["q99"][:6])
    assert stats["v3+v4"]["num_trajectories"] == 3


def test_datasets_with_different_gripper_conventions_are_not_mixed(tmp_path):
    _write(tmp_path / "a" / "task.hdf5", [_episode(0)])
    _write(tmp_path / "b" / "task.hdf5", [_episode(1)])
    for name, convention in (("a", "libero_sign"), ("b", "openvla_open01")):
        _, stats, _ = open_training_data(tmp_path / name)
        (entry,) = stats.values()
        (tmp_path / name / "dataset_statistics.json").write_text(json.dumps({name: {**entry,
                                                                                  "gripper_convention": convention}}))
    with pytest.raises(ValueError, match="different gripper conventions"):
        open_training_data([tmp_path / "a", tmp_path / "b"])


def test_train_cli_on_two_datasets(tmp_path):
    from vla_ros.training.train import main

    _write(tmp_path / "a" / "task.hdf5", [_episode(0)])
    _write(tmp_path / "b" / "task.hdf5", [_episode(1, instruction="open the drawer")])
    out = tmp_path / "run"
    assert main(["--data", str(tmp_path / "a"), str(tmp_path / "b"), "--preset", "test-fused", "--out", str(out),
                 "--steps", "1", "--batch-size", "4", "--no-progress", "--text-vocab-size", "300"]) == 0
    assert list(json.loads((out / "dataset_statistics.json").read_text())) == ["a+b"]
    meta = json.loads((out / "training_meta.json").read_text())
    assert meta["samples"] == 2 * (T - 1) and meta["data"] == f"{tmp_path / 'a'} {tmp_path / 'b'}"


def test_steps_carry_wrist_image_and_model_proprio():
    ep = _episode(3)
    ds = StepDataset([ep])
    assert ds.has_wrist and ds.has_proprio
    _, t = (int(x) for x in ds.index[1])
    s = ds[1]
    np.testing.assert_array_equal(s["wrist_image"], ep.obs["eye_in_hand_rgb"][t])
    np.testing.assert_allclose(s["proprio"], ep.model_proprio()[t])
    assert ds.proprio_array().shape == (len(ds), 11)
    bare = Episode(actions=ep.actions, obs={"agentview_rgb": ep.obs["agentview_rgb"]}, instruction="x")
    plain = StepDataset([bare])
    assert not plain.has_wrist and not plain.has_proprio and "proprio" not in plain[0]


def test_train_cli_with_wrist_and_proprio(tmp_path):
    from vla_ros.backends import load_policy
    from vla_ros.training.train import main

    _write(tmp_path / "data" / "task.hdf5", [_episode(0), _episode(1)])
    out = tmp_path / "run"
    assert main(["--data", str(tmp_path / "data"), "--preset", "test-fused", "--out", str(out), "--steps", "2",
                 "--batch-size", "4", "--no-progress", "--text-vocab-size", "300", "--wrist", "--proprio",
                 "--augment"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["extra_images"] == ["wrist"]
    assert cfg["proprio_stats"]["layout"] == "eef_rot6d_gripper" and len(cfg["proprio_stats"]["mean"]) == 11
    policy = load_policy("native", str(out), device="cpu")
    img = np.zeros((16, 16, 3), np.uint8)
    a = policy.predict(img, "put the bowl on the plate", extra_images={"wrist": img},
                       proprio=np.zeros(11) + np.asarray(cfg["proprio_stats"]["mean"]))
    assert a.shape == (7,)


def test_train_init_from_continues_from_a_policy(tmp_path):
    from safetensors.numpy import load_file

    from vla_ros.training.train import main

    _write(tmp_path / "data" / "task.hdf5", [_episode(0), _episode(1)])
    common = ["--data", str(tmp_path / "data"), "--preset", "test-fused", "--batch-size", "4", "--no-progress",
              "--text-vocab-size", "300", "--wrist"]
    assert main([*common, "--out", str(tmp_path / "a"), "--steps", "2"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--steps", "1", "--lr", "1e-12",
                 "--init-from", str(tmp_path / "a")]) == 0
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-6  # the weights it started from, not a new init
    assert json.loads((tmp_path / "b" / "config.json").read_text())["extra_images"] == ["wrist"]


def test_train_init_from_takes_the_new_data_statistics(tmp_path, capsys):
    from vla_ros.training.train import main

    _write(tmp_path / "d1" / "task.hdf5", [_episode(0), _episode(1)])
    _write(tmp_path / "d2" / "task.hdf5", [_episode(2), _episode(3)])
    common = ["--preset", "test-fused", "--batch-size", "4", "--no-progress", "--text-vocab-size", "300"]
    assert main([*common, "--data", str(tmp_path / "d1"), "--out", str(tmp_path / "a"), "--steps", "1"]) == 0
    capsys.readouterr()
    assert main([*common, "--data", str(tmp_path / "d2"), "--out", str(tmp_path / "b"), "--steps", "1",
                 "--init-from", str(tmp_path / "a")]) == 0
    assert "largest q01/q99 shift" in capsys.readouterr().out
    stats_b = json.loads((tmp_path / "b" / "dataset_statistics.json").read_text())
    assert list(stats_b) == ["d2"]


def test_train_init_from_can_keep_its_own_statistics(tmp_path, capsys):
    from vla_ros.training.train import main

    _write(tmp_path / "d1" / "task.hdf5", [_episode(0), _episode(1)])
    _write(tmp_path / "d2" / "task.hdf5", [_episode(2), _episode(3)])
    common = ["--preset", "test-fused", "--batch-size", "4", "--no-progress", "--text-vocab-size", "300"]
    assert main([*common, "--data", str(tmp_path / "d1"), "--out", str(tmp_path / "a"), "--steps", "1"]) == 0
    assert main([*common, "--data", str(tmp_path / "d2"), "--out", str(tmp_path / "b"), "--steps", "1",
                 "--init-from", str(tmp_path / "a"), "--keep-statistics"]) == 0
    assert "keeping the statistics 'd1'" in capsys.readouterr().out
    stats_a = json.loads((tmp_path / "a" / "dataset_statistics.json").read_text())
    stats_b = json.loads((tmp_path / "b" / "dataset_statistics.json").read_text())
    assert stats_b == stats_a  # the bins of the model it started from, not d2's
    assert json.loads((tmp_path / "b" / "config.json").read_text())["norm_stats"] == stats_a
    # without a model to keep them from, the flag is an error
    assert main([*common, "--data", str(tmp_path / "d2"), "--out", str(tmp_path / "c"), "--steps", "1",
                 "--keep-statistics"]) == 2
    assert "--keep-statistics needs --init-from" in capsys.readouterr().err


def test_bin_edge_shift_is_relative_to_the_old_range():
    from vla_ros.training.train import bin_edge_shift

    old = {"action": {"q01": [-1.0, 0.0], "q99": [1.0, 1.0]}}
    assert bin_edge_shift(old, old) == 0.0
    assert abs(bin_edge_shift(old, {"action": {"q01": [-1.0, 0.1], "q99": [1.2, 1.0]}}) - 0.1) < 1e-12


def test_merge_policies_averages_weights_and_records_its_sources(tmp_path):
    from safetensors.numpy import load_file

    from vla_ros.backends import load_policy
    from vla_ros.training.merge import main as merge_main
    from vla_ros.training.train import main

    _write(tmp_path / "data" / "task.hdf5", [_episode(0), _episode(1)])
    common = ["--data", str(tmp_path / "data"), "--preset", "test-fused", "--batch-size", "4", "--no-progress",
              "--text-vocab-size", "300"]
    assert main([*common, "--out", str(tmp_path / "a"), "--steps", "1"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--steps", "3", "--lr", "1e-2",
                 "--init-from", str(tmp_path / "a")]) == 0
    assert merge_main([str(tmp_path / "a"), str(tmp_path / "b"), "--weight-b", "0.25",
                       "--out", str(tmp_path / "m")]) == 0
    a, b, m = (load_file(tmp_path / d / "model.safetensors") for d in "abm")
    moved = [k for k in a if a[k].dtype.kind == "f" and np.abs(a[k] - b[k]).max() > 1e-4]
    assert moved  # the fine-tuning changed something, so the average is not trivially either source
    for k in moved:
        np.testing.assert_allclose(m[k], 0.75 * a[k] + 0.25 * b[k], rtol=1e-5, atol=1e-6)
    meta = json.loads((tmp_path / "m" / "training_meta.json").read_text())
    assert meta["command"] == "merge" and [s["weight"] for s in meta["sources"]] == [0.75, 0.25]
    assert meta["sources"][1]["training_meta"]["init_from"] == str(tmp_path / "a")
    policy = load_policy("native", str(tmp_path / "m"), device="cpu")
    assert policy.predict(np.zeros((16, 16, 3), np.uint8), "put the bowl on the plate").shape == (7,)


def test_merge_policies_refuses_different_architectures(tmp_path, capsys):
    from vla_ros.training.merge import main as merge_main
    from vla_ros.training.train import main

    _write(tmp_path / "data" / "task.hdf5", [_episode(0)])
    common = ["--data", str(tmp_path / "data"), "--preset", "test-fused", "--batch-size", "4", "--no-progress",
              "--text-vocab-size", "300", "--steps", "1"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--wrist"]) == 0
    assert merge_main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 2
    assert "different" in capsys.readouterr().err
    assert not (tmp_path / "m" / "model.safetensors").exists()
