"""Weight-only layers (QuantLinear with act=None) on the native kernel against the reference
(QTensor.dequantize, then F.linear): every scheme and granularity, within the bound the kernel's
docstring derives; the choice of kernel, its fallbacks and their reasons, saving, the report."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cuantiza as cz
from cuantiza.backends.native import weight_only as native
from cuantiza.nn import QuantLinear

needs_native = pytest.mark.skipif(not native.built(), reason="native kernels not built")
U = 2.0**-24

SCHEMES = [
    cz.QScheme(bits=4, symmetric=False, granularity=cz.PerGroup(32)),
    cz.QScheme(bits=4, granularity=cz.PerGroup(128), scale_dtype="float16"),
    cz.QScheme(bits=4, restricted=False, granularity=cz.PerGroup(32), scale_dtype="float16"),
    cz.QScheme(bits=8, granularity=cz.PerChannel(0)),
    cz.QScheme(bits=8, symmetric=False, granularity=cz.PerTensor()),
    cz.QScheme(bits=6, symmetric=False, granularity=cz.PerGroup(64), scale_dtype="bfloat16"),
    cz.QScheme(bits=5, granularity=cz.PerGroup(96)),
    cz.QScheme(bits=3, granularity=cz.PerGroup(64)),
    cz.QScheme(bits=2, symmetric=False, granularity=cz.PerGroup(32)),
    cz.QScheme(bits=1, granularity=cz.PerGroup(32)),
]


def _layer(scheme: cz.QScheme, n: int = 40, k: int = 384, bias: bool = True) -> QuantLinear:
    torch.manual_seed(1)
    lin = torch.nn.Linear(k, n, bias=bias)
    return QuantLinear(cz.QTensor.from_float(lin.weight, scheme), lin.bias)


def _bound(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """2 gamma(K + 1) (sum_k |x_k w_k| + |b|), per output (the kernel module's docstring)."""
    k = x.shape[-1] + 1
    gamma = k * U / (1 - k * U)
    mag = x.abs().double() @ w.abs().double().T + (0 if b is None else b.abs().double())
    return 2 * gamma * mag


@needs_native
@pytest.mark.parametrize("scheme", SCHEMES, ids=[s.describe() for s in SCHEMES])
@pytest.mark.parametrize("rows", [1, 3, 17])
def test_native_kernel_within_the_bound_of_the_reference(scheme, rows):
    layer = _layer(scheme)
    assert layer.kernel == "native_wo" and layer.fallback is None
    x = torch.randn(rows, 384) * torch.logspace(-3, 3, 384)  # magnitudes over six decades
    w = layer.weight_q.dequantize()
    ref = F.linear(x, w, layer.bias)
    assert (layer(x).double() - ref.double()).abs().le(_bound(x, w, layer.bias)).all()


@needs_native
def test_leading_dims_dtype_and_threads():
    layer = _layer(SCHEMES[0])
    x = torch.randn(2, 3, 384, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (2, 3, 40) and y.dtype == torch.float32
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = layer(x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, y)  # each output is summed in one fixed order by one thread


def test_fallback_reasons_are_kept_and_reported(monkeypatch):
    padded = QuantLinear(
        cz.QTensor.from_float(torch.randn(8, 48), cz.QScheme(bits=4, granularity=cz.PerGroup(32)))
    )
    assert padded.kernel == "dequantize" and "does not divide" in padded.fallback
    assert "dequantize (group 32 does not divide" in repr(padded)
    monkeypatch.setenv("CUANTIZA_NATIVE", "0")
    off = _layer(SCHEMES[0])
    assert off.kernel == "dequantize" and "CUANTIZA_NATIVE=0" in off.fallback
    x = torch.randn(5, 384)
    assert torch.equal(off(x), F.linear(x, off.weight_q.dequantize(), off.bias))


def test_the_reference_can_be_asked_for():
    qt = _layer(SCHEMES[0]).weight_q
    layer = QuantLinear(qt, kernel="dequantize")
    assert layer.kernel == "dequantize"
    x = torch.randn(4, 384)
    assert torch.equal(layer(x), F.linear(x, qt.dequantize()))
    with pytest.raises(ValueError, match="weight-only kernels"):
        QuantLinear(qt, kernel="onednn")


@needs_native
def test_a_replaced_weight_is_repacked():
    layer = _layer(SCHEMES[0])
    x = torch.randn(2, 384)
    layer(x)
    other = _layer(SCHEMES[3]).weight_q
    layer.weight_q = other
    assert (layer(x) - F.linear(x, other.dequantize(), layer.bias)).abs().max() < 1e-4


@needs_native
def test_saved_model_reloads_on_the_native_kernel_with_identical_outputs(tmp_path):
    m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    qm = cz.quantize_weights(m, cz.QuantConfig(weight=SCHEMES[0]))
    cz.save(qm, tmp_path / "q")
    back = cz.load(tmp_path / "q", m)
    assert [back[0].kernel, back[2].kernel] == ["native_wo", "native_wo"]
    x = torch.randn(3, 64)
    assert torch.equal(back(x), qm(x))


@needs_native
def test_report_names_the_kernel_and_counts_its_packed_copy():
    m = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 8))
    cfg = cz.QuantConfig(
        weight=cz.QScheme(bits=4, granularity=cz.PerGroup(32)), group_remainder="pad"
    )
    qm = cz.quantize_weights(m, cfg)
    r = cz.report(m, qm, torch.randn(4, 64))
    kernels = {row.name: row.kernel for row in r.layers if row.quantized}
    assert kernels == {"0": "native_wo", "2": "dequantize"}
    assert "Layers on a slow reference kernel (1)" in r.to_markdown()
    assert r.totals["quant_cache_bytes"] >= qm[0].weight_only.cache_bytes > 0
