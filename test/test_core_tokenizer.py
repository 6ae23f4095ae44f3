"""Action tokenizer (OpenVLA's exact discretisation) and dataset statistics / unnorm_key selection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_ros.action_tokenizer import ActionTokenizer
from vla_ros.normalization import (
    ActionNormalizer,
    UnnormKeyError,
    compute_action_statistics,
    load_statistics,
    save_statistics,
    select_unnorm_key,
)

finite = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)


def test_openvla_constants():
    tok = ActionTokenizer(vocab_size=32000)
    assert tok.bins.shape == (256,) and tok.bin_centers.shape == (255,)
    assert tok.bins[0] == -1.0 and tok.bins[-1] == 1.0
    # OpenVLA: token = vocab_size - digitize(a, bins); -1 -> bin 1 -> 31999, +1 -> bin 256 -> 31744
    assert tok.encode(np.array([-1.0, 1.0])).tolist() == [31999, 31744]
    assert tok.first_token_id == 31744
    # decode: centre index = clip(vocab - id - 1, 0, 254)
    assert tok.decode(np.array([31999]))[0] == pytest.approx(tok.bin_centers[0])
    assert tok.decode(np.array([31744]))[0] == pytest.approx(tok.bin_centers[-1])


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=14), st.sampled_from([16, 64, 256]))
def test_round_trip_within_half_bin(values, n_bins):
    tok = ActionTokenizer(vocab_size=1000, n_bins=n_bins)
    a = np.array(values)
    ids = tok.encode(a)
    assert ids.dtype == np.int64 and ids.shape == a.shape
    assert np.all(tok.is_action_token(ids))
    assert np.all((ids >= 1000 - n_bins) & (ids < 1000))
    err = np.abs(tok.decode(ids) - a)
    assert np.all(err <= tok.bin_width / 2 + 1e-12)


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=1.0, max_value=1e6, allow_nan=False))
def test_out_of_range_values_clip_to_the_extreme_bins(x):
    tok = ActionTokenizer(vocab_size=32000)
    assert tok.encode(np.array([x]))[0] == tok.encode(np.array([1.0]))[0]
    assert tok.encode(np.array([-x]))[0] == tok.encode(np.array([-1.0]))[0]


def test_decode_of_non_action_ids_is_bounded():
    tok = ActionTokenizer(vocab_size=32000)
    out = tok.decode(np.array([0, 5, 31743, 32000, 40000]))  # text ids and beyond-vocab ids
    assert np.all(np.abs(out) <= 1.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_bins"):
        ActionTokenizer(100, n_bins=1)
    with pytest.raises(ValueError, match="exceed"):
        ActionTokenizer(100, n_bins=256)
    with pytest.raises(ValueError, match="NaN"):
        ActionTokenizer(1000).encode(np.array([np.nan]))


def _stats():
    rng = np.random.default_rng(0)
    a = rng.uniform([-0.5, -1, 0, -0.2, -0.3, -0.1, -1], [0.5, 1, 0.9, 0.2, 0.3, 0.1, 1], size=(500, 7))
    a[:, 6] = np.sign(a[:, 6])
    return a, {"libero_spatial": compute_action_statistics(a, num_trajectories=10),
               "libero_object": compute_action_statistics(a * 0.5)}


def test_statistics_layout_and_unnormalise_formula(tmp_path):
    a, stats = _stats()
    s = stats["libero_spatial"]["action"]
    assert set(s) == {"mean", "std", "max", "min", "q01", "q99", "mask"}
    assert s["mask"] == [True] * 6 + [False]
    p = save_statistics(stats, tmp_path)
    assert p.name == "dataset_statistics.json"
    assert load_statistics(tmp_path) == json.loads(p.read_text())
    norm = ActionNormalizer.from_statistics(stats, "libero_spatial")
    x = np.array([-1.0, 0.0, 1.0, 0.5, -0.5, 0.25, 0.7])
    q01, q99 = np.array(s["q01"]), np.array(s["q99"])
    expected = 0.5 * (x + 1) * (q99 - q01) + q01
    expected[6] = 0.7  # gripper (mask false) passes through
    np.testing.assert_allclose(norm.unnormalize(x), expected)
    # normalise is the inverse inside [q01, q99]
    inside = np.clip(a[:5], q01, q99)
    inside[:, 6] = a[:5, 6]
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(inside)), inside, atol=1e-12)


def test_unnorm_key_selection_errors_list_the_keys():
    _, stats = _stats()
    with pytest.raises(UnnormKeyError, match=r"libero_object.*libero_spatial"):
        select_unnorm_key(stats, None)  # ambiguous
    with pytest.raises(UnnormKeyError, match=r"'bridge_orig' not in .*libero_object"):
        select_unnorm_key(stats, "bridge_orig")
    assert select_unnorm_key({"only": stats["libero_object"]}, None) == "only"
    with pytest.raises(ValueError, match="q01/q99"):
        ActionNormalizer.from_statistics({"k": {"action": {"mean": [0]}}})
