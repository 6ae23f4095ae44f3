"""LIBERO's HDF5 dataset layout: writer, reader and a structure check (h5py only, no LIBERO).

The layout follows LIBERO's ``scripts/create_dataset.py`` (github.com/Lifelong-Robot-Learning/LIBERO),
which produced the released ``*_demo.hdf5`` files::

    data.attrs: env_name, problem_info (JSON: problem_name, domain_name, language_instruction),
                macros_image_convention, bddl_file_name, bddl_file_content, env_args (JSON),
                num_demos, total
    data/demo_N/{actions, states, robot_states, rewards, dones}
    data/demo_N/obs/{agentview_rgb, eye_in_hand_rgb, ee_states, ee_pos, ee_ori, gripper_states, joint_states}
    data/demo_N.attrs: num_samples, init_state, model_file (LIBERO's) + ours: seed, instruction

So LIBERO's official files load with :class:`LiberoHdf5Reader`, and ours in LIBERO's tools. Images are
stored raw (upside down, as LIBERO renders them); the reader applies the camera-flip convention.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from vla_ros.data.episode import IMAGE_KEYS, LOWDIM_DIMS, LOWDIM_KEYS, Episode
from vla_ros.conventions import DEFAULT_IMAGE_FLIP, flip_image

log = logging.getLogger(__name__)

_DEMO_RE = re.compile(r"^demo_(\d+)$")
REQUIRED_DATA_ATTRS = ("env_name", "problem_info", "bddl_file_name", "env_args", "num_demos", "total")
REQUIRED_DEMO_KEYS = ("actions", "states", "robot_states", "rewards", "dones")


def demo_sort_key(name: str) -> int:
    m = _DEMO_RE.match(name)
    return int(m.group(1)) if m else 1 << 30


class LiberoHdf5Writer:
    """Append demonstrations to one LIBERO-format file (one task per file, like LIBERO's).

    Opening an existing file appends after its last ``demo_N`` (resumable generation); the file-level
    attributes are written once and ``num_demos``/``total`` are updated after every demo, so a file
    cut off between demos is still valid.
    """

    def __init__(self, path: str | Path, *, env_name: str, problem_name: str, language_instruction: str,
                 bddl_file_name: str = "", bddl_file_content: str = "", env_kwargs: dict | None = None,
                 domain_name: str = "robosuite", image_convention: str = "opengl"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = h5py.File(self.path, "a")
        self.grp = self.f.require_group("data")
        if "env_args" not in self.grp.attrs:
            problem_info = {"problem_name": problem_name, "domain_name": domain_name,
                            "language_instruction": language_instruction}
            env_args = {"type": 1, "env_name": env_name, "problem_name": problem_name,
                        "bddl_file": bddl_file_name, "env_kwargs": env_kwargs or {}}
            self.grp.attrs["env_name"] = env_name
            self.grp.attrs["problem_info"] = json.dumps(problem_info)
            self.grp.attrs["macros_image_convention"] = image_convention
            self.grp.attrs["bddl_file_name"] = bddl_file_name
            self.grp.attrs["bddl_file_content"] = bddl_file_content
            self.grp.attrs["env_args"] = json.dumps(env_args)
            self.grp.attrs["num_demos"] = 0
            self.grp.attrs["total"] = 0
        self.f.flush()

    def demo_keys(self) -> list[str]:
        return sorted((k for k in self.grp if _DEMO_RE.match(k)), key=demo_sort_key)

    def __len__(self) -> int:
        return len(self.demo_keys())

    def add(self, ep: Episode, *, compression: str | None = "gzip") -> str:
        """Write one demo as ``demo_<next>``; returns its key."""
        missing = [k for k in (*IMAGE_KEYS, *LOWDIM_KEYS) if k not in ep.obs]
        if missing:
            raise ValueError(f"episode lacks obs {missing} required by LIBERO's layout")
        if ep.states is None:
            raise ValueError("episode lacks MuJoCo states (required by LIBERO's layout)")
        keys = self.demo_keys()
        key = f"demo_{demo_sort_key(keys[-1]) + 1 if keys else 0}"
        g = self.grp.create_group(key)
        obs = g.create_group("obs")
        for k in IMAGE_KEYS:
            # one image per chunk: readers that index frames decompress only what they need
            img = np.asarray(ep.obs[k], dtype=np.uint8)
            obs.create_dataset(k, data=img, compression=compression, chunks=(1, *img.shape[1:]))
        for k in LOWDIM_KEYS:
            obs.create_dataset(k, data=np.asarray(ep.obs[k], dtype=np.float64))
        g.create_dataset("actions", data=ep.actions.astype(np.float64))
        g.create_dataset("states", data=np.asarray(ep.states, dtype=np.float64))
        g.create_dataset("robot_states", data=np.asarray(ep.robot_states, dtype=np.float64))
        g.create_dataset("rewards", data=ep.rewards.astype(np.uint8))
        g.create_dataset("dones", data=ep.dones.astype(np.uint8))
        g.attrs["num_samples"] = len(ep)
        if np.asarray(ep.states).shape[1] > 0:  # real-robot data has no simulator state
            g.attrs["init_state"] = np.asarray(ep.states[0], dtype=np.float64)
        g.attrs["model_file"] = str(ep.attrs.get("model_file", ""))
        for k, v in ep.attrs.items():
            if k not in ("model_file",):
                g.attrs[k] = v
        if ep.instruction:
            g.attrs["instruction"] = ep.instruction
        self.grp.attrs["num_demos"] = len(keys) + 1
        self.grp.attrs["total"] = int(self.grp.attrs["total"]) + len(ep)
        self.f.flush()
        return key

    def close(self) -> None:
        if self.f:
            self.f.close()
            self.f = None

    def __enter__(self) -> LiberoHdf5Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LiberoHdf5Reader:
    """Read a LIBERO-format file (ours or LIBERO's released ones) into :class:`Episode` objects.

    Images come back with the camera flip applied (``image_flip``, default the project's ``rot180``),
    the same function and setting the sim bridge uses, so training sees what the policy will see.
    """

    def __init__(self, path: str | Path, image_flip: str = DEFAULT_IMAGE_FLIP, load_images: bool = True):
        flip_image(np.zeros((1, 1, 3), np.uint8), image_flip)  # validate early
        self.path = Path(path)
        self.image_flip = image_flip
        self.load_images = load_images
        self.f = h5py.File(self.path, "r")
        if "data" not in self.f:
            raise ValueError(f"{self.path}: no 'data' group; not a LIBERO dataset")
        self.grp = self.f["data"]
        self.keys = sorted((k for k in self.grp if _DEMO_RE.match(k)), key=demo_sort_key)
        self.instruction: str = instruction_from_filename(self.path) or self._bddl_language()

    def _bddl_language(self) -> str:
        info = json.loads(self.grp.attrs.get("problem_info", "{}"))
        lang = info.get("language_instruction", "")
        return " ".join(lang) if isinstance(lang, list) else str(lang)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i: int) -> Episode:
        g = self.grp[self.keys[i]]
        obs = {}
        for k in g["obs"]:
            if k in IMAGE_KEYS:
                if self.load_images:
                    obs[k] = flip_image(g["obs"][k][()], self.image_flip)
            else:
                obs[k] = g["obs"][k][()]
        attrs = {k: g.attrs[k] for k in g.attrs if k not in ("model_file", "init_state", "instruction")}
        return Episode(
            actions=g["actions"][()], obs=obs,
            states=g["states"][()] if "states" in g else None,
            rewards=g["rewards"][()] if "rewards" in g else None,
            dones=g["dones"][()] if "dones" in g else None,
            robot_states=g["robot_states"][()] if "robot_states" in g else None,
            instruction=str(g.attrs.get("instruction", self.instruction)), attrs=attrs,
        )

    def actions(self, i: int) -> np.ndarray:
        return self.grp[self.keys[i]]["actions"][()]

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> LiberoHdf5Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def instruction_from_filename(path: str | Path) -> str:
    """The benchmark's instruction for a ``<task>_demo.hdf5`` file, as LIBERO derives task.language.

    LIBERO's benchmark builds the instruction from the BDDL file name (scene prefix such as
    ``KITCHEN_SCENE3_`` dropped, underscores to spaces); the BDDL's own ``:language`` line, stored in
    ``problem_info``, differs (e.g. "akita black bowl"), and evaluation prompts with the former.
    """
    stem = Path(path).name
    if not stem.endswith("_demo.hdf5"):
        return ""
    stem = stem[: -len("_demo.hdf5")]
    stem = re.sub(r"^[A-Z_]*SCENE\d+_", "", stem)
    return stem.replace("_", " ")


def check_libero_layout(path: str | Path, image_size: int | None = None) -> list[str]:
    """Problems with ``path`` against LIBERO's released layout; an empty list means it conforms."""
    errors: list[str] = []
    with h5py.File(path, "r") as f:
        if "data" not in f:
            return ["no 'data' group"]
        grp = f["data"]
        errors += [f"data lacks attribute {a!r}" for a in REQUIRED_DATA_ATTRS if a not in grp.attrs]
        for a in ("problem_info", "env_args"):
            if a in grp.attrs:
                try:
                    json.loads(grp.attrs[a])
                except (TypeError, ValueError):
                    errors.append(f"data.attrs[{a!r}] is not JSON")
        keys = [k for k in grp if _DEMO_RE.match(k)]
        if "num_demos" in grp.attrs and int(grp.attrs["num_demos"]) != len(keys):
            errors.append(f"num_demos={int(grp.attrs['num_demos'])} but {len(keys)} demo groups")
        total = 0
        for k in keys:
            g = grp[k]
            errors += [f"{k} lacks {d!r}" for d in REQUIRED_DEMO_KEYS if d not in g]
            if "obs" not in g:
                errors.append(f"{k} lacks 'obs'")
                continue
            errors += [f"{k}/obs lacks {o!r}" for o in (*IMAGE_KEYS, *LOWDIM_KEYS) if o not in g["obs"]]
            if "actions" not in g:
                continue
            t = g["actions"].shape[0]
            total += t
            if g["actions"].shape != (t, 7):
                errors.append(f"{k}/actions shape {g['actions'].shape}, want (T, 7)")
            for d in ("states", "robot_states", "rewards", "dones"):
                if d in g and g[d].shape[0] != t:
                    errors.append(f"{k}/{d} has {g[d].shape[0]} steps, actions {t}")
            if "robot_states" in g and g["robot_states"].shape[1:] != (9,):
                errors.append(f"{k}/robot_states shape {g['robot_states'].shape}, want (T, 9)")
            for o in IMAGE_KEYS:
                if o in g["obs"]:
                    ds = g["obs"][o]
                    want = (t, image_size or ds.shape[1], image_size or ds.shape[1], 3)
                    if ds.shape != want or ds.dtype != np.uint8:
                        errors.append(f"{k}/obs/{o} is {ds.shape} {ds.dtype}, want {want} uint8")
            for o, dim in LOWDIM_DIMS.items():
                if o in g["obs"] and g["obs"][o].shape != (t, dim):
                    errors.append(f"{k}/obs/{o} shape {g['obs'][o].shape}, want ({t}, {dim})")
            if "dones" in g and t and int(g["dones"][-1]) != 1:
                errors.append(f"{k}/dones does not mark the last step")
            if "num_samples" in g.attrs and int(g.attrs["num_samples"]) != t:
                errors.append(f"{k}.attrs num_samples={int(g.attrs['num_samples'])}, actions {t}")
        if "total" in grp.attrs and int(grp.attrs["total"]) != total:
            errors.append(f"total={int(grp.attrs['total'])} but demos hold {total} steps")
    return errors


def dataset_files(path: str | Path) -> list[Path]:
    """A file, or every ``*.hdf5`` under a directory (sorted)."""
    p = Path(path)
    if p.is_dir():
        return sorted(p.rglob("*.hdf5"))
    if not p.is_file():
        raise FileNotFoundError(f"no dataset at {p}")
    return [p]
