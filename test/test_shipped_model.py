"""The checkpoints that ship in models/ (issue 9): small enough, self-describing, loadable as the node loads them,
and picked by suite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vla_ros.shipped import BUNDLED_MODEL, MODELS, SUITE_MODELS, bundled_model

SHIPPED = sorted(p.parent for p in MODELS.glob("*/config.json"))
pytestmark = pytest.mark.skipif(not SHIPPED, reason="no model ships in models/")
each_shipped_model = pytest.mark.parametrize("model_dir", SHIPPED, ids=lambda p: p.name)


def test_every_suite_gets_its_own_checkpoint_or_the_one_trained_on_both():
    assert {p.name for p in SHIPPED} == {p.name for p in (BUNDLED_MODEL, *SUITE_MODELS.values())}
    for suite, path in SUITE_MODELS.items():
        assert bundled_model(suite) == path
    assert bundled_model("libero_object") == BUNDLED_MODEL


@each_shipped_model
def test_shipped_checkpoint_is_complete_and_small(model_dir: Path):
    files = {p.name: p.stat().st_size for p in model_dir.iterdir()}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "dataset_statistics.json", "README.md",
                 "training_meta.json"):
        assert name in files, name
    assert sum(files.values()) <= 50 * 10**6  # the limit, the whole directory
    card = (model_dir / "README.md").read_text()
    assert "## Data" in card and "## Training" in card and "## Success" in card
    stats = json.loads((model_dir / "dataset_statistics.json").read_text())
    cfg = json.loads((model_dir / "config.json").read_text())
    assert list(stats) == list(cfg["norm_stats"])  # one key, the same statistics the model un-normalises with


@each_shipped_model
def test_shipped_checkpoint_acts_with_its_declared_inputs(model_dir: Path):
    from vla_ros.backends import load_policy
    from vla_ros.proprio import proprio_vector

    policy = load_policy("native", str(model_dir), device="cpu")
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
