"""Backends behind one API: native (own and OpenVLA layouts), hf (remote code), remote (deploy.py protocol) and
the serve command give the same action for the same weights; quantization errors; LoRA adapters."""

from __future__ import annotations

import re
import sys
import threading
import urllib.error
import urllib.request

import json_numpy
import numpy as np
import pytest
import torch
from core_fixtures import INSTRUCTIONS, save_openvla_layout, save_tiny, tiny_tokenizer

from helpers import ManagedProcess, wait_for
from vla_ros.backends import load_policy
from vla_ros.backends.remote import RemotePolicyError
from vla_ros.models.prismatic.checkpoint import save_checkpoint
from vla_ros.models.prismatic.remote_code import export_remote_code
from vla_ros.quantization import QuantizationUnavailableError
from vla_ros.serving import PolicyServer

IMAGES = [np.random.default_rng(i).integers(0, 256, (80, 80, 3), dtype=np.uint8) for i in range(3)]
KEY = "libero_spatial"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The same weights in OpenVLA's layout and in vla_ros's own (with remote code for the hf backend)."""
    root = tmp_path_factory.mktemp("ckpts")
    ovla, model = save_openvla_layout(root / "openvla_layout")
    tok, _ = tiny_tokenizer()
    own = save_checkpoint(model, tok, root / "own", model.config.norm_stats)
    export_remote_code(own)
    return {"openvla": ovla, "own": own}


@pytest.fixture
def served(checkpoints):
    policy = load_policy("native", str(checkpoints["own"]), device="cpu", unnorm_key=KEY)
    server = PolicyServer(policy, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _actions(policy) -> np.ndarray:
    return np.stack([policy.predict(img, text) for img, text in zip(IMAGES, INSTRUCTIONS, strict=True)])


def test_all_backends_give_the_same_action_for_the_same_weights(checkpoints, served):
    ref = _actions(load_policy("native", str(checkpoints["openvla"]), device="cpu", unnorm_key=KEY))
    assert ref.shape == (3, 7) and np.all(np.isfinite(ref))
    own = load_policy("native", str(checkpoints["own"]), device="cpu", unnorm_key=KEY)
    np.testing.assert_array_equal(_actions(own), ref)
    hf = load_policy("hf", str(checkpoints["own"]), device="cpu", unnorm_key=KEY)
    np.testing.assert_array_equal(_actions(hf), ref)
    remote = load_policy("remote", served.url, unnorm_key=KEY)
    np.testing.assert_array_equal(_actions(remote), ref)
    # the plain (unoptimised) decoding path agrees too
    own.fast = False
    np.testing.assert_array_equal(_actions(own), ref)
    # metadata travels: OpenVLA layout -> OpenVLA's gripper convention; remote reads the server's record
    assert own.metadata.gripper_convention == "openvla_open01" == remote.metadata.gripper_convention
    assert remote.metadata.image_size == own.metadata.image_size == 64
    assert hf.metadata.extra["unnorm_key"] == KEY


def test_openvla_layout_reads_norm_stats_from_config(checkpoints):
    assert not (checkpoints["openvla"] / "dataset_statistics.json").exists()
    pol = load_policy("native", str(checkpoints["openvla"]), device="cpu", unnorm_key="libero_object")
    assert pol.metadata.extra["unnorm_key"] == "libero_object"
    assert pol.model.config.action_vocab_size == pol.model.config.text_config.vocab_size - 64


def test_hf_backend_needs_remote_code(tmp_path):
    ckpt = save_tiny(tmp_path / "plain")
    with pytest.raises(ValueError, match="auto_map"):
        load_policy("hf", str(ckpt), device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("backend", ["native", "hf"])
@pytest.mark.parametrize("q", ["4bit", "8bit"])
def test_quantization_without_cuda_fails_clearly(checkpoints, backend, q):
    with pytest.raises(QuantizationUnavailableError, match=r"needs a CUDA GPU and the bitsandbytes package"):
        load_policy(backend, str(checkpoints["own"]), device="cpu", quantization=q, unnorm_key=KEY)
    with pytest.raises(ValueError, match="unknown quantization"):
        load_policy(backend, str(checkpoints["own"]), device="cpu", quantization="3bit", unnorm_key=KEY)


@pytest.fixture(scope="module")
def adapter(checkpoints, tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from vla_ros.models.prismatic.checkpoint import load_model

    model, _ = load_model(checkpoints["own"], device="cpu")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"], init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    torch.manual_seed(3)
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)  # a visible change of the outputs
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


def _logits(policy, img=IMAGES[0], text=INSTRUCTIONS[0]) -> torch.Tensor:
    proc, model = policy.processor, policy.model
    batch = proc(proc.prompt(text), img)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).logits[0, -1]


def test_lora_adapter_loads_merged_or_not_on_both_local_backends(checkpoints, adapter):
    base = load_policy("native", str(checkpoints["own"]), device="cpu", unnorm_key=KEY)
    lora = load_policy("native", str(checkpoints["own"]), device="cpu", unnorm_key=KEY, adapter=str(adapter))
    merged = load_policy("native", str(checkpoints["own"]), device="cpu", unnorm_key=KEY, adapter=str(adapter),
                         merge_adapter=True)
    lb, ll, lm = _logits(base), _logits(lora), _logits(merged)
    assert (lb - ll).abs().max() > 1e-2  # the adapter changes the model
    torch.testing.assert_close(ll, lm, rtol=1e-4, atol=1e-4)  # merging does not
    assert not any("lora" in n for n, _ in merged.model.named_parameters())
    assert any("lora" in n for n, _ in lora.model.named_parameters())
    np.testing.assert_array_equal(_actions(lora), _actions(merged))
    hf = load_policy("hf", str(checkpoints["own"]), device="cpu", unnorm_key=KEY, adapter=str(adapter))
    np.testing.assert_array_equal(_actions(hf), _actions(lora))


def _post(url: str, body: bytes) -> tuple[int, str]:
    req = urllib.request.Request(url + "/act", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_server_protocol_rejections_and_unnorm_key(served):
    url = served.url
    good = {"image": IMAGES[0], "instruction": INSTRUCTIONS[0], "unnorm_key": KEY}
    status, text = _post(url, json_numpy.dumps(good).encode())
    action = np.asarray(json_numpy.loads(text))
    assert status == 200 and action.shape == (7,)
    # deploy.py's double-encoded form gives the same answer
    status, text2 = _post(url, json_numpy.dumps({"encoded": json_numpy.dumps(good)}).encode())
    np.testing.assert_array_equal(np.asarray(json_numpy.loads(text2)), action)
    for body, reason in [
        (b"not json", "not JSON"),
        (json_numpy.dumps({"image": IMAGES[0]}).encode(), "'image' and 'instruction'"),
        (json_numpy.dumps({"image": np.zeros((4, 4), np.uint8), "instruction": "x"}).encode(), "HxWx3"),
        (json_numpy.dumps({"image": IMAGES[0].astype(np.float32), "instruction": "x"}).encode(), "uint8"),
        (json_numpy.dumps({"image": IMAGES[0], "instruction": ""}).encode(), "non-empty"),
        (json_numpy.dumps({**good, "unnorm_key": "bridge_orig"}).encode(), "libero_object"),
    ]:
        status, text = _post(url, body)
        assert status == 400 and reason in text, (reason, text)
    assert served.counters["rejected"] == 6 and served.counters["served"] == 2
    # another dataset's statistics of the same checkpoint: a different un-normalisation
    status, text3 = _post(url, json_numpy.dumps({**good, "unnorm_key": "libero_object"}).encode())
    assert status == 200 and not np.allclose(np.asarray(json_numpy.loads(text3)), action)
    # the client reports server refusals clearly
    bad_client = load_policy("remote", url, unnorm_key="bridge_orig")
    with pytest.raises(RemotePolicyError, match="400"):
        bad_client.predict(IMAGES[0], "go")


def test_remote_client_unreachable_server_fails_clearly():
    pol = load_policy("remote", "http://127.0.0.1:9", timeout=2)  # discard port: nothing listens
    with pytest.raises(RemotePolicyError, match="cannot reach"):
        pol.predict(IMAGES[0], "go")


@pytest.mark.slow
def test_serve_command_stops_on_sigint_even_when_started_with_sigint_ignored(tmp_path):
    """A background job of a non-interactive shell inherits SIGINT as ignored, and Python then raises no
    KeyboardInterrupt: the server must restore it, or `kill -INT` (and the launcher's stop) cannot end it."""
    code = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "sys.argv = ['vla-ros serve', '--backend', 'debug', '--port', '0']; "
            "runpy.run_module('vla_ros.serving', run_name='__main__')")
    proc = ManagedProcess([sys.executable, "-c", code], tmp_path / "serve.log")
    try:
        wait_for(lambda: "serving" in proc.output() or proc.proc.poll() is not None, 120, what="serve to start")
        assert proc.proc.poll() is None, proc.output()
    finally:
        rc = proc.stop(timeout=10.0)
    assert rc == 0, proc.output()  # a clean stop by KeyboardInterrupt, not the SIGABRT/SIGKILL fallback


