"""The fused per-token path of DynamicQuantLinear (``quantize_sym_rows`` + oneDNN) against the
general path (``dynamic_qparams`` + ``quantize_rows`` + any kernel): the same codes, scales and
outputs bit for bit, and the same typed errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cuantiza as cz
from cuantiza.backends import layers_torch as fast
from cuantiza.backends.native import rtn as _native
from cuantiza.backends.native import threads as native_threads
from cuantiza.core.quantize import quantize_2d
from cuantiza.nn.layer_math import dynamic_qparams, fused_rows_ok, quantize_sym_rows
from tests.helpers.data import activation_rows


@pytest.fixture(params=["native", "native-threads", "torch"])
def path(request, monkeypatch):
    """Every implementation: the native kernel in one direct call and split over 3 threads
    (where built), and the torch ops."""
    if request.param.startswith("native") and not _native.available():
        pytest.skip("native kernels not built")
    if request.param == "torch":
        monkeypatch.setenv("CUANTIZA_NATIVE", "0")
        return request.param
    monkeypatch.setattr(_native, "MIN_ELEMS", 1)
    if request.param == "native-threads":
        monkeypatch.setattr(native_threads, "MIN_PART_ELEMS", 16)
        monkeypatch.setattr(native_threads, "thread_count", lambda: 3)
    return request.param


@pytest.mark.parametrize("bits", [2, 4, 7, 8])
@pytest.mark.parametrize("seed", range(4))
def test_fused_codes_and_scales_equal_the_general_path(bits, seed, path):
    scheme = cz.QScheme(bits=bits, symmetric=True)
    x = activation_rows(seed)
    qp = dynamic_qparams(x, scheme, per_token=True)
    want = quantize_2d(x, qp)
    q, s = quantize_sym_rows(x, scheme)
    nonzero = x.abs().amax(dim=1) > 0  # all-zero rows: tiny instead of 1, codes 0
    assert torch.equal(s.reshape(-1)[nonzero], qp.scale.to(torch.float32).reshape(-1)[nonzero])
    assert bool((s.reshape(-1)[~nonzero] > 0).all())
    assert q.dtype == want.dtype and torch.equal(q, want)
    q_off, _ = quantize_sym_rows(x, scheme, offset=64)
    if bits <= 7:
        assert q_off.dtype == torch.uint8 and torch.equal(
            q_off.to(torch.int16), want.to(torch.int16) + 64
        )


def test_fused_only_takes_the_schemes_it_computes_exactly():
    assert fused_rows_ok(cz.QScheme(bits=7, symmetric=True))
    assert not fused_rows_ok(cz.QScheme(bits=8, symmetric=False))
    assert not fused_rows_ok(cz.QScheme(bits=1, symmetric=True))
    assert not fused_rows_ok(cz.QScheme(bits=7, symmetric=True, scale_dtype="float16"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rows_leave_the_fused_path_for_the_typed_error(bad, path):
    x = activation_rows(0)
    x[5, 7] = bad
    assert quantize_sym_rows(x, cz.QScheme(bits=7, symmetric=True)) is None
    m = nn.Sequential(nn.Linear(160, 16))
    qm = cz.quantize_dynamic(
        m, cz.QuantConfig(activation=cz.QScheme(bits=7, symmetric=True), dynamic="per_token")
    )
    with pytest.raises(cz.errors.NonFiniteError):
        qm(x)


@pytest.mark.skipif(not fast.onednn_available(), reason="oneDNN int8 ops not in this torch build")
@pytest.mark.parametrize("bias", [True, False])
def test_fused_layer_equals_the_reference_kernel(bias, path):
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(384, 200, bias=bias))
    cfg = cz.QuantConfig(activation=cz.QScheme(bits=7, symmetric=True), dynamic="per_token")
    layer = cz.quantize_dynamic(m, cfg)[0]
    assert layer.kernel == "onednn" and layer.fused
    x = torch.randn(3, 11, 384) * 4
    x[0, 0] = 0.0
    with torch.no_grad():
        fused = layer(x)
        layer._choose(layer.act_scheme, "reference", scalar_zp=False)
        assert not layer.fused
        assert torch.equal(fused, layer(x))


@pytest.mark.parametrize("qmax", [1, 7, 63, 127])
def test_float32_division_equals_float64_then_rounding(qmax):
    """The fused path's scale (one float32 division) against choose_qparams' (float64, then
    rounded to float32) over a million random finite float32 bit patterns, denormals included."""
    g = torch.Generator().manual_seed(qmax)
    bits = torch.randint(0, 0x7F800000, (1 << 20,), generator=g, dtype=torch.int32)
    a = bits.view(torch.float32)
    tiny = torch.finfo(torch.float32).tiny
    fast32 = (a / qmax).clamp_(min=tiny)
    via64 = (a.to(torch.float64) / qmax).clamp_(min=tiny).to(torch.float32)
    assert torch.equal(fast32, via64)


@pytest.mark.skipif(not _native.available(), reason="native kernels not built")
def test_layers_use_the_native_kernel_where_built(monkeypatch):
    """Per-token codes from one C call: inside the native layer where its GEMM applies (K a
    multiple of 4), else in ``quantize_absmax_rows`` before oneDNN."""
    calls = []
    real = _native.quantize_absmax_rows
    monkeypatch.setattr(_native, "quantize_absmax_rows", lambda *a: calls.append(1) or real(*a))
    cfg = cz.QuantConfig(activation=cz.QScheme(bits=7, symmetric=True), dynamic="per_token")
    native = cz.quantize_dynamic(nn.Sequential(nn.Linear(384, 64)), cfg)[0]
    odd_k = cz.quantize_dynamic(nn.Sequential(nn.Linear(383, 64)), cfg)[0]
    with torch.no_grad():
        native(torch.randn(128, 384))
        assert calls == [] and native.w_int.packs[("native", 63)] is not None
        odd_k(torch.randn(128, 383))
    assert calls == [1] and odd_k.w_int.packs[("native", 63)] is None
