"""LIBERO installed by `make setup`: imports without prompting, builds an env offscreen and steps."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("robosuite", reason="LIBERO's simulation stack is not installed")


@pytest.mark.sim
def test_import_never_prompts(tmp_path):
    # stdin closed: an input() call would raise EOFError and fail the import.
    res = subprocess.run([sys.executable, "-c", "import libero.libero as l; print(l.get_libero_path('assets'))"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "http_proxy": "http://127.0.0.1:9",
                              "https_proxy": "http://127.0.0.1:9"})
    assert res.returncode == 0, res.stderr
    assert "Do you want" not in res.stdout
    assets = res.stdout.strip().splitlines()[-1]
    assert os.path.isdir(os.path.join(assets, "scenes")), assets


@pytest.mark.sim
@pytest.mark.slow
def test_spatial_env_steps_and_moves():
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    suite = benchmark.get_benchmark_dict()["libero_spatial"]()
    task = suite.get_task(0)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=64, camera_widths=64)
    try:
        env.seed(0)
        env.reset()
        obs = env.set_init_state(suite.get_task_init_states(0)[0])
        start = obs["robot0_eef_pos"].copy()
        for _ in range(10):
            obs, _, _, _ = env.step([1.0, 0, 0, 0, 0, 0, -1])  # +x in controller units
        assert obs["agentview_image"].shape == (64, 64, 3)
        assert obs["agentview_image"].dtype == np.uint8
        assert obs["agentview_image"].std() > 5  # a rendered scene, not a blank frame
        moved = obs["robot0_eef_pos"] - start
        assert moved[0] > 0.05, moved  # the end effector went +x
        assert abs(moved[1]) < moved[0]
    finally:
        env.close()
