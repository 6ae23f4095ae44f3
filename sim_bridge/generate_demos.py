"""``vla-ros generate-demos``: scripted-expert demonstrations in LIBERO's HDF5 layout.

For each task: fresh random scenes (``LiberoEpisodeEnv.reset_random``; never the suites' fixed init
states, which are the evaluation set), a physics-only rollout of :class:`vla_ros.sim.expert.ScriptedExpert`
storing the MuJoCo state of every step, and, for successful rollouts only, the images and proprio
rendered afterwards by replaying the saved states in a second env with cameras (LIBERO's own
``regenerate_obs_from_state``). Failed rollouts cost physics only.

Files: ``<out>/<suite>/<bddl name>_demo.hdf5`` (LIBERO's naming), ``<out>/<suite>/dataset_statistics.json``
and ``<out>/generation_report.json``. Rerunning the same command resumes: demos already in a file are
kept and the attempt counter continues after the last stored one, so the same command gives the same
data. Attempt ``k`` of a task uses the scene seed ``[seed, suite, task, k]``.

With ``--policy CKPT`` the rollouts are DAgger rounds (``vla_ros.sim.dagger``): a trained policy drives
(the expert's action is executed only with probability ``--beta``), the expert labels every visited state,
and the physics env renders the cameras the policy needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vla_ros.conventions import DATASET_IMAGE_SIZE, LIBERO_SUITES, max_steps_for

log = logging.getLogger(__name__)

CAMERA_OBS = {"agentview_rgb": "agentview_image", "eye_in_hand_rgb": "robot0_eye_in_hand_image"}


@dataclass
class GenConfig:
    out: str
    demos_per_task: int = 50
    seed: int = 0
    image_size: int = DATASET_IMAGE_SIZE
    max_len_frac: float = 0.6  # keep demos no longer than this fraction of the suite's step limit
    done_steps: int = 3  # extra steps recorded after success, all flagged done (with the success step)
    max_attempts_factor: float = 3.0  # give up a task after demos_per_task * this attempts
    model_xml: bool = True  # store LIBERO's per-demo model_file (needed by LIBERO's replay tools)
    # DART (Laskey et al. 2017): execute expert + noise, record the clean expert action, so the data
    # shows how to get back from states a perfect expert never visits. AR(1) noise in controller units
    # (1 = 5 cm / 0.5 rad per step) on the six arm dimensions; the gripper is never perturbed.
    noise_std: float = 0.0
    noise_rot_std: float = 0.0
    noise_corr: float = 0.8  # AR(1) coefficient: correlated noise drifts the arm off the expert's path
    hard_reset: bool = True  # rebuild the model each attempt (see generate_task)
    # DAgger (Ross et al. 2011): a trained policy drives, the expert labels (vla_ros.sim.dagger).
    policy: str = ""  # checkpoint directory; empty: the expert drives (plain demonstrations)
    policy_backend: str = "native"
    policy_options: dict = field(default_factory=dict)
    beta: float = 1.0  # probability that a step executes the expert's action instead of the policy's


@dataclass
class TaskReport:
    suite: str
    task_id: int
    instruction: str
    file: str
    kept: int = 0
    attempts: int = 0
    failures: int = 0
    too_long: int = 0
    lengths: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def success_rate(self) -> float:
        return (self.attempts - self.failures) / self.attempts if self.attempts else float("nan")


def attempt_seed(seed: int, suite: str, task_id: int, k: int) -> int:
    """The scene seed of attempt ``k`` (stable across runs and workers)."""
    ss = np.random.SeedSequence([seed, LIBERO_SUITES.index(suite), task_id, k])
    return int(ss.generate_state(1)[0])


def task_file(out: Path, suite: str, bddl_file: str) -> Path:
    return out / suite / (Path(bddl_file).stem + "_demo.hdf5")


def rollout(env, expert, seed: int, cfg: GenConfig,
            driver=None) -> tuple[bool, np.ndarray, np.ndarray, np.ndarray, str]:
    """One episode labelled by the expert. Returns (success, states, actions, dones, reason).

    Without ``driver`` the expert drives (physics only). With a ``driver`` (``vla_ros.sim.dagger.PolicyDriver``)
    each step executes the expert's action with probability ``cfg.beta``, else the driver's; the stored
    action is the expert's either way, and DART noise is added to the expert's executed steps only.
    """
    obs = env.reset_random(seed)
    expert.rng = np.random.default_rng(seed)
    expert.reset()
    if driver is not None:
        driver.reset()
    mix_rng = np.random.default_rng([seed, 2])
    states, actions = [], []
    limit = round(cfg.max_len_frac * env.max_steps)
    success_at = None
    noise_rng = np.random.default_rng([seed, 1])
    scale = np.r_[np.full(3, cfg.noise_std), np.full(3, cfg.noise_rot_std), 0.0]
    innovation = np.sqrt(1.0 - cfg.noise_corr**2) * scale
    noise = np.zeros(7)
    while True:
        states.append(env.env.get_sim_state().copy())
        a = expert.act()
        actions.append(a)  # the label is always the clean expert action
        if scale.any():
            noise = cfg.noise_corr * noise + innovation * noise_rng.standard_normal(7)
        executed = np.clip(a + noise, -1.0, 1.0)
        if driver is not None and mix_rng.random() >= cfg.beta:
            proposed = driver.act(obs)
            if proposed is not None:  # an invalid policy output: the expert's action stands in
                executed = proposed
        res = env.step(executed)
        obs = res.obs
        if res.success and success_at is None:
            success_at = len(actions) - 1
        if success_at is not None and (len(actions) - 1 - success_at >= cfg.done_steps or not res.success):
            break
        if env.done:
            break
    if success_at is None:
        return False, np.asarray(states), np.asarray(actions), np.zeros(0), env.reason or "failed"
    if not env.success:  # success did not hold during the extra steps: cut them
        states, actions = states[:success_at + 1], actions[:success_at + 1]
    dones = np.zeros(len(actions), dtype=np.uint8)
    dones[success_at:] = 1
    if len(actions) > limit:
        return False, np.asarray(states), np.asarray(actions), dones, "too_long"
    return True, np.asarray(states), np.asarray(actions), dones, "success"


def render_episode(render_env, states: np.ndarray) -> dict[str, np.ndarray]:
    """Replay saved states in the camera env: raw images (as LIBERO renders them) and proprio."""
    from robosuite.utils.transform_utils import quat2axisangle

    frames: dict[str, list] = {k: [] for k in (*CAMERA_OBS, "ee_pos", "ee_ori", "gripper_states", "joint_states")}
    inner = render_env.env  # LIBERO's OffScreenRenderEnv
    for s in states:
        raw = inner.regenerate_obs_from_state(s)
        for k, cam in CAMERA_OBS.items():
            frames[k].append(np.asarray(raw[cam], dtype=np.uint8))
        frames["ee_pos"].append(np.asarray(raw["robot0_eef_pos"], dtype=np.float64))
        frames["ee_ori"].append(quat2axisangle(np.asarray(raw["robot0_eef_quat"], dtype=np.float64)))
        frames["gripper_states"].append(np.asarray(raw["robot0_gripper_qpos"], dtype=np.float64))
        frames["joint_states"].append(np.asarray(raw["robot0_joint_pos"], dtype=np.float64))
    obs = {k: np.stack(v) for k, v in frames.items()}
    obs["ee_states"] = np.concatenate([obs["ee_pos"], obs["ee_ori"]], axis=1)
    return obs


def generate_task(suite: str, task_id: int, cfg: GenConfig, progress=None) -> TaskReport:
    """Fill one task's file up to ``cfg.demos_per_task`` successful demos (resuming what is there)."""
    from vla_ros.data.episode import Episode
    from vla_ros.sim.expert import ScriptedExpert
    from vla_ros.sim.libero_env import LiberoEpisodeEnv

    t0 = time.monotonic()
    driver = None
    cameras: tuple[str, ...] = ()
    if cfg.policy:
        from vla_ros.sim.dagger import PolicyDriver

        driver = PolicyDriver.load(cfg.policy, cfg.policy_backend, cfg.policy_options)
        cameras = driver.cameras
    phys = LiberoEpisodeEnv(suite, task_id, cameras=cameras, image_size=cfg.image_size, end_on_success=False)
    if driver is not None:
        driver.instruction = phys.instruction
    out = task_file(Path(cfg.out), suite, phys.task.bddl_file)
    report = TaskReport(suite, task_id, phys.instruction, str(out))
    render = None
    try:
        # A soft reset (no model rebuild) samples placements against stale fixture poses: in
        # libero_spatial task 7 it put "the bowl on the stove" 25 cm beside the stove, out of reach, so
        # every attempt failed, and the scenes of other tasks could drift from the evaluation's. A hard
        # reset (as the evaluation does) costs ~1.3 s per attempt on the physics-only env.
        phys.env.env.hard_reset = cfg.hard_reset
        writer = _open_writer(out, phys, cfg)
        with writer:
            keys = writer.demo_keys()
            k = 1 + max((int(writer.grp[key].attrs.get("attempt", -1)) for key in keys), default=-1)
            report.kept = len(keys)
            if progress is not None and keys:
                progress(len(keys))
            max_attempts = int(np.ceil(cfg.demos_per_task * cfg.max_attempts_factor))
            expert = ScriptedExpert(phys, seed=cfg.seed)
            while report.kept < cfg.demos_per_task and k < max_attempts:
                s = attempt_seed(cfg.seed, suite, task_id, k)
                ok, states, actions, dones, reason = rollout(phys, expert, s, cfg, driver)
                report.attempts += 1
                if not ok:
                    report.failures += reason != "too_long"
                    report.too_long += reason == "too_long"
                    log.info("%s task %d attempt %d: %s", suite, task_id, k, reason)
                    k += 1
                    continue
                if render is None:
                    render = LiberoEpisodeEnv(suite, task_id, cameras=("agentview", "wrist"),
                                              image_size=cfg.image_size)
                    render.env.reset()
                obs = render_episode(render, states)
                attrs = {"attempt": k, "seed": s, "expert_seed": s, "fast_render": True,
                         "model_file": phys.env.env.sim.model.get_xml() if cfg.model_xml else ""}
                if driver is not None:
                    attrs.update(dagger_policy=cfg.policy, dagger_beta=cfg.beta)
                writer.add(Episode(actions=actions, obs=obs, states=states, dones=dones,
                                   instruction=phys.instruction, attrs=attrs))
                report.kept += 1
                report.lengths.append(len(actions))
                if progress is not None:
                    progress(1)
                k += 1
    finally:
        phys.close()
        if render is not None:
            render.close()
        if driver is not None:
            driver.close()
    report.seconds = time.monotonic() - t0
    return report


