"""The decoder runtime and ``generate``: the same logits as transformers on the same weights
(float, and quantized through the native kernels), the key/value cache equal to a one-shot
pass, perplexity through the fast path equal to the reference path's, generation that matches
transformers' greedy search and is repeatable when sampled, and clear errors for bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cuantiza as cz
from cuantiza.backends.native import decode as native_steps
from cuantiza.errors import ConfigError, PlanError
from cuantiza.llm.evaluate import load_causal_lm
from cuantiza.llm.runtime_load import load_runtime
from tests.thresholds import THRESHOLDS

transformers = pytest.importorskip("transformers")

MODEL = Path(__file__).resolve().parents[2] / "models" / "shakespeare-llama"
TEXT = "ROMEO: But soft, what light through yonder window breaks? It is the east."


@pytest.fixture(scope="module")
def q4(tmp_path_factory) -> Path:
    """The committed decoder at 4 bits, group 32 (round to nearest: fast), as a folder."""
    out = tmp_path_factory.mktemp("q4") / "q4"
    cfg = cz.QuantConfig(weight=cz.QScheme(bits=4, symmetric=False, granularity=cz.PerGroup(32)))
    cz.llm.quantize_checkpoint(MODEL, out, cfg, progress=False)
    return out


def _logits(folder) -> tuple[torch.Tensor, torch.Tensor]:
    """(runtime, transformers) logits of TEXT for the folder."""
    ids = cz.llm.encode(TEXT)
    with torch.no_grad():
        ref = load_causal_lm(folder)(ids[None]).logits[0]
    rt = load_runtime(folder)
    return rt.forward(ids, rt.new_cache(128), 0, all_logits=True), ref


def test_float_runtime_equals_transformers():
    got, ref = _logits(MODEL)
    assert (got - ref).abs().max() <= THRESHOLDS["runtime_logits_atol"]


def test_quantized_runtime_equals_transformers_on_the_same_weights(q4):
    rt = load_runtime(q4)
    if cz.backends.native.weight_only.built():
        # q/k/v and gate/up fused; 4-bit layers decode with int8 activations
        assert set(rt.kernels.values()) == {"native_wo (int8 activations below 8 rows)"}
        assert set(load_runtime(q4, int8_activations=False).kernels.values()) == {"native_wo"}
        assert any("q_proj+k_proj+v_proj" in n for n in rt.kernels)
    got, ref = _logits(q4)
    assert (got - ref).abs().max() <= THRESHOLDS["runtime_logits_atol"]


def test_the_cache_gives_what_one_pass_gives():
    rt = load_runtime(MODEL)
    ids = cz.llm.encode(TEXT)
    whole = rt.forward(ids, rt.new_cache(96), 0, all_logits=True)
    cache = rt.new_cache(96)
    parts = [rt.forward(ids[:7], cache, 0, all_logits=True)]
    parts.append(rt.forward(ids[7:20], cache, 7, all_logits=True))  # a chunk after the prompt
    parts += [rt.forward(ids[i : i + 1], cache, i, all_logits=True) for i in range(20, 28)]
    got = torch.cat(parts)
    assert (got - whole[:28]).abs().max() <= THRESHOLDS["runtime_incremental_logits_atol"]


@pytest.mark.parametrize("int8", [False, True])
def test_native_steps_equal_the_torch_steps(q4, monkeypatch, int8):
    """RMSNorm, rotary + cache append (prefill) and whole layers for one token (decode) in C
    (backends.native.decode) against the runtime's torch code: logits within the stated
    tolerance; rotary and the cache append bit for bit on their own."""
    if not native_steps.available():
        pytest.skip("the native library is not built")
    ids = cz.llm.encode(TEXT)[:40]
    rt = load_runtime(q4, int8_activations=int8)
    assert rt.native_layers is not None  # every projection fused and native

    def run():
        cache = rt.new_cache(64)
        first = rt.forward(ids[:32], cache, 0, all_logits=True)  # prefill, then decode steps
        rest = [rt.forward(ids[i : i + 1], cache, i) for i in range(32, 40)]
        return torch.cat([first, *rest]), cache

    fast, fast_cache = run()
    monkeypatch.setattr(native_steps, "available", lambda: False)
    ref, ref_cache = run()
    scale = ref.abs().max()
    tol = THRESHOLDS["runtime_int8_steps_rtol" if int8 else "runtime_native_steps_rtol"]
    assert (fast - ref).abs().max() <= tol * scale
    x = torch.randn(3, 64)
    qkv = torch.randn(5, (4 + 2 * 2) * 16)
    k1, v1, k2, v2 = (torch.zeros(2, 16, 16) for _ in range(4))
    cos, sin = torch.randn(16, 16), torch.randn(16, 16)
    q = native_steps.rope_append(qkv, 4, 2, cos, sin, 3, k1, v1)
    shape = cz.llm.runtime.DecoderShape.from_config(
        {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_hidden_layers": 1, "intermediate_size": 8,
         "vocab_size": 8, "max_position_embeddings": 16}
    )  # fmt: skip
    cache = cz.llm.runtime.KVCache(shape, 16)
    parts = list(qkv.split([64, 32, 32], dim=-1))
    want = rt._rope_append.__func__(
        type("R", (), {"shape": shape})(), 0, parts, cache, 3, cos[3:8, None], sin[3:8, None]
    )
    assert torch.equal(q, want) and torch.equal(k1, cache.k[0]) and torch.equal(v1, cache.v[0])
    w = torch.randn(64)
    want = cz.llm.runtime.rms_norm(x, w, 1e-5)
    assert ((native_steps.rms_norm(x, w, 1e-5) - want).abs() <= 8 * 2**-24 * want.abs()).all()


def test_perplexity_through_the_fast_path_equals_the_reference_path(q4, monkeypatch):
    tokens = cz.llm.encode(cz.llm.load_text(MODEL / "heldout.txt"))[: 2 * 256]
    rt = load_runtime(q4)
    nll = 0.0
    for w in tokens.view(2, 256):
        logits = rt.forward(w, rt.new_cache(256), 0, all_logits=True)
        nll += F.cross_entropy(logits[:-1].double(), w[1:], reduction="sum").item()
    fast = math.exp(nll / (2 * 255))
    monkeypatch.setenv("CUANTIZA_NATIVE", "0")  # transformers, every linear dequantized
    ref = cz.llm.perplexity(load_causal_lm(q4), tokens, seq_len=256, progress=False)
    assert fast == pytest.approx(ref, rel=THRESHOLDS["runtime_perplexity_rtol"])


def test_greedy_generation_matches_transformers():
    g = cz.llm.generate(MODEL, "ROMEO:", 24)
    ids = torch.tensor([g.prompt_ids])
    model = load_causal_lm(MODEL)
    want = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=0)[
        0, ids.shape[1] :
    ]
    assert g.new_ids == want.tolist() and g.text == cz.llm.decode(want)
    assert g.decode_steps == 23 and g.prefill_tokens_per_s > 0 and g.decode_tokens_per_s > 0


def test_sampling_is_repeatable_with_a_seed_and_works_from_a_model_in_memory(q4):
    model = load_causal_lm(q4)  # cuantiza's QuantLinear modules inside
    kw = {"temperature": 0.8, "top_k": 40, "top_p": 0.95}
    runtime = load_runtime(model)
    a = cz.llm.generate(model, "KING:", 12, seed=3, runtime=runtime, **kw)
    b = cz.llm.generate(model, "KING:", 12, seed=3, runtime=runtime, **kw)
    c = cz.llm.generate(model, "KING:", 12, seed=4, runtime=runtime, **kw)
    assert a.new_ids == b.new_ids != c.new_ids and len(a.new_ids) == 12


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_new_tokens": 0}, ConfigError, "max_new_tokens"),
        ({"max_new_tokens": 600}, ConfigError, "context of 512"),
        ({"temperature": -1}, ConfigError, "temperature"),
        ({"top_p": 0}, ConfigError, "top_p"),
        ({"prompt": ""}, ConfigError, "empty"),
        ({"prompt": [1, 999]}, ConfigError, "token ids"),
    ],
)
def test_bad_generate_arguments_are_refused_before_work(kwargs, error, match):
    kwargs = {"prompt": "ROMEO:", "max_new_tokens": 8, **kwargs}
    with pytest.raises(error, match=match):
        cz.llm.generate(MODEL, **kwargs)


def test_a_folder_that_is_not_a_llama_decoder_is_refused(tmp_path):
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2"]}))
    (d / "model.safetensors").write_bytes((MODEL / "model.safetensors").read_bytes())
    with pytest.raises(PlanError, match="gpt2"):
        cz.llm.generate(d, "x", 4)
