"""`vla-ros generate-demos` end to end: a real LIBERO demo, checked against LIBERO's layout, read back, resumed."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

pytest.importorskip("robosuite", reason="LIBERO's simulation stack is not installed")

from vla_ros.conventions import flip_image
from vla_ros.data.libero_hdf5 import LiberoHdf5Reader, check_libero_layout, dataset_files
from vla_ros.sim.generate_demos import attempt_seed, main


def test_attempt_seeds_are_stable_and_distinct():
    a = attempt_seed(0, "libero_object", 3, 7)
    assert a == attempt_seed(0, "libero_object", 3, 7)
    assert len({attempt_seed(0, s, t, k) for s in ("libero_spatial", "libero_object") for t in range(3)
                for k in range(5)}) == 30


@pytest.mark.sim
@pytest.mark.slow
def test_generate_one_demo_in_libero_layout_and_resume(tmp_path, capsys):
    out = tmp_path / "demos"
    args = ["--suites", "libero_object", "--tasks", "5", "--demos-per-task", "1", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    files = dataset_files(out)
    assert len(files) == 1 and files[0].name.endswith("_demo.hdf5")
    assert check_libero_layout(files[0], image_size=128) == []
    with h5py.File(files[0]) as f:
        attrs = f["data"].attrs
        env_args = json.loads(attrs["env_args"])
        assert env_args["env_kwargs"]["camera_heights"] == 128
        assert "(:goal" in attrs["bddl_file_content"]
        g = f["data/demo_0"]
        assert "<mujoco" in g.attrs["model_file"]
        raw = g["obs/agentview_rgb"][()]
        states = g["states"][()]
    with LiberoHdf5Reader(files[0]) as r:
        ep = r[0]
    t = len(ep)
    assert 20 < t <= 0.6 * 280  # an expert episode, kept under 60% of libero_object's step limit
    assert ep.instruction == "pick up the tomato sauce and place it in the basket"
    assert ep.dones[-1] == 1 and ep.dones[0] == 0 and ep.rewards[-1] == 1
    assert set(np.unique(ep.actions[:, 6])) <= {-1.0, 1.0} and ep.actions[-1, 6] == -1.0  # released
    assert ep.actions[:, 6].max() == 1.0  # it grasped
    np.testing.assert_array_equal(ep.obs["agentview_rgb"], flip_image(raw, "rot180"))
    assert raw.std() > 10 and ep.obs["eye_in_hand_rgb"].std() > 5  # rendered scenes, not blank frames
    assert not np.array_equal(raw[0], raw[-1])  # the scene changed
    assert len(np.unique(states[:, 0])) == t  # states advance (element 0 is sim time)
    # proprio moved with the arm and matches LIBERO's ee_states = [pos, axis-angle]
    assert np.linalg.norm(ep.obs["ee_pos"][-1] - ep.obs["ee_pos"][0]) > 0.05
    np.testing.assert_allclose(ep.obs["ee_states"][:, :3], ep.obs["ee_pos"])
    stats = json.loads((out / "libero_object" / "dataset_statistics.json").read_text())
    assert stats["libero_object_scripted_no_noops"]["num_trajectories"] == 1
    report = json.loads((out / "generation_report.json").read_text())
    assert report["tasks"][0]["kept"] == 1
    capsys.readouterr()

    # the same command again: nothing to do, the file is kept as is
    assert main(args) == 0
    report = json.loads((out / "generation_report.json").read_text())
    assert report["tasks"][0]["attempts"] == 0 and report["tasks"][0]["kept"] == 1
    with h5py.File(files[0]) as f:
        assert f["data"].attrs["num_demos"] == 1