def _open_writer(out: Path, env, cfg: GenConfig):
    """A writer whose file attributes are the ones LIBERO's dataset scripts write for this task."""
    import robosuite.macros as macros
    from libero.libero import get_libero_path
    from libero.libero.envs.bddl_utils import get_problem_info

    from vla_ros.data.libero_hdf5 import LiberoHdf5Writer

    bddl = os.path.join(get_libero_path("bddl_files"), env.task.problem_folder, env.task.bddl_file)
    info = get_problem_info(bddl)
    env_kwargs = {"bddl_file_name": bddl, "camera_heights": cfg.image_size, "camera_widths": cfg.image_size,
                  "control_freq": 20, "camera_names": ["agentview", "robot0_eye_in_hand"],
                  "has_renderer": False, "has_offscreen_renderer": True, "use_camera_obs": True,
                  "ignore_done": True, "reward_shaping": True, "vla_ros_fast_render": True}
    return LiberoHdf5Writer(
        out, env_name=info["problem_name"], problem_name=info["problem_name"],
        language_instruction=info["language_instruction"], domain_name=info.get("domain_name", "robosuite"),
        bddl_file_name=bddl, bddl_file_content=Path(bddl).read_text(), env_kwargs=env_kwargs,
        image_convention=macros.IMAGE_CONVENTION,
    )


