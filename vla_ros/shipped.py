"""The checkpoints the project ships (``models/``), and which one each LIBERO suite gets (ROS-free).

The demo, the evaluation's defaults, DAgger tests and the shipped-model tests all read these facts here.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
# The project's trained checkpoints (docs/training.md, Results): one trained on libero_spatial and
# libero_object together, and a libero_spatial specialist that beats it there (OpenVLA, too, fine-tunes
# one checkpoint per suite). A suite without its own checkpoint gets the one trained on both.
BUNDLED_MODEL = MODELS / "vla_ros_libero_small"
SUITE_MODELS = {"libero_spatial": MODELS / "vla_ros_libero_spatial"}
RANDOM_MODEL_CACHE = REPO / "data" / "demo_random_model"
DEMO_PRESET = "tiny-128"


def bundled_model(suite: str) -> Path | None:
    """The shipped checkpoint for a suite: its own if one ships, else the one trained on both suites."""
    for path in (SUITE_MODELS.get(suite), BUNDLED_MODEL):
        if path is not None and (path / "config.json").is_file():
            return path
    return None


def demo_model(suite: str = "libero_spatial") -> tuple[Path, bool]:
    """(checkpoint directory, trained?) — the bundled model for the suite, or a random small one built once."""
    bundled = bundled_model(suite)
    if bundled is not None:
        return bundled, True
    if not (RANDOM_MODEL_CACHE / "config.json").is_file():
        from vla_ros.backends.native import random_policy
        from vla_ros.models.prismatic.checkpoint import save_checkpoint

        # the small preset a trained model would use, random weights, seeded: same demo every time
        policy = random_policy(DEMO_PRESET, device="cpu", seed=0)
        save_checkpoint(policy.model, policy.processor.tokenizer, RANDOM_MODEL_CACHE)
    return RANDOM_MODEL_CACHE, False
