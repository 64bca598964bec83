"""The native per-token int8 layer (``backends.native.linear``, gemm.c) against the general path of
DynamicQuantLinear (``dynamic_qparams`` + ``quantize_rows`` + the reference kernel): the same
outputs bit for bit at every shape the tiles cut unevenly, on 1-3 threads, and the same errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

import cuantiza as cz
from cuantiza.backends.native import linear as native_linear
from cuantiza.backends.native import rtn as _native
from tests.helpers.data import activation_rows

needs_layer = pytest.mark.skipif(
    not native_linear.built() or not _native.available(), reason="native layer not built"
)


def _layer(k: int, n: int, bits: int = 7, bias: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    cfg = cz.QuantConfig(activation=cz.QScheme(bits=bits, symmetric=True), dynamic="per_token")
    return cz.quantize_dynamic(nn.Sequential(nn.Linear(k, n, bias=bias)), cfg)[0]


def _general(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's output on the general path with the reference (specification) kernel."""
    kernel = layer.kernel
    layer._choose(layer.act_scheme, "reference", scalar_zp=False)
    try:
        return layer(x)
    finally:
        layer._choose(layer.act_scheme, kernel, scalar_zp=False)


@needs_layer
def test_packing_layout_and_column_sums():
    w = torch.randint(-127, 128, (21, 12), dtype=torch.int8)
    p = native_linear.NativeLinear(w, 63)
    blocks = p.packed.reshape(2, 3, 16, 4)  # (blocks, K/4, 16 columns, 4 k)
    want = torch.zeros(32, 12, dtype=torch.int8)
    want[:21] = w
    assert torch.equal(blocks.permute(0, 2, 1, 3).reshape(32, 12), want)
    assert torch.equal(p.colsum, want.to(torch.int32).sum(dim=1))


@pytest.fixture(params=["cpu", "portable"])
def tile(request):
    """The tile the CPU gets (AVX2 here), and the portable C tile other CPUs get."""
    was = native_linear._LIB.cz_gemm_portable(int(request.param == "portable"))
    yield request.param
    native_linear._LIB.cz_gemm_portable(was)


