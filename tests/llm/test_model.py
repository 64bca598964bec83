"""The committed byte-level LLaMA (models/shakespeare-llama), the byte tokenizer, perplexity and
the training script that made the checkpoint (run in smoke mode)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cuantiza.errors import ConfigError, CorruptFileError, OutputExistsError
from cuantiza.llm import decode, encode, load_text, perplexity, require_transformers
from tests.thresholds import THRESHOLDS

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "shakespeare-llama"
SCRIPT = ROOT / "examples" / "train_llama.py"


@pytest.fixture(scope="module")
def model():
    transformers.utils.logging.disable_progress_bar()
    return transformers.LlamaForCausalLM.from_pretrained(
        MODEL, local_files_only=True, use_safetensors=True
    )


@pytest.fixture(scope="module")
def head_tokens():
    return encode(load_text(MODEL / "heldout.txt"))[:4096]


def reference_perplexity(model, tokens, seq_len):
    """The slow, obvious computation: one window at a time, mean cross-entropy, exp."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(tokens.numel() // seq_len):
            w = tokens[i * seq_len : (i + 1) * seq_len]
            logits = model(w[None]).logits[0]
            total += F.cross_entropy(logits[:-1].double(), w[1:], reduction="sum").item()
            count += seq_len - 1
    return math.exp(total / count)


def test_checkpoint_is_a_plain_float16_hf_folder_loading_as_float32(model):
    from safetensors import safe_open

    cfg = json.loads((MODEL / "config.json").read_text())
    assert cfg["dtype"] == "float32" and cfg["model_type"] == "llama" and cfg["vocab_size"] == 256
    assert cfg["hidden_size"] % 128 == 0 and cfg["intermediate_size"] % 128 == 0
    with safe_open(str(MODEL / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
        assert set(f.keys()) == set(model.state_dict())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert 5_000_000 < model.num_parameters() < 5_500_000
    assert not list(MODEL.glob("*.bin")) and not list(MODEL.glob("*.pt"))
    assert {"README.md", "heldout.txt", "calibration.txt"} <= {p.name for p in MODEL.iterdir()}


def test_committed_model_has_learned_and_matches_the_reference(model, head_tokens):
    ppl = perplexity(model, head_tokens, seq_len=256, batch_size=8, progress=False)
    # uniform over bytes is 256
    assert math.isfinite(ppl) and 1.0 < ppl < THRESHOLDS["shakespeare_llama_heldout_ppl_max"]
    rel = THRESHOLDS["perplexity_vs_reference_rtol"]
    assert ppl == pytest.approx(reference_perplexity(model, head_tokens, 256), rel=rel)


def test_perplexity_is_deterministic_drops_the_partial_window_restores_modes(model, head_tokens):
    tokens = head_tokens[:512]
    model.train()
    model.model.norm.eval()  # a mixed state, restored exactly
    try:
        a = perplexity(model, tokens, seq_len=128, batch_size=3, progress=False)
        assert model.training and model.model.layers[0].training
        assert not model.model.norm.training
        b = perplexity(model, head_tokens[: 512 + 100], seq_len=128, batch_size=3, progress=False)
    finally:
        model.eval()
    assert a == b  # same windows, same bits
    rel = THRESHOLDS["perplexity_vs_reference_rtol"]
    assert a == pytest.approx(reference_perplexity(model, tokens, 128), rel=rel)


def test_splits_are_disjoint_and_sized():
    heldout, calib = load_text(MODEL / "heldout.txt"), load_text(MODEL / "calibration.txt")
    assert 60_000 < len(heldout.encode()) <= 65_536 and 28_000 < len(calib.encode()) <= 32_768
    assert heldout[:2000] not in calib and calib[:2000] not in heldout


@pytest.mark.parametrize("text", ["", "plain ASCII\n", "héllo wörld — ☃ 𝄞", "\x00\x7f"])
def test_encode_decode_round_trip(text):
    ids = encode(text)
    assert ids.dtype == torch.long and ids.dim() == 1 and ids.numel() == len(text.encode())
    assert decode(ids) == text and decode(ids.tolist()) == text


def test_decode_replaces_broken_utf8_and_rejects_bad_ids():
    assert decode([104, 195]) == "h\ufffd"
    for bad in ([256], [-1], torch.zeros(2, 2, dtype=torch.long), torch.ones(3)):
        with pytest.raises(ConfigError):
            decode(bad)
    with pytest.raises(ConfigError):
        encode(b"bytes")


def test_perplexity_errors(model, tmp_path):
    ids = encode("x" * 300)
    cases = [
        (ids[:100], {}, "too short"),
        (ids, {"seq_len": 1}, "seq_len"),
        (ids, {"batch_size": 0}, "batch_size"),
        (ids[None], {}, "1-D"),
        (ids.float(), {}, "integers"),
        (ids, {"seq_len": 1024}, "max_position"),
        (ids + 300, {}, "vocabulary"),
        (ids - 200, {}, ">= 0"),
    ]
    for tokens, kw, words in cases:
        with pytest.raises(ConfigError, match=words):
            perplexity(model, tokens, progress=False, **kw)
    with pytest.raises(ConfigError, match="no text file"):
        load_text(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(CorruptFileError, match="UTF-8"):
        load_text(tmp_path / "latin1.txt")


def test_missing_transformers_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ConfigError, match="pip install transformers"):
        require_transformers()


@pytest.mark.slow  # ~15 s on a busy 2-core machine, nearly all of it importing transformers
def test_training_script_smoke_run_writes_a_loadable_folder(tmp_path):
    out = tmp_path / "tiny"
    env = {**os.environ, "CUANTIZA_QUIET": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--steps",
        "1",
        "--batch-size",
        "1",
        "--corpus",
        "stdlib",
        "--eval-bytes",
        "512",
        "--out",
        str(out),
        "--quiet",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "README.md",
        "heldout.txt",
        "calibration.txt",
    }
    m = transformers.LlamaForCausalLM.from_pretrained(out, local_files_only=True)
    assert m.dtype == torch.float32 and "Validation perplexity" in (out / "README.md").read_text()
    spec = importlib.util.spec_from_file_location("train_llama", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(OutputExistsError, match="--force"):  # never overwrites silently
        script.main(cmd[2:])
