"""FAULTS 39: values at or near +-FLT_MAX. The grid's last level s (q - z) used to overflow
float32 (an asymmetric range [-FLT_MAX, FLT_MAX] dequantized FLT_MIN's neighbour to -inf, and
a symmetric scale M / 127 rounded up gave 127 s = inf); the documented clamp lowers the scale
just enough that every level is finite."""

import itertools

import pytest
import torch

import cuantiza as cz
from cuantiza.core import qparams
from tests.thresholds import THRESHOLDS

M = torch.finfo(torch.float32).max


def _schemes():
    for bits, sym, restricted, gran, sd in itertools.product(
        (1, 2, 4, 8),
        (False, True),
        (True, False),
        (cz.PerTensor(), cz.PerChannel(0), cz.PerGroup(16)),
        ("float32", "bfloat16"),
    ):
        if not restricted and (not sym or bits == 1):
            continue
        yield cz.QScheme(
            bits=bits, symmetric=sym, granularity=gran, scale_dtype=sd, restricted=restricted
        )


def _extreme_tensor() -> torch.Tensor:
    torch.manual_seed(0)
    x = (torch.rand(4, 32) * 2 - 1) * M
    x[0, 0], x[1, 3], x[2, :16] = M, -M, M
    x[3] = torch.linspace(-1, 1, 32) * M
    return x


@pytest.mark.parametrize("scheme", list(_schemes()), ids=lambda s: s.describe() + s.scale_dtype)
def test_a_typed_error_or_finite_values_never_inf(scheme):
    """Every scheme either refuses the range (a scale that cannot be stored: 1-bit asymmetric
    needs s = 2 FLT_MAX) or dequantizes to finite values."""
    x = _extreme_tensor()
    try:
        q, qp = cz.quantize_tensor(x, scheme)
    except cz.ScaleOverflowError as e:
        assert "overflows" in str(e)
        return
    x_hat = cz.dequantize(q, qp)
    assert bool(torch.isfinite(x_hat).all())
    assert torch.equal(cz.QTensor.from_float(x, scheme).dequantize(), x_hat)


@pytest.mark.parametrize(
    "bits, symmetric", [(2, False), (4, False), (8, False), (4, True), (8, True)]
)
def test_the_clamp_costs_at_most_one_step(bits, symmetric):
    """float32 scales (a bfloat16 scale is itself rounded to 8 bits, so its grid falls short of
    the range by up to k 2^-8 steps with or without this clamp)."""
    x = _extreme_tensor()
    scheme = cz.QScheme(bits=bits, symmetric=symmetric, granularity=cz.PerChannel(0))
    q, qp = cz.quantize_tensor(x, scheme)
    err = (x.double() - cz.dequantize(q, qp).double()).abs().amax(1)
    assert bool((err <= qp.scale.double().abs() * THRESHOLDS["float_max_error_steps"]).all())


@pytest.mark.parametrize("symmetric", [False, True])
def test_the_reported_case_no_longer_gives_minus_inf(symmetric):
    """The issue's example: [-FLT_MAX, FLT_MAX] with an asymmetric 8-bit scheme."""
    x = torch.tensor([[M, -M, 1.0, 0.0]])
    q, qp = cz.quantize_tensor(
        x, cz.QScheme(bits=8, symmetric=symmetric, granularity=cz.PerTensor())
    )
    x_hat = cz.dequantize(q, qp)
    assert bool(torch.isfinite(x_hat).all()) and x_hat[0, 0] > 0.99 * M and x_hat[0, 1] < -0.99 * M


def test_ordinary_ranges_keep_their_exact_scale():
    """The clamp touches only ranges near float32's maximum: elsewhere the formula's scale."""
    s = cz.QScheme(bits=8, symmetric=False, granularity=cz.PerTensor())
    qp = cz.choose_qparams(torch.tensor(-1.0), torch.tensor(3.0), s)
    assert float(qp.scale) == pytest.approx(4 / 255, rel=2**-23) and int(qp.zero_point) == 64
    assert qparams.grid_is_finite(torch.tensor([M / 256]), s)
    assert not qparams.grid_is_finite(torch.tensor([M / 254]), s)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("gran", [cz.PerChannel(0), cz.PerGroup(16)], ids=["channel", "group16"])
def test_the_native_one_pass_kernel_agrees(monkeypatch, symmetric, gran):
    """The one-pass kernel computes its own scales: rows near the maximum go to the general
    path (and its clamp), so both paths give the same finite result."""
    from tests.helpers.native import native_everywhere, same_result, torch_path

    native_everywhere(monkeypatch)
    x, s = _extreme_tensor(), cz.QScheme(bits=4, symmetric=symmetric, granularity=gran)
    got = cz.quantize_tensor(x, s)
    same_result(got, torch_path(lambda: cz.quantize_tensor(x, s), monkeypatch))
    assert bool(torch.isfinite(cz.dequantize(*got)).all())