def _worker(args: tuple) -> dict:
    suite, task_id, cfg_dict, queue = args
    logging.basicConfig(level=logging.WARNING)

    def progress(n: int) -> None:
        queue.put(n)

    return asdict(generate_task(suite, task_id, GenConfig(**cfg_dict), progress))


def write_statistics(out: Path, suites: list[str]) -> list[Path]:
    """``<out>/<suite>/dataset_statistics.json`` over every file of the suite (no-ops filtered)."""
    from vla_ros.data.libero_hdf5 import LiberoHdf5Reader, dataset_files
    from vla_ros.data.statistics import write_statistics as write

    written = []
    for suite in suites:
        d = out / suite
        if not d.is_dir():
            continue

        def episodes(d=d):
            for p in dataset_files(d):
                with LiberoHdf5Reader(p, load_images=False) as r:
                    yield from r

        written.append(write(episodes(), d, key=f"{suite}_scripted_no_noops"))
    return written


def parse_tasks(spec: str, suite: str) -> list[int]:
    from vla_ros.sim.libero_env import task_names

    n = len(task_names(suite))
    if spec == "all":
        return list(range(n))
    ids = [int(t) for t in spec.split(",")]
    bad = [t for t in ids if not 0 <= t < n]
    if bad:
        raise ValueError(f"task ids {bad} out of range 0..{n - 1} for {suite}")
    return ids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vla-ros generate-demos", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--suites", nargs="+", default=["libero_spatial", "libero_object"], choices=LIBERO_SUITES)
    p.add_argument("--tasks", default="all", help="comma-separated task ids (of every suite) or 'all'")
    p.add_argument("--demos-per-task", type=int, default=50)
    p.add_argument("--workers", type=int, default=1, help="parallel processes (one task each at a time)")
    p.add_argument("--out", default="data/demos")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=DATASET_IMAGE_SIZE)
    p.add_argument("--max-len-frac", type=float, default=0.6, help="drop demos longer than this x step limit")
    p.add_argument("--done-steps", type=int, default=3, help="steps recorded after success, flagged done")
    p.add_argument("--no-model-xml", action="store_true", help="omit LIBERO's per-demo model_file attribute")
    p.add_argument("--noise", type=float, default=0.0,
                   help="DART: std of AR(1) noise added to the executed xyz actions (controller units)")
    p.add_argument("--noise-rot", type=float, default=None, help="same for the rotation dims (default: --noise/2)")
    p.add_argument("--soft-reset", action="store_true", help="no model rebuild per attempt (faster, see docs)")
    p.add_argument("--policy", default="", help="DAgger: checkpoint that drives the rollouts (the expert labels)")
    p.add_argument("--policy-backend", default="native", help="backend of --policy")
    p.add_argument("--policy-options", default="{}", help="YAML mapping of backend options of --policy")
    p.add_argument("--beta", type=float, default=0.5,
                   help="DAgger: probability that a step executes the expert's action (with --policy)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.demos_per_task < 1 or a.workers < 1:
        p.error("--demos-per-task and --workers must be >= 1")
    if not 0.0 <= a.beta <= 1.0:
        p.error("--beta must be in [0, 1]")
    import yaml

    policy_options = yaml.safe_load(a.policy_options) or {}
    if not isinstance(policy_options, dict):
        p.error(f"--policy-options must be a YAML mapping, got {a.policy_options!r}")
    os.environ.setdefault("MUJOCO_GL", "egl")
    cfg = GenConfig(out=a.out, demos_per_task=a.demos_per_task, seed=a.seed, image_size=a.image_size,
                    max_len_frac=a.max_len_frac, done_steps=a.done_steps, model_xml=not a.no_model_xml,
                    noise_std=a.noise, noise_rot_std=a.noise / 2 if a.noise_rot is None else a.noise_rot,
                    hard_reset=not a.soft_reset, policy=a.policy, policy_backend=a.policy_backend,
                    policy_options=policy_options, beta=a.beta if a.policy else 1.0)
    units = [(s, t) for s in a.suites for t in parse_tasks(a.tasks, s)]
    for s in a.suites:
        max_steps_for(s)  # validates

    from tqdm import tqdm

    bar = tqdm(total=len(units) * a.demos_per_task, desc="demos", unit="demo", disable=a.no_progress,
               file=sys.stderr)
    reports: list[dict] = []
    if a.workers == 1:
        for s, t in units:
            reports.append(asdict(generate_task(s, t, cfg, bar.update)))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = mp.get_context("spawn")  # a fresh interpreter per worker: MuJoCo/EGL state is not fork-safe
        with ctx.Manager() as manager:
            queue = manager.Queue()
            with ProcessPoolExecutor(max_workers=a.workers, mp_context=ctx) as pool:
                futures = [pool.submit(_worker, (s, t, asdict(cfg), queue)) for s, t in units]
                pending = set(futures)
                while pending:
                    while not queue.empty():
                        bar.update(queue.get())
                    finished = {f for f in pending if f.done()}
                    for f in finished:
                        reports.append(f.result())
                    pending -= finished
                    time.sleep(0.2)
                while not queue.empty():
                    bar.update(queue.get())
                for f in as_completed(futures):
                    f.result()
    bar.close()
    out = Path(a.out)
    stats = write_statistics(out, a.suites)
    reports.sort(key=lambda r: (r["suite"], r["task_id"]))
    report_path = out / "generation_report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps({"config": asdict(cfg), "tasks": reports}, indent=1))
    print("| suite | task | kept | attempts this run | expert success | too long | mean length |")
    print("|---|---|---|---|---|---|---|")
    for r in reports:
        rate = (r["attempts"] - r["failures"]) / r["attempts"] if r["attempts"] else float("nan")
        mean_len = f"{np.mean(r['lengths']):.0f}" if r["lengths"] else "-"
        print(f"| {r['suite']} | {r['task_id']} | {r['kept']}/{cfg.demos_per_task} | {r['attempts']} | "
              f"{rate:.0%} | {r['too_long']} | {mean_len} |")
    print(f"report: {report_path}; statistics: {', '.join(map(str, stats))}")
    short = [r for r in reports if r["kept"] < cfg.demos_per_task]
    return 1 if short else 0


if __name__ == "__main__":
    raise SystemExit(main())
