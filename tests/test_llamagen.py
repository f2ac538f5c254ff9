"""LlamaGen's PyTorch side against outputs of LlamaGen's own code (``../shared/reference/llamagen_c2i``), without an
export: the tokenizer (indices, decoded images), the GPT's teacher-forced logits for a class and for the null class,
greedy tokens with classifier-free guidance through vqdeploy's one token loop, checkpoint layouts, what the flags
decide, refusals, and LlamaGen's sampling rules against the host sampler's.

Measured here (torch 2.13 CPU): indices identical (128 of 128); decoded images max |diff| 7.5e-6 (reference.pt was
made in another environment: the same code run here is bit-identical to ours); teacher-forced logits max |diff|
6.7e-6 for both the class and the null class (max |logit| 12.0: 5.6e-7 relative); greedy CFG tokens identical.
"""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from llamagen_ref import CLI_OPTIONS, GPT, OPTIONS, VQ, needs_reference, reference

from vqdeploy.cli import main
from vqdeploy.commands.options import GPT_MODELS as CLI_GPT_MODELS
from vqdeploy.errors import CheckpointError, ConfigError
from vqdeploy.families import family_for
from vqdeploy.families.llamagen.family import LlamaGen
from vqdeploy.families.llamagen.load import GPT_MODELS, head_count, load_llamagen
from vqdeploy.families.llamagen.upstream import generate, top_k_top_p_filtering
from vqdeploy.loading.fingerprint import model_fingerprint
from vqdeploy.runtime.backends.torch_backend import TorchTransformer
from vqdeploy.runtime.decoding import HostDecoding
from vqdeploy.runtime.decoding import generate as loop
from vqdeploy.runtime.sampling import SamplingParams, filtered_probs

pytestmark = needs_reference
LOGITS_REL = 1e-4  # the project's fp32 logits tolerance (x max(1, max |logit|)); measured 5.6e-7


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's steps are a few small ops: two threads on a loaded 2-core machine spin (measured 89 ms per
    step against 5.5 ms with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return load_llamagen(GPT, **OPTIONS)


@pytest.fixture(scope="module")
def ref():
    return reference()


def test_tokenizer_matches_llamagen(model, ref) -> None:
    with torch.no_grad():
        idx = model.vq.encode(ref["x"])
        differ = idx != ref["indices"]
        if differ.any():  # allowed only at certified near-ties of the cosine search
            d = model.vq.quantize.distances(model.vq.latent(ref["x"]))
            ours, theirs = d[differ].gather(-1, idx[differ][:, None]), d[differ].gather(-1, ref["indices"][differ][:, None])
            assert float((ours - theirs).abs().max()) <= 1e-5 * float(d.abs().max())
        assert int(differ.sum()) == 0  # measured: identical
        decoded = model.vq.decode_code(ref["indices"])
        assert float((decoded - ref["decoded"]).abs().max()) < 1e-4  # measured 7.5e-6
        greedy_img = model.vq.decode_code(ref["greedy_cfg"].view(2, 8, 8))
        assert float((greedy_img - ref["greedy_img"]).abs().max()) < 1e-4


def test_teacher_forced_logits_for_the_class_and_the_null_class(model, ref) -> None:
    seq = torch.cat([ref["labels"][:, None], ref["indices"].view(2, -1)[:, :-1]], dim=1)
    null = seq.clone()
    null[:, 0] = model.null_class
    assert model.null_class == 10 and model.num_classes == 10  # 11 class-table rows: 10 classes + the null class
    with torch.no_grad():
        for s, want in ((seq, ref["logits_cond"]), (null, ref["logits_uncond"])):
            got = model.gpt(s)
            assert got.shape == want.shape
            assert float((got - want).abs().max()) <= LOGITS_REL * max(1.0, float(want.abs().max()))
        assert float((model.gpt(seq) - model.gpt(null)).abs().max()) > 0.1  # the class matters


def test_greedy_cfg_through_the_token_loop_equals_llamagen_generate(model, ref) -> None:
    """The one token loop (host decoding with the guidance row plan) on the torch runner: conditional and null rows
    in one batch, ``uncond + (cond - uncond) * 2`` -> LlamaGen's ``generate(..., cfg_scale=2, top_k=1)``."""
    labels = ref["labels"].numpy()
    runner = TorchTransformer(model.gpt, torch.device("cpu"))
    params = SamplingParams(top_k=1, cfg_scale=float(ref["cfg_scale"]))
    decoding = HostDecoding(runner, params, np.zeros((64, 2)), null_tokens=np.array([[model.null_class]]))
    tokens = loop(decoding, labels[:, None], 64)
    np.testing.assert_array_equal(tokens, ref["greedy_cfg"].numpy())
    assert runner.batch == 4  # two rows per sample
    # the re-written generate() (bench's reference row) too
    again = generate(model.gpt, ref["labels"], 64, model.null_class, cfg_scale=2.0, top_k=1, sample_logits=False)
    np.testing.assert_array_equal(again.numpy(), ref["greedy_cfg"].numpy())


