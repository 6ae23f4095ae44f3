"""DAgger rollouts: the policy's actions are executed, the expert's are stored (vla_ros.sim.dagger)."""

from __future__ import annotations

from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from vla_ros.sim.generate_demos import GenConfig, main, rollout


class FakeEnv:
    """The parts of ``LiberoEpisodeEnv`` that ``rollout`` uses; success once the state reaches 10."""

    max_steps = 50

    def __init__(self):
        self.executed: list[np.ndarray] = []
        self.env = SimpleNamespace(get_sim_state=lambda: np.array([self.x]))

    def reset_random(self, seed):
        self.x, self.done, self.success, self.reason = 0.0, False, False, ""
        return SimpleNamespace(x=self.x)

    def step(self, action):
        self.executed.append(np.asarray(action, dtype=float))
        self.x += float(action[0])
        self.success = self.x >= 10.0
        if len(self.executed) >= self.max_steps:
            self.done, self.reason = True, "step_limit"
        return SimpleNamespace(obs=SimpleNamespace(x=self.x), success=self.success, done=self.done, reason=self.reason)


class FakeExpert:
    """Labels every state with +1 on x (its label must never be overwritten by the driver's proposal)."""

    rng = None

    def reset(self):
        self.calls = 0

    def act(self):
        self.calls += 1
        return np.r_[1.0, np.zeros(5), -1.0]


class FakeDriver:
    def __init__(self, proposal):
        self.proposal, self.seen, self.resets = proposal, [], 0

    def reset(self):
        self.resets += 1

    def act(self, obs):
        self.seen.append(obs.x)
        return None if self.proposal is None else self.proposal.copy()


def test_the_policy_drives_and_the_expert_labels():
    env, expert = FakeEnv(), FakeExpert()
    driver = FakeDriver(np.r_[0.5, np.zeros(5), 1.0])  # half the expert's speed, gripper closed
    ok, states, actions, dones, reason = rollout(env, expert, 3, GenConfig(out="", beta=0.0, max_len_frac=1.0),
                                                 driver)
    assert ok and reason == "success" and driver.resets == 1
    # every executed step was the driver's, so it took 20 steps where the expert alone takes 10
    assert all(a[0] == 0.5 and a[6] == 1.0 for a in env.executed)
    assert len(actions) == len(states) == len(dones) == 20 + GenConfig.done_steps
    np.testing.assert_array_equal(actions[:, 0], 1.0)  # the stored labels are the expert's
    np.testing.assert_array_equal(actions[:, 6], -1.0)
    assert driver.seen[0] == 0.0 and driver.seen[1] == 0.5  # it saw each new observation
    assert dones[19] == 1 and dones[18] == 0


def test_beta_mixes_expert_and_policy_steps_and_invalid_outputs_fall_back_to_the_expert():
    env, expert = FakeEnv(), FakeExpert()
    driver = FakeDriver(np.r_[0.5, np.zeros(6)])
    rollout(env, expert, 3, GenConfig(out="", beta=0.5, max_len_frac=1.0), driver)
    from_policy = sum(a[0] == 0.5 for a in env.executed)
    assert 0 < from_policy < len(env.executed)  # both drove
    assert len(driver.seen) == from_policy  # the policy is only asked when its action is used

    env, driver = FakeEnv(), FakeDriver(None)  # every output invalid: the expert's actions run
    ok, *_ = rollout(env, expert, 3, GenConfig(out="", beta=0.0, max_len_frac=1.0), driver)
    assert ok and all(a[0] == 1.0 for a in env.executed) and len(env.executed) == 10 + GenConfig.done_steps

    env, driver = FakeEnv(), FakeDriver(np.r_[0.5, np.zeros(6)])
    rollout(env, expert, 3, GenConfig(out="", beta=1.0, max_len_frac=1.0), driver)
    assert driver.seen == []  # beta 1: plain demonstrations


def test_dagger_options_are_checked(capsys):
    with pytest.raises(SystemExit):
        main(["--policy", "x", "--beta", "1.5", "--out", "unused"])
    assert "--beta must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--policy", "x", "--policy-options", "[1, 2]", "--out", "unused"])
    assert "--policy-options must be a YAML mapping" in capsys.readouterr().err


@pytest.mark.sim
@pytest.mark.slow
def test_a_dagger_round_with_the_shipped_policy_writes_expert_labelled_demos(tmp_path):
    pytest.importorskip("robosuite", reason="LIBERO's simulation stack is not installed")
    from vla_ros.shipped import BUNDLED_MODEL

    shipped_model_dir = BUNDLED_MODEL
    out = tmp_path / "dagger"
    args = ["--suites", "libero_spatial", "--tasks", "3", "--demos-per-task", "1", "--seed", "5",
            "--max-len-frac", "1.0", "--policy", str(shipped_model_dir), "--policy-options", "{threads: 1}",
            "--beta", "0.5", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    (path,) = (out / "libero_spatial").glob("*_demo.hdf5")
    with h5py.File(path) as f:
        g = f["data/demo_0"]
        assert g.attrs["dagger_policy"] == str(shipped_model_dir) and g.attrs["dagger_beta"] == 0.5
        actions, dones = g["actions"][()], g["dones"][()]
    assert dones[-1] == 1 and set(np.unique(actions[:, 6])) <= {-1.0, 1.0}  # expert labels, episode ended done
