"""GPTQ / AWQ on checkpoint folders, one layer at a time: equal to the in-memory run, resumable."""

from pathlib import Path

import pytest
import torch

import cuantiza as cz
import cuantiza.llm.checkpoint_calibrated as cc
from cuantiza.errors import ConfigError
from cuantiza.llm.calibrated import quantize_model
from cuantiza.llm.checkpoint import quantize_checkpoint

transformers = pytest.importorskip("transformers")
from tests.helpers.llama import folder_bytes, hf_llama, tiny_llama  # noqa: E402

CALIB = torch.randint(0, 96, (8, 16), generator=torch.Generator().manual_seed(5))
IDS = torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(3))


def cfg(method: str, bits: int = 4) -> cz.QuantConfig:
    w = cz.QScheme(bits=bits, symmetric=False, granularity=cz.PerGroup(32), scale_dtype="float16")
    return cz.QuantConfig(weight=w, method=method)


def _run(src: Path, dst: Path, c: cz.QuantConfig):
    return quantize_checkpoint(
        src, dst, c, calibration=CALIB, progress=False, seq_len=16, batch_size=4
    )


@pytest.mark.parametrize("method", ["gptq", "awq"])
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_layer_by_layer_equals_in_memory(tmp_path, method, tie):
    model = tiny_llama(tie=tie)
    src = hf_llama(tmp_path / "src", model)
    summary = _run(src, tmp_path / "q", cfg(method))
    assert summary.units == 3  # 2 layers + the head
    loaded = cz.load(tmp_path / "q", tiny_llama(tie=tie, seed=9))
    ref = quantize_model(model, cfg(method), CALIB, seq_len=16, batch_size=4)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, ref(IDS).logits)


def test_interrupted_calibrated_run_resumes_with_identical_bytes(tmp_path, monkeypatch):
    src = hf_llama(tmp_path / "src", tiny_llama())
    real, done = cc._run_layer_unit, []

    def stop_at_second(i, *a, **k):
        if i == 1:
            raise KeyboardInterrupt
        done.append(i)
        return real(i, *a, **k)

    monkeypatch.setattr(cc, "_run_layer_unit", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        _run(src, tmp_path / "q", cfg("gptq"))
    assert not (tmp_path / "q").exists()
    monkeypatch.setattr(
        cc, "_run_layer_unit", lambda i, *a, **k: (done.append(i), real(i, *a, **k))[1]
    )
    s = _run(src, tmp_path / "q", cfg("gptq"))
    assert s.units_resumed == 1 and done == [0, 1]  # layer 0 not recomputed
    monkeypatch.setattr(cc, "_run_layer_unit", real)
    _run(src, tmp_path / "fresh", cfg("gptq"))
    assert folder_bytes(tmp_path / "q") == folder_bytes(tmp_path / "fresh")


def test_calibrated_method_without_calibration_is_refused(tmp_path):
    src = hf_llama(tmp_path / "src", tiny_llama())
    with pytest.raises(ConfigError, match="calibration"):
        quantize_checkpoint(src, tmp_path / "q", cfg("gptq"), progress=False)
    assert not (tmp_path / "q").exists()


def test_one_decoder_layer_in_memory_at_a_time(tmp_path, monkeypatch):
    """Calibrated methods go block by block: whenever a layer is loaded, every other layer is
    still (or again) on the meta device, holding no memory."""
    model = tiny_llama()
    model.config.num_hidden_layers = 2
    src = hf_llama(tmp_path / "src", model)
    real, seen = cc._materialize, []

    def watch(mod, prefix, ckpt):
        real(mod, prefix, ckpt)
        if prefix.startswith("model.layers."):
            layers = mod_layers[0]
            seen.append(sum(not next(layer.parameters()).is_meta for layer in layers))

    real_skeleton, mod_layers = cc._skeleton, []

    def skeleton(ckpt):
        dec = real_skeleton(ckpt)
        mod_layers.append(dec.layers)
        return dec

    monkeypatch.setattr(cc, "_materialize", watch)
    monkeypatch.setattr(cc, "_skeleton", skeleton)
    _run(src, tmp_path / "q", cfg("gptq"))
    assert seen == [1, 1]
    assert all(next(layer.parameters()).is_meta for layer in mod_layers[0])


def test_meta_device_model_is_refused_before_calibration():  # FAULTS 22
    with torch.device("meta"):
        model = tiny_llama()
    with pytest.raises(cz.UnsupportedDtypeError, match="meta"):
        quantize_model(model, cfg("gptq"), CALIB, seq_len=16, batch_size=4)


@pytest.mark.parametrize(
    "calibration, options, error, match",
    [
        (CALIB, {"seq_len": 1}, ConfigError, "seq_len must be a whole number >= 2, got 1"),
        (CALIB, {"n_samples": 0}, ConfigError, "n_samples must be a whole number >= 1, got 0"),
        (CALIB, {"n_samples": -5}, ConfigError, "n_samples must be a whole number >= 1"),
        (CALIB.float(), {}, cz.CalibrationError, "integer token ids.*torch.float32"),
        (CALIB[None], {}, cz.CalibrationError, r"integer token ids.*shape \(1, 8, 16\)"),
        (CALIB + 90, {}, cz.CalibrationError, "batch 0 holds token id 1\\d\\d, outside .* 0..95"),
        (CALIB[:1, :1], {}, cz.CalibrationError, "too short"),
    ],
    ids=["seq_len_1", "samples_0", "samples_negative", "float", "3d", "out_of_vocab", "short"],
)
def test_bad_calibration_is_refused_before_work(tmp_path, calibration, options, error, match):
    """FAULTS 13, 37: the arguments and the batches checked first, with the batch named; nothing
    written (the raw errors were a RuntimeError from a reshape, an IndexError in the embedding)."""
    src = hf_llama(tmp_path / "src", tiny_llama())
    kw = {"seq_len": 16, "batch_size": 4, **options}
    with pytest.raises(error, match=match):
        quantize_checkpoint(
            src, tmp_path / "q", cfg("gptq"), calibration=calibration, progress=False, **kw
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
