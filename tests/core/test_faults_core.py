"""docs/FAULTS.md cases 1-11, 16 and 17 for the numeric core: one test per case, named after it."""

import numpy as np
import pytest
import torch

import cuantiza as cz
from cuantiza.errors import (
    CalibrationError,
    ConfigError,
    NonFiniteError,
    ScaleOverflowError,
    UnsupportedDtypeError,
)
from tests import reference as ref
from tests.thresholds import THRESHOLDS

ALL_SCHEMES = [cz.QScheme(bits, sym) for bits in range(1, 9) for sym in (True, False)]
RANGE_SPECS = [cz.MinMax(), cz.MSE(), cz.Percentile(99.0), cz.Histogram(64), cz.MovingAverage()]


def _weight(seed=0):
    return torch.randn(8, 32, generator=torch.Generator().manual_seed(seed))


# 1. NaN in weights -> error naming tensor and count; nothing written.
@pytest.mark.parametrize("spec", RANGE_SPECS, ids=lambda s: type(s).__name__)
def test_fault_01_nan_in_weights(spec):
    w = _weight()
    w[2, 3] = w[5, 7] = float("nan")
    before = w.clone()
    for scheme in (cz.QScheme(bits=4, granularity=cz.PerGroup(16)), cz.QScheme(bits=1)):
        with pytest.raises(NonFiniteError, match=r"model\.layers\.0\.q_proj\.weight has 2 NaN"):
            cz.quantize_tensor(w, scheme, range=spec, name="model.layers.0.q_proj.weight")
        with pytest.raises(NonFiniteError, match="q_proj"):
            cz.QTensor.from_float(w, scheme, range=spec, name="q_proj.weight")
    assert torch.equal(w.nan_to_num(), before.nan_to_num()) and int(w.isnan().sum()) == 2


# 2. ±Inf in weights -> error by default.
@pytest.mark.parametrize("spec", RANGE_SPECS, ids=lambda s: type(s).__name__)
def test_fault_02_inf_in_weights(spec):
    w = _weight()
    w[0, 0], w[7, 31] = float("inf"), float("-inf")
    for scheme in (
        cz.QScheme(bits=8, symmetric=False, granularity=cz.PerChannel(0)),
        cz.QScheme(bits=1),
    ):
        with pytest.raises(NonFiniteError, match="0 NaN and 2 Inf"):
            cz.quantize_tensor(w, scheme, range=spec, name="fc.weight")


# 3. NaN in calibration activations (padding) -> ignored and counted; all-NaN -> error.
def test_fault_03_nan_in_activations():
    x = torch.randn(4, 10)
    padded = torch.cat([x, torch.full((4, 6), float("nan"))], dim=1)
    for spec in (cz.MinMax(), cz.MovingAverage(), cz.Percentile(99.9, bins=64), cz.Histogram(64)):
        obs, clean = spec.make(), spec.make()
        obs.observe(padded)
        clean.observe(x)
        assert (obs.n_nan, obs.n_seen) == (24, 40)
        scheme = cz.QScheme(bits=8)
        assert torch.equal(obs.qparams(scheme).scale, clean.qparams(scheme).scale)
        all_nan = spec.make()
        all_nan.observe(torch.full((3, 3), float("nan")))
        with pytest.raises(CalibrationError, match="9 NaN"):
            all_nan.qparams(scheme)


# 4. ±Inf / float-max activations (attention masks) -> excluded from statistics and counted.
def test_fault_04_mask_values_in_activations():
    scores = torch.randn(2, 8, 8)
    mask = torch.triu(torch.ones(8, 8, dtype=torch.bool), diagonal=1)
    masked = scores.masked_fill(mask, torch.finfo(torch.float32).min)
    masked[0, 0, 0] = float("-inf")
    for spec in (cz.MinMax(), cz.Histogram(64), cz.Percentile(99.0, bins=64)):
        obs = spec.make()
        obs.observe(masked)
        assert obs.n_inf == 2 * 28 + 1 and obs.n_seen == 128 - obs.n_inf
        lo, hi = obs.range(cz.QScheme(bits=8))
        assert -10 < float(lo) and float(hi) < 10  # the mask never enters the range


