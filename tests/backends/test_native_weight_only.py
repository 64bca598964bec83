"""The weight-only kernels (backends/native/wo.c through weight_only.py), held to their
contract on the AVX2 path and the portable C path (``force_portable``):

(a) the packed layout round-trips: codes, scales and offsets come back out unchanged;
(b) the kernels' dequantized weights equal the reference (q - z) s bit for bit;
(c) every output is within the module docstring's bound: gamma(K) sum |x||w| of the exact
    (float64) result and 2 gamma(K + 1)(sum |x||w| + |b|) of F.linear, decode and prefill;
(d) the int8-activation decode equals its specification (``weight_only_reference``) bit for bit;
plus threads, strided x, NaN rows, refusals. Shapes stay small: the suite runs on 2 cores.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cuantiza.backends.native import weight_only as wo
from cuantiza.backends.weight_only_reference import int8_activation_linear

pytestmark = pytest.mark.skipif(
    not wo.built(), reason="the native weight-only library is not built"
)

U = 2.0**-24
K = 384  # a multiple of 32, 64, 96 and 128
PATHS = ("avx2", "portable") if wo.built() and wo.isa() == "avx2" else ("portable",)


def gamma(j: int) -> float:
    return j * U / (1 - j * U)


def scheme(bits: int, kind: str) -> tuple[int, int, int]:
    """(qmin, code step, largest code) of a scheme."""
    if kind == "binary":
        return -1, 2, 1
    if kind == "sym":
        return -(2 ** (bits - 1) - 1), 1, 2**bits - 2
    if kind == "symfull":
        return -(2 ** (bits - 1)), 1, 2**bits - 1
    return 0, 1, 2**bits - 1


def make(bits, kind, n, k, group, grid="fp32", seed=0):
    gen = torch.Generator().manual_seed(seed)
    qmin, step, cmax = scheme(bits, kind)
    g = k // group
    codes = torch.randint(0, cmax + 1, (n, k), generator=gen).to(torch.uint8)
    s = torch.rand(n, g, generator=gen) * 0.1 + 1e-3
    if kind == "symfull":  # negative scales happen (a full-range grid mirrored)
        s = s * torch.where(torch.rand(n, g, generator=gen) < 0.3, -1.0, 1.0)
    if grid != "fp32":
        s = s.to(getattr(torch, grid)).float()
    zero = None
    if kind == "asym":
        zero = torch.randint(0, 2**bits, (n, g), generator=gen).to(torch.int32)
    return {"codes": codes, "bits": bits, "group": group, "scale": s, "zero": zero, "qmin": qmin,
            "step": step}  # fmt: skip


def layer(p, **kw) -> wo.WeightOnlyLinear:
    return wo.WeightOnlyLinear(
        p["codes"], p["bits"], p["group"], p["scale"], p["zero"], p["qmin"], p["step"], **kw
    )


def reference_weight(p) -> torch.Tensor:
    """(q - z) s in float32, one rounding: q - z = step c + qmin - z, an exact integer."""
    n, k = p["codes"].shape
    zero = torch.zeros(n, k // p["group"], dtype=torch.int32) if p["zero"] is None else p["zero"]
    e = (p["step"] * p["codes"].int()).view(n, -1, p["group"]) + (p["qmin"] - zero)[..., None]
    return (e.float() * p["scale"][..., None]).reshape(n, k)


class portable:
    def __init__(self, path: str):
        self.on = path == "portable"

    def __enter__(self):
        self.was = wo.force_portable(self.on)

    def __exit__(self, *exc):
        wo.force_portable(self.was)


def check_bound(y, x, w, bias=None):
    """(c): within gamma of the exact result and 2 gamma of F.linear."""
    x64, w64 = x.double(), w.double()
    exact, mag, k = x64 @ w64.T, x64.abs() @ w64.abs().T, x.shape[1]
    if bias is not None:
        exact, mag, k = exact + bias.double(), mag + bias.double().abs(), k + 1
    bound = gamma(k) * mag
    assert ((y.double() - exact).abs() <= bound).all()
    assert ((y.double() - F.linear(x, w, bias).double()).abs() <= 2 * bound).all()


CASES = [
    (1, "binary", 32, "fp32"),
    (1, "asym", K, "float16"),
    (2, "sym", 64, "fp32"),
    (3, "asym", 96, "bfloat16"),
    (4, "sym", 128, "float16"),
    (4, "asym", 32, "float16"),
    (4, "symfull", K, "fp32"),
    (5, "asym", 128, "fp32"),
    (6, "symfull", 32, "bfloat16"),
    (8, "asym", K, "float16"),
    (8, "sym", 64, "fp32"),
]


@pytest.mark.parametrize("bits,kind,group,grid", CASES)
@pytest.mark.parametrize("path", PATHS)
def test_layout_round_trips_and_weights_are_exact(bits, kind, group, grid, path):
    p = make(bits, kind, 37, K, group, grid)  # 37 columns: a partial last block of 16
    with portable(path):
        lin = layer(p)
        codes, scale, off = lin.unpack()
        assert torch.equal(codes, p["codes"]) and torch.equal(scale, p["scale"])
        zero = 0 if p["zero"] is None else p["zero"]
        assert torch.equal(off, (p["qmin"] - zero) * torch.ones_like(off))
        assert torch.equal(lin.dequantize(), reference_weight(p))


@pytest.mark.parametrize("bits,kind,group,grid", CASES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("m", [1, 3, 7, 8, 21])
def test_outputs_within_the_bound(bits, kind, group, grid, path, m):
    p = make(bits, kind, 37, K, group, grid, seed=m)
    x = torch.randn(m, K, generator=torch.Generator().manual_seed(m))
    x[0, :64] *= 1e3  # mixed magnitudes
    bias = torch.randn(37)
    with portable(path):
        lin = layer(p)
        check_bound(lin.forward(x, bias), x, reference_weight(p), bias)
        check_bound(lin.forward(x), x, reference_weight(p))


@pytest.mark.parametrize("mode", [wo.MODE_DECODE, wo.MODE_PREFILL])
def test_threads_and_strides_do_not_change_a_bit(mode):
    p = make(4, "asym", 300, 512, 128, "float16")
    lin = layer(p)
    big = torch.randn(9, 700)
    x = big[:, 50:562]  # rows with a stride
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lin.forward(x, mode=mode)
        torch.set_num_threads(max(2, threads))
        two = lin.forward(x, mode=mode)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two) and torch.equal(one, lin.forward(x.contiguous(), mode=mode))


@pytest.mark.parametrize("m", [1, 5, 12])
def test_a_nan_row_stays_in_its_row(m):
    p = make(4, "sym", 20, 128, 32)
    x = torch.randn(m, 128)
    x[m - 1, 7] = float("nan")
    y = layer(p).forward(x)
    assert torch.isnan(y[m - 1]).all() and torch.isfinite(y[: m - 1]).all()


def test_refusals_say_why():
    assert "multiple of 32" in wo.supports(8, 100, 4, 32)
    assert "group 48" in wo.supports(8, 96, 4, 48)
    assert "7-bit" in wo.supports(8, 64, 7, 32)
    assert wo.supports(8, 64, 4, 32) is None


# (d) int8 activations: 4- and 8-bit layers, AVX2


@pytest.mark.skipif(PATHS[0] != "avx2", reason="the int8-activation path is AVX2 only")
@pytest.mark.parametrize("kind,group,grid", [("sym", 32, "float16"), ("asym", 128, "fp32"),
                                             ("symfull", K, "bfloat16")])  # fmt: skip
@pytest.mark.parametrize("m", [1, 2, 7])
@pytest.mark.parametrize("bits", [4, 8])
def test_int8_activations_equal_their_specification(kind, group, grid, m, bits):
    p = make(bits, kind, 45, K, group, grid, seed=m)
    x = torch.randn(m, K, generator=torch.Generator().manual_seed(m)) * 5
    x[0, 32:64] = 0  # a block of zeros: d = 0
    x[-1, 100] = 3e5  # one block dominated by an outlier
    bias = torch.randn(45)
    lin = layer(p, int8_decode=True)
    codes, scale, off = lin.unpack()
    want = int8_activation_linear(x, codes, scale, off, bias)
    assert torch.equal(lin.forward(x, bias), want)  # forward() picks it below 8 rows
    assert torch.equal(lin.forward_q8a(x, bias), want)
    w = reference_weight(p)
    d = x.abs().view(m, -1, 32).amax(-1) / 127  # the activations' step per block
    err_bound = (d.repeat_interleave(32, 1) / 2) @ w.abs().T
    exact = x.double() @ w.double().T + bias.double()
    assert ((want.double() - exact).abs() <= err_bound * 1.001 + 1e-3).all()


@pytest.mark.skipif(PATHS[0] != "avx2", reason="the int8-activation path is AVX2 only")
def test_int8_activations_nonfinite_blocks_and_other_widths():
    p = make(4, "asym", 16, 128, 32)
    x = torch.randn(2, 128)
    x[1, 40] = float("inf")
    lin = layer(p, int8_decode=True)
    y = lin.forward(x)
    assert torch.isfinite(y[0]).all() and torch.isnan(y[1]).all()
    assert torch.equal(
        y,
        int8_activation_linear(x, *lin.unpack()),
    ) or torch.equal(y.isnan(), int8_activation_linear(x, *lin.unpack()).isnan())
    assert not layer(make(5, "asym", 16, 128, 32), int8_decode=True).int8_decode  # 4 and 8 only
    assert torch.equal(layer(p).forward(x[:1]), layer(p, int8_decode=False).forward(x[:1]))