def test_cfg_interval_follows_llamagen_count(model) -> None:
    """cfg_interval N guides tokens 0 .. N + 1 (the prefill's token, then decode steps 0..N), then the conditional
    logits alone: the loop and the re-written generate() agree for every N, and N changes the tokens from N + 2 on."""
    runner = TorchTransformer(model.gpt, torch.device("cpu"))
    labels = np.array([3, 7, 0])
    full = None
    for interval in (-1, 0, 9):
        params = SamplingParams(top_k=1, cfg_scale=4.0, cfg_interval=interval)
        tokens = loop(HostDecoding(runner, params, np.zeros((64, 3)), null_tokens=np.array([[10]])), labels[:, None], 64)
        up = generate(model.gpt, torch.from_numpy(labels), 64, 10, cfg_scale=4.0, cfg_interval=interval, top_k=1,
                      sample_logits=False)
        np.testing.assert_array_equal(tokens, up.numpy())
        if interval == -1:
            full = tokens
        else:
            assert np.array_equal(tokens[:, : interval + 2], full[:, : interval + 2])
            assert not np.array_equal(tokens[:, interval + 2 :], full[:, interval + 2 :])


def test_sampling_rules_equal_llamagen_except_ties_at_the_top_p_threshold() -> None:
    """LlamaGen: logits / temperature -> top-k (every logit >= the k-th) -> Hugging Face top-p -> multinomial. The
    host sampler keeps the same tokens with the same probabilities on tie-free logits; at an exact tie at the top-p
    threshold it keeps every tied token, where Hugging Face's sort keeps some of them."""
    rng = np.random.default_rng(3)
    for temperature, top_k, top_p in ((1.0, 2000, 1.0), (0.8, 40, 0.9), (1.3, 0, 0.5), (1.0, 1024, 0.95)):
        logits = rng.normal(size=(4, 1024)).astype(np.float32) * 3
        theirs = top_k_top_p_filtering(torch.from_numpy(logits) / max(temperature, 1e-5), top_k, top_p)
        p_theirs = torch.softmax(theirs, dim=-1).numpy()
        ours = filtered_probs(logits, SamplingParams(temperature, top_k or None, None if top_p >= 1 else top_p))
        ours /= ours.sum(axis=-1, keepdims=True)  # the draw normalises by the kept mass
        np.testing.assert_array_equal(ours > 0, p_theirs > 0)
        np.testing.assert_allclose(ours, p_theirs, atol=1e-6)
    tie = np.log(np.array([[0.4, 0.2, 0.2, 0.2]], dtype=np.float32))
    theirs = top_k_top_p_filtering(torch.from_numpy(tie).clone(), 0, 0.5)  # (it filters in place)
    assert int(torch.isfinite(theirs).sum()) == 2  # 0.4, then one of the three tied 0.2s
    assert int((filtered_probs(tie, SamplingParams(1.0, None, 0.5)) > 0).sum()) == 4  # every tied token


# --- loading ---------------------------------------------------------------------------------------------
def test_checkpoint_layouts_load_the_same_weights(model, tmp_path) -> None:
    """``{"model": ...}`` (DDP; the reference's), ``{"module": ...}`` (DeepSpeed), ``{"state_dict": ...}``, a plain
    state_dict (FSDP) with upstream's stray ``freqs_cis``, a training checkpoint with optimizer state and argparse
    args, and .safetensors: one fingerprint."""
    from safetensors.torch import save_file

    sd = torch.load(GPT, weights_only=True)["model"]
    want = model_fingerprint(model)
    layouts = {
        "module.pt": {"module": sd},
        "state_dict.pt": {"state_dict": sd},
        "plain.pt": {**sd, "freqs_cis": torch.zeros(65, 8, 2)},
        "train.pt": {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "steps": 5,
                     "args": argparse.Namespace(gpt_model="GPT-B")},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "gpt.safetensors"))
    for name in [*layouts, "gpt.safetensors"]:
        assert model_fingerprint(load_llamagen(tmp_path / name, **OPTIONS)) == want, name