# 5. All-zero tensor -> scale 1 (or smallest normal), q = zero point, dequantizes to exactly 0.
@pytest.mark.parametrize(
    "scheme", [s for s in ALL_SCHEMES if not s.binary], ids=lambda s: s.describe()
)
def test_fault_05_all_zero_tensor(scheme):
    x = torch.zeros(4, 16)
    for spec in (cz.MinMax(), cz.MSE(), cz.Percentile(99.0), cz.Histogram(64)):
        q, qp = cz.quantize_tensor(x, scheme, range=spec)
        assert float(qp.scale) == 1.0
        assert torch.all(q.to(torch.int32) == qp.zero_point)
        assert torch.equal(cz.dequantize(q, qp), x)


def test_fault_05_all_zero_tensor_binary():
    """Binary has no zero level ({-s, +s}); an all-zero block gets the smallest normal scale,
    so it dequantizes to within that of 0 (not to ±1)."""
    for scale_dtype in ("float32", "float16", "bfloat16"):
        scheme = cz.QScheme(bits=1, granularity=cz.PerGroup(8), scale_dtype=scale_dtype)
        x = torch.cat([torch.zeros(2, 8), torch.randn(2, 8)], dim=1)  # one zero group per row
        q, qp = cz.quantize_tensor(x, scheme)
        tiny = torch.finfo(scheme.torch_scale_dtype).tiny
        assert torch.all(qp.scale[:, 0].float() == tiny)
        assert torch.all(cz.dequantize(q, qp)[:, :8].abs() <= tiny)


# 6. One-sided range (all positive) -> range widened to include 0; dq(q(0)) == 0 exactly.
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_fault_06_one_sided_range(bits, sign):
    x = sign * (torch.rand(4, 32) + 0.5)  # |x| in [0.5, 1.5)
    x[:, 0] = 0.0
    q, qp = cz.quantize_tensor(x, cz.QScheme(bits, False, cz.PerChannel(0)))
    assert torch.all(qp.zero_point == (0 if sign > 0 else 2**bits - 1))
    assert torch.all(cz.dequantize(q, qp)[:, 0] == 0.0)
    top = (qp.scale * (2**bits - 1)).double()
    rtol = THRESHOLDS["float32_rel_slack"]  # s is one float32 rounding
    assert torch.allclose(top, x.abs().amax(dim=1).double(), rtol=rtol, atol=0)


# 7. Tiny / denormal ranges -> scale clamped to the smallest normal of its storage dtype.
@pytest.mark.parametrize("scale_dtype", ["float32", "float16", "bfloat16"])
def test_fault_07_tiny_and_denormal_ranges(scale_dtype):
    x = torch.tensor([[1e-45, -3e-44, 2e-40, 0.0], [1e-9, -1e-9, 5e-10, 0.0]])
    for symmetric in (True, False):
        scheme = cz.QScheme(8, symmetric, cz.PerChannel(0), scale_dtype)
        q, qp = cz.quantize_tensor(x, scheme)
        tiny = torch.finfo(scheme.torch_scale_dtype).tiny
        assert float(qp.scale[0]) == tiny  # float32 denormals
        assert torch.all(qp.scale.float() >= tiny) and torch.all(
            torch.isfinite(cz.dequantize(q, qp))
        )
        rq, rs, rz = ref.quantize_tensor(x.numpy(), 8, symmetric, ("channel", 0), scale_dtype)
        np.testing.assert_array_equal(qp.scale.float().numpy(), rs)
        np.testing.assert_array_equal(q.numpy().astype(np.int64), rq)


# 8. Huge outliers -> qparams computed in fp32 or wider; percentile / MSE clipping available.
def test_fault_08_huge_outliers():
    x = torch.randn(4, 256)
    x[0, 0], x[1, 1] = 3e38, -3e38  # hi - lo overflows float32
    q, qp = cz.quantize_tensor(x, cz.QScheme(8, False, cz.PerTensor()))
    s, z = ref.qparams_from_range(-3e38, 3e38, 8, False)
    assert float(qp.scale) == float(s) and int(qp.zero_point) == int(z)
    assert torch.isfinite(cz.dequantize(q, qp)).all()
    y = torch.randn(4096)
    y[0] = 1e4
    _, clipped = cz.quantize_tensor(y, cz.QScheme(bits=4), range=cz.Percentile(99.9))
    assert float(clipped.scale) * 7 < 10.0  # the outlier no longer sets the range
    y[0] = 20.0  # MSE shrinks the range by at most max_shrink = 75 %
    _, clipped = cz.quantize_tensor(y, cz.QScheme(bits=4), range=cz.MSE())
    assert float(clipped.scale) * 7 < 20.0 / 2