@pytest.mark.slow
def test_serve_command_serves_a_checkpoint_over_http(checkpoints, tmp_path):
    proc = ManagedProcess([sys.executable, "-m", "vla_ros.serving", "--backend", "native", "--path",
                           str(checkpoints["own"]), "--device", "cpu", "--port", "0", "--unnorm-key", KEY],
                          tmp_path / "serve.log")
    try:
        wait_for(lambda: "serving" in proc.output() or proc.proc.poll() is not None, 180, what="serve to start")
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", proc.output())
        assert m, proc.output()
        remote = load_policy("remote", m.group(1))
        local = load_policy("native", str(checkpoints["own"]), device="cpu", unnorm_key=KEY)
        np.testing.assert_array_equal(_actions(remote), _actions(local))
        assert remote.metadata.extra["unnorm_key"] == KEY
    finally:
        rc = proc.stop()
    assert not proc.group_alive()
    assert rc in (0, -2, 130), proc.output()


def test_sharded_openvla_layout_loads_like_the_single_file(checkpoints, tmp_path):
    """OpenVLA's 7B release is sharded (model-0000x-of-0000y.safetensors + index): same weights, same actions."""
    import shutil

    from huggingface_hub import save_torch_state_dict
    from safetensors.torch import load_file

    sharded = tmp_path / "sharded"
    shutil.copytree(checkpoints["openvla"], sharded)
    (sharded / "model.safetensors").unlink()
    state = load_file(str(checkpoints["openvla"] / "model.safetensors"))
    save_torch_state_dict(state, str(sharded), max_shard_size="1MB")
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("model-*"))) > 1
    a = load_policy("native", str(sharded), device="cpu", unnorm_key=KEY)
    b = load_policy("native", str(checkpoints["openvla"]), device="cpu", unnorm_key=KEY)
    np.testing.assert_array_equal(_actions(a), _actions(b))
