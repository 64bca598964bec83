"""quantize / dequantize / fake_quantize / quantize_tensor, bit for bit against the reference,
for every bit width, both symmetries, every granularity and every scale storage dtype."""

import itertools

import numpy as np
import pytest
import torch

import cuantiza as cz
from cuantiza.errors import UnsupportedDtypeError
from tests import reference as ref
from tests.helpers.data import planted
from tests.thresholds import THRESHOLDS

# (granularity, shape): PerGroup(32) on 96 columns is even; on 70 columns the last group has 6
GRANULARITIES = [
    (cz.PerTensor(), (6, 64)),
    (cz.PerChannel(0), (6, 64)),
    (cz.PerChannel(1), (6, 64)),
    (cz.PerGroup(32), (6, 96)),
    (cz.PerGroup(32), (6, 70)),
    (cz.PerGroup(5, axis=0), (12, 7)),
    (cz.PerChannel(1), (3, 5, 7)),
    (cz.PerGroup(3, axis=1), (3, 5, 7)),
]
GRAN_IDS = [
    "tensor",
    "channel0",
    "channel1",
    "group32",
    "group32-ragged",
    "group5-axis0",
    "channel1-3d",
    "group3-axis1-3d",
]
SCALE_DTYPES = ["float32", "float16", "bfloat16"]


def _assert_matches_reference(x: np.ndarray, scheme: cz.QScheme):
    gran = ref.gran_tuple(scheme.granularity)
    q, qp = cz.quantize_tensor(torch.from_numpy(x), scheme)
    rq, rs, rz = ref.quantize_tensor(x, scheme.bits, scheme.symmetric, gran, scheme.scale_dtype)
    assert q.shape == x.shape and q.dtype == scheme.q_dtype
    assert qp.scale.dtype == scheme.torch_scale_dtype
    np.testing.assert_array_equal(qp.scale.float().numpy(), rs)
    np.testing.assert_array_equal(qp.zero_point.numpy(), rz)
    np.testing.assert_array_equal(q.numpy().astype(np.int64), rq)
    x_hat = cz.dequantize(q, qp)
    np.testing.assert_array_equal(x_hat.numpy(), ref.dequantize_tensor(rq, rs, rz, gran))


@pytest.mark.parametrize("gran, shape", GRANULARITIES, ids=GRAN_IDS)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", range(1, 9))
def test_quantize_tensor_bit_exact(bits, symmetric, gran, shape):
    x = planted(shape, seed=bits)
    for scale_dtype in SCALE_DTYPES:
        _assert_matches_reference(x, cz.QScheme(bits, symmetric, gran, scale_dtype))


@pytest.mark.parametrize("bits, symmetric", list(itertools.product(range(1, 9), [True, False])))
def test_quantize_with_given_qparams_bit_exact(bits, symmetric):
    """quantize(x, qp) with qparams from a narrower range: values clamp at both ends."""
    x = planted((8, 40), seed=10 + bits)
    scheme = cz.QScheme(bits, symmetric, cz.PerChannel(0))
    lo, hi = torch.full((8,), -2.0), torch.linspace(0.5, 4.0, 8)
    qp = cz.choose_qparams(lo, hi, scheme)
    s, z = qp.scale.numpy()[:, None], qp.zero_point.numpy()[:, None]
    q = cz.quantize(torch.from_numpy(x), qp)
    np.testing.assert_array_equal(
        q.numpy().astype(np.int64), ref.quantize(x, s, z, bits, symmetric)
    )
    np.testing.assert_array_equal(cz.dequantize(q, qp).numpy(), ref.dequantize(q.numpy(), s, z))


def test_round_half_to_even():
    qp = cz.choose_qparams(torch.tensor(-127.0), torch.tensor(127.0), cz.QScheme(bits=8))
    assert float(qp.scale) == 1.0
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 200.0, -200.0])
    assert cz.quantize(x, qp).tolist() == [0, 2, 2, 0, -2, -2, 126, 127, -127]


def test_division_is_true_division():
    """The docstring's case: s = 2/7 in float32, -1 / s = -3.4999998 rounds to -3 (x * (1/s)
    would give -3.5 and round to -4)."""
    q, qp = cz.quantize_tensor(torch.tensor([-1.0, 0.0, 0.5, 2.0]), cz.QScheme(bits=4))
    assert q.tolist() == [-3, 0, 2, 7]