# 9. Scales that overflow fp16/bf16 storage -> checked before saving; keep fp32 or error.
def test_fault_09_scale_overflows_storage():
    x = torch.tensor([-1e7, 5.0, 1e7])
    with pytest.raises(ScaleOverflowError, match="scale_dtype='float32'"):
        cz.quantize_tensor(x, cz.QScheme(bits=8, scale_dtype="float16"))
    q, qp = cz.quantize_tensor(x, cz.QScheme(bits=8, scale_dtype="float32"))
    assert float(qp.scale) == np.float32(1e7 / 127)
    with pytest.raises(ScaleOverflowError, match="bfloat16"):
        cz.choose_qparams(
            torch.tensor(-1e41, dtype=torch.float64),
            torch.tensor(1e41, dtype=torch.float64),
            cz.QScheme(bits=8, symmetric=False, scale_dtype="bfloat16"),
        )
    with pytest.raises(ScaleOverflowError):
        cz.quantize_tensor(torch.full((4,), 3.4e38), cz.QScheme(bits=1, scale_dtype="bfloat16"))


# 10. Complex dtypes -> named error; integer buffers (position ids) -> typed error to skip on.
def test_fault_10_complex_and_integer_tensors():
    with pytest.raises(UnsupportedDtypeError, match="rotary.freqs is complex"):
        cz.quantize_tensor(torch.randn(4, dtype=torch.complex64), cz.QScheme(), name="rotary.freqs")
    for dtype in (torch.int64, torch.int8, torch.bool):
        with pytest.raises(UnsupportedDtypeError, match="position_ids"):
            cz.quantize_tensor(torch.zeros(4, dtype=dtype), cz.QScheme(), name="position_ids")
    with pytest.raises(UnsupportedDtypeError):
        cz.MinMaxObserver().observe(torch.randn(4, dtype=torch.complex64))
    with pytest.raises(UnsupportedDtypeError):
        cz.HistogramObserver(64).observe(torch.arange(4))


# 11. bf16/fp16 models -> handled (upcast at NumPy boundaries).
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fault_11_half_precision_inputs(dtype):
    x = torch.randn(4, 64).to(dtype)
    scheme = cz.QScheme(bits=4, symmetric=False, granularity=cz.PerGroup(32))
    q, qp = cz.quantize_tensor(x, scheme)
    rq, rs, rz = ref.quantize_tensor(x.float().numpy(), 4, False, ("group", 32, -1))
    np.testing.assert_array_equal(q.numpy().astype(np.int64), rq)
    assert cz.fake_quantize(x, qp).dtype == dtype
    obs = cz.MinMaxObserver()
    obs.observe(x)
    assert obs.lo.dtype == torch.float32 and float(obs.lo) == float(x.min())
    t = cz.QTensor.from_float(x, scheme)
    assert torch.equal(t.int_repr(), q)


# 16. Invalid group size or bits (0, negative, > columns, bits not in 1..8) -> error at config time.
def test_fault_16_invalid_group_size_or_bits():
    for bits in (0, -1, 9, 2.5):
        with pytest.raises(ConfigError, match="bits must be an integer in 1..8"):
            cz.QScheme(bits=bits)
    for size in (0, -4):
        with pytest.raises(ConfigError, match="positive integer"):
            cz.PerGroup(size)
    with pytest.raises(ConfigError, match="group size 128 is larger than the 64 elements"):
        cz.quantize_tensor(torch.randn(4, 64), cz.QScheme(bits=4, granularity=cz.PerGroup(128)))


# 17. Odd lengths in sub-byte packing -> logical shape stored; unpack trims exactly.
@pytest.mark.parametrize("bits", range(1, 8))
def test_fault_17_odd_lengths_in_sub_byte_packing(bits):
    for shape in [(1,), (3,), (3, 7), (5, 1, 3), (13, 11)]:
        x = torch.randn(shape)
        scheme = cz.QScheme(bits, False)
        t = cz.QTensor.from_float(x, scheme)
        assert t.shape == shape and t.data.numel() == (x.numel() * bits + 7) // 8
        q, _ = cz.quantize_tensor(x, scheme)
        assert torch.equal(t.int_repr(), q)
        codes = cz.unpack(t.data, bits, x.numel())
        assert codes.numel() == x.numel()
