"""Issue 13, item 1: the dynamic configs a user writes without an activation scheme run the
fast exact kernel (per-token symmetric 7-bit codes on the fused u8 x s8 GEMM), bit for bit the
reference kernel's result; an activation scheme the user writes is run as written, and when it
is off the fast path its layers say so, with the config change that would make them fast."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

import cuantiza as cz
from cuantiza.backends import layers_torch
from cuantiza.nn.config import FAST_DYNAMIC_ACTIVATION

PRESET = cz.QuantConfig(activation=cz.QScheme(bits=7, symmetric=True), dynamic="per_token")
A8 = cz.QScheme(bits=8, symmetric=False)
needs_onednn = pytest.mark.skipif(
    not layers_torch.onednn_available(), reason="this torch build has no oneDNN int8 ops"
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(96, 64), nn.GELU(), nn.Linear(64, 24)).eval()


def _layers(qm) -> list:
    return [m for m in qm.modules() if isinstance(m, cz.nn.DynamicQuantLinear)]


def _default_models(m) -> dict:
    return {
        "no config": cz.quantize_dynamic(m),
        "QuantConfig()": cz.quantize_dynamic(m, cz.QuantConfig()),
        "other fields": cz.quantize_dynamic(m, cz.QuantConfig(weight_range=cz.MinMax())),
    }


@needs_onednn
def test_configs_without_an_activation_run_the_fused_gemm():
    for name, qm in _default_models(_net()).items():
        for layer in _layers(qm):
            assert layer.per_token and layer.act_scheme == FAST_DYNAMIC_ACTIVATION, name
            assert layer.kernel == "onednn" and layer.fused and layer.fallback is None, name
        acts = {lp.activation for lp in qm.cuantiza_info.plan.quantized()}
        assert acts == {FAST_DYNAMIC_ACTIVATION}, name  # the plan records what runs


def test_default_is_the_preset_and_the_reference_kernel_bit_for_bit():
    """The default's fast path against its slow reference: the same layers with the
    ``reference`` kernel (general per-token path, int64 accumulation)."""
    m = _net()
    x = torch.randn(3, 5, 96) * 4
    with torch.no_grad():
        preset = cz.quantize_dynamic(m, PRESET)(x)
        for name, qm in _default_models(m).items():
            assert torch.equal(qm(x), preset), name
        qm = cz.quantize_dynamic(m)
        for layer in _layers(qm):
            layer._choose(layer.act_scheme, "reference", scalar_zp=False)
            assert not layer.fused
        assert torch.equal(qm(x), preset)


def test_a_written_activation_scheme_runs_as_written_and_says_it_is_slow():
    m = _net()
    qm = cz.quantize_dynamic(m, cz.QuantConfig(activation=A8))
    for layer in _layers(qm):
        assert not layer.per_token and layer.act_scheme == A8
        assert layer.kernel in ("f32exact", "f32split")
        assert "8-bit asymmetric" in layer.fallback and "QuantConfig()" in layer.fallback
        assert f"kernel={layer.kernel} (8-bit asymmetric" in repr(layer)
    x = torch.randn(2, 96)
    text = cz.report(m, qm, x).to_markdown()
    assert "Layers on a slow reference kernel (2)" in text
    assert "dynamic='per_token', runs the native u8 x s8 GEMM" in text


def test_written_modes_keep_the_written_scheme():
    m = _net()
    for mode, per_token in (("per_tensor", False), ("per_token", True)):
        for layer in _layers(cz.quantize_dynamic(m, cz.QuantConfig(dynamic=mode))):
            assert layer.per_token == per_token and layer.act_scheme == A8, mode
            assert layer.fallback is not None, mode


def test_left_out_survives_copies_and_replace_but_not_a_written_scheme():
    cfg = cz.QuantConfig()
    for c in (copy.copy(cfg), copy.deepcopy(cfg), dataclasses.replace(copy.deepcopy(cfg))):
        assert c.dynamic_activation() == (FAST_DYNAMIC_ACTIVATION, True)
        assert c == cfg
    written = cz.QuantConfig(activation=cz.QScheme(bits=8, symmetric=False))
    assert written.dynamic_activation() == (A8, False)
    assert written != cfg  # equal fields, different layers: not equal configs
    assert dataclasses.replace(cfg, activation=A8).dynamic_activation() == (A8, False)


def test_overrides_resolve_auto_per_layer():
    m = _net()
    cfg = cz.QuantConfig(overrides={"2": {"activation": A8}})
    first, last = _layers(cz.quantize_dynamic(m, cfg))
    assert first.per_token and first.act_scheme == FAST_DYNAMIC_ACTIVATION
    assert not last.per_token and last.act_scheme == A8
    with pytest.raises(cz.errors.ConfigError, match="unknown fields"):
        cz.QuantConfig(overrides={"2": {"activation_left_out": True}})
    with pytest.raises(cz.errors.ConfigError, match="dynamic must be one of"):
        cz.QuantConfig(dynamic="fast")
