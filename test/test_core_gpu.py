"""GPU-only parts of the VLA core (run on the lent GPU; skipped without CUDA): bitsandbytes 4/8-bit through both
local backends, and the CUDA-graph decoder against its eager run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from core_fixtures import INSTRUCTIONS, save_tiny, tiny_model

from vla_ros.backends import load_policy
from vla_ros.backends.native import PrismaticPolicy, random_policy
from vla_ros.models.prismatic import PrismaticProcessor
from vla_ros.models.prismatic.fast_decode import StaticGreedyDecoder
from vla_ros.models.prismatic.remote_code import export_remote_code

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
IMAGES = [np.random.default_rng(i).integers(0, 256, (128, 128, 3), dtype=np.uint8) for i in range(3)]


@pytest.mark.parametrize("built_on", ["cuda", "cpu"])
def test_cuda_graph_decoder_matches_its_eager_run(built_on):
    if built_on == "cuda":  # as the benchmark does: materialised on the GPU
        pol = random_policy("tiny-128", device="cuda")
        model = pol.model
    else:  # built on the CPU, then moved
        model, tok = tiny_model("tiny-128", text_overrides={"initializer_range": 0.2})
        model = model.to("cuda", torch.bfloat16)
        pol = PrismaticPolicy(model, PrismaticProcessor(tok, model.config), unnorm_key="libero_spatial")
    eager = StaticGreedyDecoder(model, cuda_graph=False)
    for img, text in zip(IMAGES, INSTRUCTIONS, strict=True):
        pol._decoder = eager
        ref = pol.decode_tokens([img], [text])
        pol._decoder = None
        got = pol.decode_tokens([img], [text])
        np.testing.assert_array_equal(got, ref)
    assert pol._decoder.use_graph and pol._decoder._decode_graph is not None


@pytest.mark.parametrize("q", ["4bit", "8bit"])
@pytest.mark.parametrize("backend", ["native", "hf"])
def test_quantized_checkpoint_loads_and_acts(tmp_path, q, backend):
    ckpt = save_tiny(tmp_path / "ck", "tiny-128")
    export_remote_code(ckpt)
    full = load_policy("native", str(ckpt), device="cuda", unnorm_key="libero_spatial")
    pol = load_policy(backend, str(ckpt), device="cuda", quantization=q, unnorm_key="libero_spatial")
    import bitsandbytes as bnb

    kinds = {type(m) for m in pol.model.modules()}
    assert (bnb.nn.Linear4bit if q == "4bit" else bnb.nn.Linear8bitLt) in kinds
    a = np.stack([pol.predict(i, t) for i, t in zip(IMAGES, INSTRUCTIONS, strict=True)])
    assert a.shape == (3, 7) and np.all(np.isfinite(a))
    assert full.metadata.action_space == pol.metadata.action_space


def test_compiled_decoder_matches_eager_beyond_bf16_noise():
    """compile=True (compiled layers, tuned matrix-vector products, inside the CUDA graphs) computes the same
    function with other kernels: its logits stay within bf16 noise of the eager static path, and its greedy tokens
    are the same at every step whose reference top-1/top-2 margin is wider than twice that noise."""
    pol = random_policy("tiny-128", device="cuda")
    model = pol.model
    ref = StaticGreedyDecoder(model, cuda_graph=False, keep_logits=True)
    comp = StaticGreedyDecoder(model, compile=True, keep_logits=True)
    assert comp.layered
    checked = 0
    for img, text in zip(IMAGES, INSTRUCTIONS, strict=True):
        pol._decoder = ref
        r = pol.decode_tokens([img], [text])[0]
        rl = ref.all_logits.clone()
        pol._decoder = comp
        c = pol.decode_tokens([img], [text])[0]
        cl = comp.all_logits.clone()
        tol = 0.02 * float(rl.abs().max())  # bf16 carries ~3 significant digits
        for t in range(len(r)):  # inputs equal up to the first differing token
            assert float((rl[t] - cl[t]).abs().max()) <= tol, f"step {t}: logits beyond bf16 noise"
            top2 = rl[t].topk(2).values
            if float(top2[0] - top2[1]) <= 2 * tol:
                break  # a near-tie: either choice is a correct greedy pick
            assert c[t] == r[t], f"step {t}: margin {float(top2[0] - top2[1]):.4f} > 2 x {tol:.4f}, tokens differ"
            checked += 1
    assert comp.use_graph and comp._decode_graph is not None
    assert checked > 0