@needs_layer
@pytest.mark.parametrize("m", [1, 3, 4, 5, 130, 300])
@pytest.mark.parametrize("k,n", [(4, 1), (64, 15), (64, 17), (384, 48), (160, 200)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_equals_the_general_path(m, k, n, threads, tile):
    layer = _layer(k, n, seed=m + k + n)
    g = torch.Generator().manual_seed(m * k)
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 3, m)[:, None]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            got = layer(x)
    finally:
        torch.set_num_threads(before)
    assert layer.w_int.packs[("native", 63)] is not None
    assert torch.equal(got, _general(layer, x))


@needs_layer
@pytest.mark.parametrize("bits", [2, 4, 7])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_extreme_rows_widths_and_no_bias(bits, bias, seed, tile):
    """Rows from 1e-40 to 1e30, all-zero and denormal rows, exact ties (``activation_rows``)."""
    layer = _layer(160, 40, bits=bits, bias=bias, seed=seed)
    x = activation_rows(seed)
    with torch.no_grad():
        assert torch.equal(layer(x), _general(layer, x))


@needs_layer
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_rows_raise_the_typed_error(bad):
    layer = _layer(64, 16)
    x = torch.randn(9, 64)
    x[7, 3] = bad
    assert layer.w_int.native_linear(63).forward(x, layer.s_w, layer.bias) is None
    with pytest.raises(cz.errors.NonFiniteError):
        layer(x)


@needs_layer
def test_only_exact_cases_are_taken(monkeypatch):
    w = torch.zeros(8, 64, dtype=torch.int8)
    assert native_linear.supports(w, 63)
    assert not native_linear.supports(w, 127)  # u = q + 64 would pass 127
    assert not native_linear.supports(w[:, :62], 63)  # K not a multiple of 4
    assert not native_linear.supports(w.to(torch.int16), 63)
    assert not native_linear.supports(w[:, :0], 63)
    monkeypatch.setenv("CUANTIZA_NATIVE", "0")
    assert not native_linear.supports(w, 63)


@needs_layer
def test_bias_and_scale_changes_are_seen():
    """The padded exit copies follow in-place edits and replaced tensors of the layer."""
    layer = _layer(64, 24)
    x = torch.randn(5, 64)
    with torch.no_grad():
        layer(x)
        layer.bias.add_(1.0)
        assert torch.equal(layer(x), _general(layer, x))
        layer.s_w = layer.s_w * 2
        assert torch.equal(layer(x), _general(layer, x))


@needs_layer
def test_leading_dims_and_non_contiguous_input():
    layer = _layer(64, 24)
    x = torch.randn(3, 64, 7).transpose(1, 2)  # (3, 7, 64), not contiguous
    with torch.no_grad():
        got = layer(x)
    assert got.shape == (3, 7, 24)
    assert torch.equal(got, _general(layer, x))


@needs_layer
@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("shape", [(64,), (0, 64), (2, 0, 64), (1, 1, 64)])
def test_any_leading_shape_and_dtype_without_reshapes(shape, native, monkeypatch):
    """The hot path takes x as it comes and makes y in its final shape (issue 13, item 3): the
    same values and shape as the general path, float64 input and empty batches included, on the
    native layer and on its torch ops."""
    monkeypatch.setenv("CUANTIZA_NATIVE", native)
    layer = _layer(64, 24)
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        got = layer(x)
    assert got.shape == (*shape[:-1], 24) and got.dtype == torch.float32
    assert torch.equal(got, _general(layer, x))


@needs_layer
def test_wrong_feature_count_is_refused_not_read_past():
    layer = _layer(64, 24)
    with pytest.raises(ValueError, match="takes 64 features"):
        layer(torch.randn(2, 60))
    with pytest.raises(ValueError, match="takes 64 features"):
        layer.w_int.native_linear(63).forward(torch.randn(2, 68), layer.s_w, None)


def test_built_when_a_compiler_is_present():
    """As test_native's check for _rtn: a missing _gemm library must not pass unnoticed."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the optional extension is legitimately absent")
    assert native_linear.built(), (
        "a C compiler exists but cuantiza/backends/native/_gemm*.so was not built or failed to load"
    )


@needs_layer
def test_accumulators_past_float32_precision(tile):
    """K = 4096 with every code and weight at its extreme: |acc| reaches 4096 * 63 * 127 > 2^24,
    so float32(acc) rounds, as the general path's does."""
    torch.manual_seed(3)
    lin = nn.Linear(4096, 20)
    with torch.no_grad():
        lin.weight.copy_(torch.sign(torch.randn(20, 1)) * 0.5)  # one sign per row
        lin.weight[:, ::7] *= 0.9
    cfg = cz.QuantConfig(activation=cz.QScheme(bits=7, symmetric=True), dynamic="per_token")
    layer = cz.quantize_dynamic(nn.Sequential(lin), cfg)[0]
    x = torch.ones(6, 4096)
    x[1] = -1.0
    x[2, ::3] = -1.0
    x[3:] = torch.randn(3, 4096)
    acc_row0 = 63 * layer.w_int.w.to(torch.int64).sum(dim=1)  # x = 1: every code is qmax = 63
    assert int(acc_row0.abs().max()) > 2**24
    with torch.no_grad():
        assert torch.equal(layer(x), _general(layer, x))


@needs_layer
@pytest.mark.parametrize("n", [1024, 1001])
def test_large_outputs_split_by_rows(n):
    """4200 rows on 2 threads: each thread takes rows; 4200 x 1024 float32 is past NT_BYTES
    (16 MiB), so y is written with streaming stores (with ordinary ones where rows are not
    32-byte multiples: n = 1001)."""
    layer = _layer(8, n, seed=n)
    x = torch.randn(4200, 8)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            got = layer(x)
    finally:
        torch.set_num_threads(before)
    assert got.numel() * 4 >= 16 << 20 or n % 8
    assert torch.equal(got, _general(layer, x))


def test_weight_only_library_built_when_a_compiler_is_present():
    """The same for _wo (wo.c and decode.c): its tests skip when it is missing, so a failed
    optional build (a decode.c compile error once did this silently) is caught here."""
    from cuantiza.backends.native import decode, weight_only

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the optional extension is legitimately absent")
    assert weight_only.built() and decode.available(), (
        "a C compiler exists but cuantiza/backends/native/_wo*.so was not built or failed to load"
    )
