"""GPTQ and AWQ over whole LLaMA decoders (cuantiza.llm.calibrated), and their bad inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cuantiza as cz
from cuantiza.errors import CalibrationError, ConfigError, PlanError
from tests.thresholds import THRESHOLDS

transformers = pytest.importorskip("transformers")
from cuantiza.llm import calibrated  # noqa: E402
from cuantiza.llm.blocks import decoder_parts, first_layer_inputs, run_layer  # noqa: E402


def tiny_llama(seed: int = 0, tie: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def cfg(bits=4, group=32, method="gptq", **kw) -> cz.QuantConfig:
    w = cz.QScheme(
        bits=bits, symmetric=False, granularity=cz.PerGroup(group), scale_dtype="float16"
    )
    return cz.QuantConfig(weight=w, method=method, **kw)


CALIB = torch.randint(0, 256, (16, 32), generator=torch.Generator().manual_seed(1))
IDS = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_quantize_model_makes_integer_layers_close_to_float(method):
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qm = calibrated.quantize_model(model, cfg(8, 32, method), CALIB, seq_len=32, batch_size=4)
    kinds = {type(m).__name__ for m in qm.modules()}
    assert {"QuantLinear", "QuantEmbedding"} <= kinds and "Linear" not in kinds
    with torch.no_grad():
        ref, out = model(IDS).logits, qm(IDS).logits
    assert torch.allclose(
        out, ref, atol=THRESHOLDS["llm_8bit_logits_atol_of_max"] * ref.abs().max()
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched


def test_gptq_lowers_layer_error_against_rtn_on_the_calibration_data():
    model = tiny_llama()
    c = cfg(3, 32, "gptq")
    g = calibrated.quantize_model(model, c, CALIB, seq_len=32, batch_size=4)
    r = cz.quantize_weights(model, cfg(3, 32, "rtn"))
    with torch.no_grad():
        ref = model(CALIB[:4]).logits
        err_g = (g(CALIB[:4]).logits - ref).pow(2).mean()
        err_r = (r(CALIB[:4]).logits - ref).pow(2).mean()
    assert err_g < THRESHOLDS["llm_gptq_vs_rtn_logit_mse_ratio"] * err_r


def test_awq_fold_keeps_the_float_function():
    model = tiny_llama()
    dec = decoder_parts(model)
    hidden, kwargs = first_layer_inputs(dec, [CALIB[:4]])
    layer = dec.layers[0]
    ref = run_layer(layer, hidden, kwargs)[0]
    s = torch.rand(64, generator=torch.Generator().manual_seed(3)) + 0.5
    mods = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]
    calibrated.fold_scales(layer.input_layernorm, mods, s)
    s2 = torch.rand(128, generator=torch.Generator().manual_seed(4)) + 0.5
    calibrated.fold_scales(layer.mlp.up_proj, [layer.mlp.down_proj], s2)
    out = run_layer(layer, hidden, kwargs)[0]
    rtol, atol = THRESHOLDS["fold_scales_layer_rtol"], THRESHOLDS["fold_scales_layer_atol"]
    assert torch.allclose(out, ref, rtol=rtol, atol=atol)


def test_tied_head_is_quantized_once_and_stays_tied():
    model = tiny_llama(tie=True)
    qm = calibrated.quantize_model(model, cfg(4, 32, "gptq"), CALIB, seq_len=32, batch_size=4)
    assert qm.lm_head.weight_q is qm.model.embed_tokens.weight_q


def test_save_and_load_gptq_model_bit_identical(tmp_path):
    model = tiny_llama()
    qm = calibrated.quantize_model(model, cfg(4, 32, "gptq"), CALIB, seq_len=32, batch_size=4)
    cz.save(qm, tmp_path / "q")
    back = cz.load(tmp_path / "q", model)
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, qm(IDS).logits)


def test_bad_inputs_fail_before_any_work():
    model = tiny_llama()
    with pytest.raises(ConfigError, match="quantize_weights"):
        calibrated.quantize_model(model, cfg(method="rtn"), CALIB)
    with pytest.raises(PlanError, match="LLaMA-style"):
        calibrated.quantize_model(nn.Sequential(nn.Linear(64, 64)), cfg(), CALIB)
    with pytest.raises(CalibrationError, match="too short"):
        calibrated.quantize_model(model, cfg(), torch.zeros(10, dtype=torch.long), seq_len=32)
    with pytest.raises(
        PlanError, match="not a multiple of group size 48"
    ):  # FAULTS 15, at plan time
        calibrated.quantize_model(model, cfg(group=48), CALIB, seq_len=32)
    with pytest.raises(PlanError, match="needs calibration data"):
        cz.quantize_weights(model, cfg(method="gptq"))


def test_hqq_through_quantize_weights_beats_rtn_weight_error():
    model = tiny_llama()
    h = cz.quantize_weights(model, cfg(3, 32, "hqq"))
    r = cz.quantize_weights(model, cfg(3, 32, "rtn"))
    w = model.model.layers[0].mlp.down_proj.weight

    def err(q):
        return (q.model.layers[0].mlp.down_proj.weight_q.dequantize() - w).pow(2).sum()

    assert err(h) < err(r)


def test_smoothquant_keeps_the_function_and_helps_w8a8_with_outlier_channels():
    from cuantiza.llm.smooth import smooth_model

    model = tiny_llama()
    with torch.no_grad():  # a few activation channels 30x larger, as in LLMs
        for layer in model.model.layers:
            layer.input_layernorm.weight[:3] *= 30
            layer.post_attention_layernorm.weight[:2] *= 30
    sm = smooth_model(model, CALIB, alpha=0.5, seq_len=32, batch_size=4)
    with torch.no_grad():
        ref = model(IDS).logits
        rtol, atol = THRESHOLDS["smooth_model_logits_rtol"], THRESHOLDS["smooth_model_logits_atol"]
        assert torch.allclose(sm(IDS).logits, ref, rtol=rtol, atol=atol)
        w8a8 = cz.QuantConfig(
            activation=cz.QScheme(bits=8, symmetric=False), exclude=("model.embed_tokens",)
        )
        plain = (cz.quantize_dynamic(model, w8a8)(IDS).logits - ref).pow(2).mean()
        smooth = (cz.quantize_dynamic(sm, w8a8)(IDS).logits - ref).pow(2).mean()
    assert smooth < THRESHOLDS["llm_smoothquant_vs_plain_w8a8_logit_mse_ratio"] * plain
