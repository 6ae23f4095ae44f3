"""The checkpoint that ships in models/ (issue 9): small enough, self-describing, and loadable as the node loads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vla_ros.demo import BUNDLED_MODEL

pytestmark = pytest.mark.skipif(not (BUNDLED_MODEL / "config.json").is_file(), reason="no model ships in models/")


def test_shipped_checkpoint_is_complete_and_small():
    files = {p.name: p.stat().st_size for p in Path(BUNDLED_MODEL).iterdir()}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "dataset_statistics.json", "README.md",
                 "training_meta.json"):
        assert name in files, name
    assert sum(files.values()) <= 50 * 10**6  # the limit, the whole directory
    card = (BUNDLED_MODEL / "README.md").read_text()
    assert "## Data" in card and "## Training" in card and "## Success" in card
    stats = json.loads((BUNDLED_MODEL / "dataset_statistics.json").read_text())
    cfg = json.loads((BUNDLED_MODEL / "config.json").read_text())
    assert list(stats) == list(cfg["norm_stats"])  # one key, the same statistics the model un-normalises with


def test_shipped_checkpoint_acts_with_its_declared_inputs():
    from vla_ros.backends import load_policy
    from vla_ros.proprio import proprio_vector

    policy = load_policy("native", str(BUNDLED_MODEL), device="cpu")
    meta = policy.metadata
    assert meta.predicts_done and meta.image_flip == "rot180" and meta.gripper_convention == "libero_sign"
    img = np.full((128, 128, 3), 120, np.uint8)
    inputs = {}
    if meta.extra_images:
        inputs["extra_images"] = {c: img for c in meta.extra_images}
    if meta.proprio_layout:
        inputs["proprio"] = proprio_vector([-0.2, 0.0, 1.1], [1.0, 0.0, 0.0, 0.0], [0.04, -0.04])
    out = policy.act(img, "pick up the black bowl between the plate and the ramekin and place it on the plate",
                     **inputs)
    assert out.action.shape == (7,) and np.all(np.isfinite(out.action))
    assert np.all(np.abs(out.action) <= 1.0 + 1e-9)  # inside the data's q01..q99 range: LIBERO units