def test_what_the_flags_decide() -> None:
    assert GPT_MODELS == {"GPT-B": (12, 12, 768), "GPT-L": (24, 16, 1024), "GPT-XL": (36, 20, 1280),
                          "GPT-XXL": (48, 24, 1536), "GPT-XXXL": (48, 40, 2560), "GPT-1B": (22, 32, 2048),
                          "GPT-3B": (24, 32, 3200), "GPT-7B": (32, 32, 4096)}  # LlamaGen's GPT_models
    assert tuple(GPT_MODELS) == CLI_GPT_MODELS
    assert head_count(1280, 36, None, None, "x") == (20, "GPT-XL")  # the weights match one preset
    assert head_count(1280, 36, "GPT-XL", None, "x") == (20, "GPT-XL")
    assert head_count(64, 2, None, 4, "x") == (4, None)
    for args, message in (((1280, 36, "GPT-L", None), "GPT-L is 24 layers of width 1024"),
                          ((64, 2, None, None), "match no LlamaGen preset; pass --n-head"),
                          ((64, 2, None, 3), "--n-head 3"), ((64, 2, "GPT-B", 4), "not both")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            head_count(*args, "x")


def test_image_size_sets_the_grid_and_the_rotary_table(model) -> None:
    assert model.grid == 8 and model.gpt.block_size == 64 and tuple(model.gpt.freqs_cis.shape) == (65, 8, 2)
    assert float(model.gpt.freqs_cis[0].abs().max()) == 0.0  # the class token: zeros
    bigger = load_llamagen(GPT, **{**OPTIONS, "image_size": 64})
    assert bigger.grid == 16 and bigger.gpt.block_size == 256
    assert model_fingerprint(bigger) == model_fingerprint(model)  # the same weights: the grid is not in them
    with pytest.raises(ConfigError, match="multiple of the tokenizer's 4-pixel cells"):
        load_llamagen(GPT, **{**OPTIONS, "image_size": 30})


def test_t2i_and_foreign_checkpoints_are_refused(tmp_path) -> None:
    sd = torch.load(GPT, weights_only=True)["model"]
    t2i = {k: v for k, v in sd.items() if not k.startswith("cls_embedding.")}
    t2i["cls_embedding.cap_proj.fc1.weight"] = torch.zeros(64, 2048)
    t2i["cls_embedding.uncond_embedding"] = torch.zeros(120, 2048)
    torch.save({"model": t2i}, tmp_path / "t2i.pt")
    with pytest.raises(ConfigError, match=r"text-to-image LlamaGen GPT \(T5 caption features\) is out of scope"):
        load_llamagen(tmp_path / "t2i.pt", **OPTIONS)
    with pytest.raises(CheckpointError, match="LlamaGen GPT checkpoint; --vq-ckpt takes the VQ tokenizer's"):
        load_llamagen(GPT, **{**OPTIONS, "vq_ckpt": str(GPT)})
    with pytest.raises(CheckpointError, match="no 'tok_embeddings.weight'"):
        load_llamagen(VQ, **OPTIONS)
    with pytest.raises(ConfigError, match="--num-classes 12: .* class table has 11 rows"):
        load_llamagen(GPT, **OPTIONS, num_classes=12)
    no_null = load_llamagen(GPT, **OPTIONS, num_classes=11)  # trained without label dropout: no guidance
    assert no_null.null_class is None and LlamaGen().describe(no_null)["conditioning"].get("null_class") is None


def test_family_claims_a_pair() -> None:
    assert isinstance(family_for(GPT, {"vq_ckpt": str(VQ)}), LlamaGen)
    assert not isinstance(family_for(GPT, {}), LlamaGen)  # taming's, which then asks for its config


@pytest.mark.parametrize("args, message", [
    (["inspect", str(GPT), "--vq-ckpt", str(VQ)], "match no LlamaGen preset; pass --n-head N"),
    (["inspect", str(GPT), "--n-head", "4"], "--n-head is a LlamaGen option: pass --vq-ckpt VQ.pt"),
    (["inspect", str(VQ), *CLI_OPTIONS], "no 'tok_embeddings.weight'"),
    (["inspect", str(GPT), *CLI_OPTIONS, "--config", str(GPT)], "--config is for taming checkpoints"),
    (["export", "--ckpt", str(GPT), *CLI_OPTIONS, "--gpt-model", "GPT-B"], "not both"),
])
def test_cli_errors_are_one_line(args: list[str], message: str, tmp_path) -> None:
    res = CliRunner().invoke(main, [*args, *(["--out", str(tmp_path / "a")] if args[0] == "export" else [])])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]  # export says "loading ..." first
    assert errors == [lines[-1]] and message in lines[-1] and "Traceback" not in res.output, res.output


def test_inspect_describes_the_pair() -> None:
    import json

    res = CliRunner().invoke(main, ["inspect", str(GPT), *CLI_OPTIONS])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["family"] == "llamagen" and info["conditioning"] == {"kind": "class", "n_classes": 10, "tokens": 1,
                                                                      "null_class": 10}
    assert info["first_stage"]["metric"] == "cosine" and info["first_stage"]["encoder_ch_mult"] == [1, 1, 2]
    assert info["transformer"]["n_head"] == 4 and info["tokens"] == {"cond": 1, "image": 64, "steps": 64}