def test_binary_scale_is_mean_abs_of_real_elements():
    x = torch.tensor([[1.0, -3.0, 2.0, 0.0, -4.0]])  # groups of 2: [1,-3] [2,0] [-4]
    q, qp = cz.quantize_tensor(x, cz.QScheme(bits=1, granularity=cz.PerGroup(2)))
    assert qp.scale.tolist() == [[2.0, 1.0, 4.0]]  # the ragged group divides by 1
    assert q.tolist() == [[1, -1, 1, 1, -1]]  # x >= 0 -> +1, so 0 -> +1
    assert cz.dequantize(q, qp).tolist() == [[2.0, -2.0, 1.0, 1.0, -4.0]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_inputs_are_upcast(dtype):
    x = torch.randn(4, 64).to(dtype)
    scheme = cz.QScheme(bits=4, symmetric=False, granularity=cz.PerGroup(32))
    q, qp = cz.quantize_tensor(x, scheme)
    q32, qp32 = cz.quantize_tensor(x.float(), scheme)
    assert torch.equal(q, q32) and torch.equal(qp.scale, qp32.scale)
    assert cz.dequantize(q, qp, dtype=dtype).dtype == dtype


def test_input_never_modified():
    x = torch.randn(8, 64)
    before = x.clone()
    for scheme in [
        cz.QScheme(bits=4, symmetric=False, granularity=cz.PerGroup(32)),
        cz.QScheme(bits=1),
    ]:
        q, qp = cz.quantize_tensor(x, scheme, range=cz.MSE())
        cz.fake_quantize(x, qp)
        cz.quantize(x, qp)
    assert torch.equal(x, before)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quantize_forward_equals_dequantize_quantize(bits, symmetric):
    x = torch.from_numpy(planted((6, 70), seed=bits))
    scheme = cz.QScheme(bits, symmetric, cz.PerGroup(32))
    _, qp = cz.quantize_tensor(x * 0.5, scheme)  # narrower range: some values clamp
    assert torch.equal(cz.fake_quantize(x, qp), cz.dequantize(cz.quantize(x, qp), qp))


@pytest.mark.parametrize(
    "bits, symmetric", [(8, True), (4, False), (2, True), (1, True), (1, False)]
)
def test_fake_quantize_straight_through_gradient(bits, symmetric):
    x_np = planted((4, 50), seed=3)
    scheme = cz.QScheme(bits, symmetric, cz.PerChannel(0))
    _, qp = cz.quantize_tensor(torch.from_numpy(x_np) * 0.5, scheme)
    x = torch.from_numpy(x_np).requires_grad_(True)
    g = torch.randn(4, 50)
    cz.fake_quantize(x, qp).backward(g)
    s, z = qp.scale.numpy()[:, None], qp.zero_point.numpy()[:, None]
    mask = ref.ste_mask(x_np, s, z, bits, symmetric)
    assert 0 < mask.sum() < mask.size  # both cases are exercised
    assert torch.equal(x.grad, g * torch.from_numpy(mask))


def test_fake_quantize_keeps_dtype_and_shape():
    x = torch.randn(3, 5, 8, dtype=torch.bfloat16)
    _, qp = cz.quantize_tensor(x, cz.QScheme(bits=4, granularity=cz.PerGroup(4)))
    y = cz.fake_quantize(x, qp)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape


@pytest.mark.parametrize("bits, symmetric", [(8, True), (4, False), (3, True), (2, False)])
def test_mse_range_never_worse_than_minmax(bits, symmetric):
    x = torch.randn(16, 64)
    x[::3, 5] *= 8  # outliers in some rows
    scheme = cz.QScheme(bits, symmetric, cz.PerChannel(0))
    errors = []
    for spec in (cz.MinMax(), cz.MSE()):
        q, qp = cz.quantize_tensor(x, scheme, range=spec)
        errors.append((cz.dequantize(q, qp) - x).double().pow(2).sum(dim=1))
    minmax, mse = errors
    assert torch.all(mse <= minmax * (1 + THRESHOLDS["sum_order_rtol"]))
    if bits <= 4:  # coarse grids: clipping pays off
        assert torch.any(mse < minmax)


def test_percentile_range_clips_outlier():
    x = torch.randn(1000)
    x[0] = 100.0
    q, qp = cz.quantize_tensor(x, cz.QScheme(bits=8), range=cz.Percentile(99.0))
    assert float(qp.scale) * 127 < 10.0
    assert int(q[0]) == 127  # the outlier is clipped


@pytest.mark.parametrize(
    "spec",
    [cz.Percentile(99.9), cz.Histogram(256), cz.Histogram(256, "entropy"), cz.MovingAverage(0.1)],
    ids=["percentile", "hist-mse", "hist-entropy", "ema"],
)
def test_every_range_spec_quantizes_weights(spec):
    x = torch.randn(2, 64)
    scheme = cz.QScheme(bits=4, symmetric=False, granularity=cz.PerChannel(0))
    q, qp = cz.quantize_tensor(x, scheme, range=spec)
    assert q.shape == x.shape and qp.scale.shape == (2,)
    assert torch.all(qp.scale > 0)
    x_hat = cz.dequantize(q, qp)
    assert torch.all((x_hat - x).abs() <= x.abs().max())  # sane, not garbage


def test_quantize_rejects_integer_and_complex():
    with pytest.raises(UnsupportedDtypeError, match="layer.bias"):
        cz.quantize_tensor(torch.arange(4), cz.QScheme(), name="layer.bias")
    with pytest.raises(UnsupportedDtypeError, match="complex"):
        cz.quantize_tensor(torch.randn(4, dtype=torch.complex64), cz.QScheme())


def test_empty_tensor():
    q, qp = cz.quantize_tensor(torch.empty(0), cz.QScheme(bits=4))
    assert q.shape == (0,) and float(qp.scale) == 1.0
    assert cz.dequantize(q, qp).shape == (0,)


@pytest.mark.parametrize(
    "scheme",
    [
        cz.QScheme(bits=8, symmetric=False),
        cz.QScheme(bits=7),
        cz.QScheme(bits=4, granularity=cz.PerChannel(0)),
        cz.QScheme(bits=8, symmetric=False, granularity=cz.PerChannel(0)),
    ],
    ids=lambda s: s.describe(),
)
def test_quantize_2d_fast_path_equals_quantize(scheme):
    from cuantiza.core.quantize import quantize_2d

    x = torch.randn(37, 300) * torch.logspace(-2, 2, 37)[:, None]
    qp = cz.core.quantize.tensor_qparams(x, scheme)
    assert torch.equal(quantize_2d(x, qp), cz.quantize(x, qp))
