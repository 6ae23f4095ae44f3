"""LIBERO-format HDF5 writer/reader/structure check, statistics and the compact transport (no LIBERO needed)."""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import pytest

from vla_ros.conventions import flip_image
from vla_ros.data.episode import Episode, axis_angle_to_quat_xyzw, quat_xyzw_to_axis_angle
from vla_ros.data.libero_hdf5 import LiberoHdf5Reader, LiberoHdf5Writer, check_libero_layout
from vla_ros.data.statistics import compute_statistics, noop_mask, write_statistics
from vla_ros.normalization import ActionNormalizer, load_statistics
from vla_ros.training.data.compact import CompactDataset, dir_size, export_compact, export_hdf5_dir


def make_episode(t: int = 12, seed: int = 0, size: int = 32, instruction: str = "put the bowl on the plate") -> Episode:
    """A synthetic demo whose frames are smooth (a moving square on a gradient), like rendered scenes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    frames = []
    for i in range(t):
        img = np.stack([xx * 4 + i, yy * 4, np.full_like(xx, 80 + seed * 10)], -1).astype(np.uint8)
        img[2 + i % (size - 8):8 + i % (size - 8), 4:10] = [250, 30, 30]  # asymmetric: a flip is visible
        frames.append(img)
    agent = np.stack(frames)
    wrist = agent[:, ::-1].copy()
    actions = rng.uniform(-1, 1, (t, 7))
    actions[:, 6] = np.where(np.arange(t) < t // 2, -1.0, 1.0)
    ee_pos = rng.normal(size=(t, 3))
    ee_ori = rng.uniform(-1, 1, (t, 3))
    obs = {"agentview_rgb": agent, "eye_in_hand_rgb": wrist, "ee_pos": ee_pos, "ee_ori": ee_ori,
           "ee_states": np.concatenate([ee_pos, ee_ori], 1), "gripper_states": rng.uniform(-0.04, 0.04, (t, 2)),
           "joint_states": rng.normal(size=(t, 7))}
    return Episode(actions=actions, obs=obs, states=rng.normal(size=(t, 20)), instruction=instruction,
                   attrs={"seed": seed})


def write_file(path, episodes) -> None:
    with LiberoHdf5Writer(path, env_name="libero_tabletop_manipulation", problem_name="libero_tabletop_manipulation",
                          language_instruction="Pick the akita black bowl", bddl_file_name="x.bddl") as w:
        for ep in episodes:
            w.add(ep)


def test_quaternion_axis_angle_round_trip():
    aa = np.array([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [np.pi - 0.01, 0.0, 0.0]])
    back = quat_xyzw_to_axis_angle(axis_angle_to_quat_xyzw(aa))
    np.testing.assert_allclose(back, aa, atol=1e-9)
    # robosuite's down-pointing gripper (180 deg about x) has axis-angle (pi, 0, 0)
    np.testing.assert_allclose(quat_xyzw_to_axis_angle(np.array([1.0, 0, 0, 0])), [np.pi, 0, 0], atol=1e-9)


def test_episode_rejects_bad_input():
    ep = make_episode(5)
    with pytest.raises(ValueError, match="actions must be"):
        Episode(actions=np.zeros((5, 6)), obs={})
    with pytest.raises(ValueError, match="steps"):
        Episode(actions=ep.actions, obs={"ee_pos": ep.obs["ee_pos"][:3]})
    with pytest.raises(ValueError, match="uint8"):
        Episode(actions=ep.actions, obs={"agentview_rgb": ep.obs["agentview_rgb"].astype(np.float32)})


def test_written_file_passes_libero_layout_and_round_trips(tmp_path):
    path = tmp_path / "pick_up_the_black_bowl_demo.hdf5"
    eps = [make_episode(12, 0), make_episode(9, 1)]
    write_file(path, eps)
    assert check_libero_layout(path, image_size=32) == []
    with h5py.File(path) as f:
        assert f["data"].attrs["num_demos"] == 2 and f["data"].attrs["total"] == 21
        assert json.loads(f["data"].attrs["problem_info"])["language_instruction"] == "Pick the akita black bowl"
        g = f["data/demo_1"]
        assert g["robot_states"].shape == (9, 9)
        assert g["dones"][()].tolist() == [0] * 8 + [1] and g["rewards"][-1] == 1
        # stored raw, exactly as given (LIBERO's files hold the upside-down render)
        np.testing.assert_array_equal(g["obs/agentview_rgb"][()], eps[1].obs["agentview_rgb"])
        np.testing.assert_allclose(g.attrs["init_state"], eps[1].states[0])
    with LiberoHdf5Reader(path) as r:  # default flip: rot180, the same function the bridge uses
        assert len(r) == 2
        back = r[1]
        np.testing.assert_array_equal(back.obs["agentview_rgb"], flip_image(eps[1].obs["agentview_rgb"], "rot180"))
        np.testing.assert_array_equal(back.actions, eps[1].actions)
        np.testing.assert_array_equal(back.states, eps[1].states)
        np.testing.assert_allclose(back.robot_states[:, 5:], axis_angle_to_quat_xyzw(eps[1].obs["ee_ori"]))
        assert back.instruction == "put the bowl on the plate"
        assert back.attrs["seed"] == 1
    with LiberoHdf5Reader(path, image_flip="none") as r:
        np.testing.assert_array_equal(r[0].obs["eye_in_hand_rgb"], eps[0].obs["eye_in_hand_rgb"])


def test_writer_appends_after_existing_demos(tmp_path):
    path = tmp_path / "t_demo.hdf5"
    write_file(path, [make_episode(5, 0)])
    write_file(path, [make_episode(6, 1)])  # reopen: resumable generation appends
    assert check_libero_layout(path) == []
    with LiberoHdf5Reader(path) as r:
        assert [len(e) for e in r] == [5, 6]
        assert r.instruction == "t"  # LIBERO derives the benchmark instruction from the file name


def test_layout_check_finds_problems(tmp_path):
    path = tmp_path / "bad.hdf5"
    write_file(path, [make_episode(5, 0)])
    with h5py.File(path, "a") as f:
        del f["data/demo_0/obs/joint_states"]
        f["data"].attrs["total"] = 99
        del f["data/demo_0/dones"]
        f["data/demo_0"].create_dataset("dones", data=np.zeros(5, np.uint8))
    errors = check_libero_layout(path)
    assert any("joint_states" in e for e in errors)
    assert any("total=99" in e for e in errors)
    assert any("dones does not mark" in e for e in errors)


def test_noop_filter_follows_openvla_but_keeps_done_frames():
    a = np.array([
        [0.0, 0, 0, 0, 0, 0, -1],  # 0: first step, no arm motion -> no-op
        [0.5, 0, 0, 0, 0, 0, -1],  # 1: moves
        [0.0, 0, 0, 0, 0, 0, 1],  # 2: gripper switches -> kept
        [0.0, 0, 0, 0, 0, 0, 1],  # 3: no-op
        [0.0, 0, 0, 0, 0, 5e-5, 1],  # 4: below threshold -> no-op
        [0.0, 0, 0, 0, 0, 0, 1],  # 5: no-op but flagged done -> kept
    ])
    dones = np.array([0, 0, 0, 0, 0, 1])
    assert noop_mask(a, dones).tolist() == [True, False, False, True, True, False]
    assert noop_mask(a).tolist()[-1] is True


def test_statistics_match_hand_computation(tmp_path):
    obs = lambda t: {"ee_states": np.arange(t * 6, dtype=float).reshape(t, 6),  # noqa: E731
                     "gripper_states": np.ones((t, 2))}
    a1 = np.array([[0.1, 0, 0, 0, 0, 0, -1], [0, 0, 0, 0, 0, 0, -1], [0.3, 0.2, 0, 0, 0, 0, 1]])
    a2 = np.array([[0.5, -0.2, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1]])  # last: no-op but done (kept)
    eps = [Episode(actions=a1, obs=obs(3)), Episode(actions=a2, obs=obs(2))]
    stats = compute_statistics(eps)
    # kept rows: a1[0], a1[2], a2[0], a2[1]  (a1[1] is a no-op)
    assert stats["num_transitions"] == 4 and stats["num_trajectories"] == 2
    np.testing.assert_allclose(stats["action"]["mean"][:2], [(0.1 + 0.3 + 0.5 + 0) / 4, (0 + 0.2 - 0.2 + 0) / 4])
    np.testing.assert_allclose(stats["action"]["mean"][6], (-1 + 1 + 1 + 1) / 4)
    np.testing.assert_allclose(stats["action"]["max"][0], 0.5)
    np.testing.assert_allclose(stats["action"]["min"][1], -0.2)
    x = np.array([0.1, 0.3, 0.5, 0.0])
    np.testing.assert_allclose(stats["action"]["std"][0], np.sqrt(((x - x.mean()) ** 2).mean()))
    # q01 / q99 by linear interpolation between the two smallest / largest of 4 values
    np.testing.assert_allclose(stats["action"]["q01"][0], 0.0 + 0.03 * (0.1 - 0.0))
    np.testing.assert_allclose(stats["action"]["q99"][0], 0.3 + 0.97 * (0.5 - 0.3))
    assert stats["action"]["mask"] == [True] * 6 + [False]
    assert len(stats["proprio"]["mean"]) == 8  # eef pos + axis-angle + 2 finger joints
    assert stats["gripper_convention"] == "libero_sign"
    assert compute_statistics(eps, filter_noops=False)["num_transitions"] == 5
    # written in the layout the policy side reads
    path = write_statistics(eps, tmp_path, key="toy_no_noops")
    loaded = load_statistics(path)
    norm = ActionNormalizer.from_statistics(loaded, "toy_no_noops")
    np.testing.assert_allclose(norm.q99[0], stats["action"]["q99"][0])


def test_compact_export_fits_and_round_trips(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    eps = [make_episode(30, s, size=64) for s in range(4)]
    write_file(src / "a_demo.hdf5", eps[:2])
    write_file(src / "b_demo.hdf5", eps[2:])
    write_statistics(iter(eps), src, key="toy")
    out = export_hdf5_dir(src, tmp_path / "compact")
    raw_bytes = sum(e.obs[c].nbytes for e in eps for c in ("agentview_rgb", "eye_in_hand_rgb"))
    assert dir_size(out) < raw_bytes / 4  # video compression of smooth frames
    ds = CompactDataset(out)  # default flip rot180, like the HDF5 reader
    assert len(ds) == 4
    assert ds.statistics()["toy"]["num_trajectories"] == 4
    for orig, back in zip(eps, ds, strict=True):
        assert len(back) == len(orig)
        np.testing.assert_allclose(back.actions, orig.actions, atol=1e-6)
        np.testing.assert_array_equal(back.dones, orig.dones)
        np.testing.assert_allclose(back.obs["gripper_states"], orig.obs["gripper_states"], atol=1e-6)
        want = flip_image(orig.obs["agentview_rgb"], "rot180").astype(float)
        err = np.abs(back.obs["agentview_rgb"].astype(float) - want)
        assert err.mean() < 3.0, err.mean()  # near-lossless (4:4:4 chroma)
        assert back.instruction == orig.instruction
    raw = CompactDataset(out, image_flip="none")
    assert np.abs(raw[0].obs["eye_in_hand_rgb"].astype(float) - eps[0].obs["eye_in_hand_rgb"]).mean() < 3.0


def test_compact_loader_decodes_with_opencv_alone(tmp_path, monkeypatch):
    """The GPU machine may lack imageio-ffmpeg: OpenCV's decoder must give the same frames."""
    eps = [make_episode(10, s, size=32) for s in range(2)]
    out = export_compact([("shard", eps)], tmp_path / "c")
    with_ffmpeg = CompactDataset(out)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import now raises ImportError
    with_cv2 = CompactDataset(out)
    for a, b in zip(with_ffmpeg, with_cv2, strict=True):
        np.testing.assert_array_equal(a.obs["agentview_rgb"], b.obs["agentview_rgb"])
        np.testing.assert_array_equal(a.obs["eye_in_hand_rgb"], b.obs["eye_in_hand_rgb"])


def test_compact_rejects_other_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a compact dataset"):
        CompactDataset(tmp_path)
    with pytest.raises(ValueError, match="no episodes"):
        export_compact([], tmp_path / "x")


def test_training_data_imports_neither_ros_nor_libero():
    """training/ runs on the GPU machine: no rclpy, no LIBERO/robosuite/MuJoCo behind its imports."""
    import subprocess

    code = ("import sys, vla_ros.training.data, vla_ros.training.data.bag_convert, vla_ros.training.data.compact, "
            "vla_ros.data.statistics, vla_ros.data.libero_hdf5; "
            "print(sorted(m for m in ('rclpy', 'libero', 'robosuite', 'mujoco') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
