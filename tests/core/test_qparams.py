"""choose_qparams and QParams, bit for bit against the NumPy reference; scale layouts."""

import itertools

import numpy as np
import pytest
import torch

import cuantiza as cz
from cuantiza.core.blocking import from_blocks, plan_blocks, rows_to_scale, to_blocks
from cuantiza.core.qparams import check_qparams_shape
from cuantiza.errors import NonFiniteError, ScaleOverflowError, ShapeError
from tests import reference as ref

SCALE_DTYPES = ["float32", "float16", "bfloat16"]


def _ranges(seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Ranges of every kind: both signs, one-sided, zero, tiny, wide magnitudes."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n) * 10.0 ** rng.integers(-8, 4, n)
    b = rng.standard_normal(n) * 10.0 ** rng.integers(-8, 4, n)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    lo[:20], hi[:20] = 0.0, 0.0  # zero ranges
    lo[20:40] = np.abs(lo[20:40])  # positive only
    hi[40:60] = -np.abs(hi[40:60])  # negative only
    lo[40:60] = np.minimum(lo[40:60], hi[40:60])
    lo[60:80], hi[60:80] = -1e-41, 1e-40  # float32 denormal range
    return lo.astype(np.float32), hi.astype(np.float32)


@pytest.mark.parametrize(
    "bits, symmetric, scale_dtype",
    list(itertools.product(range(1, 9), [True, False], SCALE_DTYPES)),
)
def test_choose_qparams_bit_exact(bits, symmetric, scale_dtype):
    lo, hi = _ranges(bits)
    scheme = cz.QScheme(
        bits=bits, symmetric=symmetric, granularity=cz.PerChannel(0), scale_dtype=scale_dtype
    )
    qp = cz.choose_qparams(torch.from_numpy(lo), torch.from_numpy(hi), scheme)
    s, z = ref.qparams_from_range(lo, hi, bits, symmetric, scale_dtype)
    assert qp.scale.dtype == scheme.torch_scale_dtype
    assert qp.zero_point.dtype == torch.int32
    np.testing.assert_array_equal(qp.scale.float().numpy(), s)
    np.testing.assert_array_equal(qp.zero_point.numpy(), z)


def test_docstring_example():
    qp = cz.choose_qparams(
        torch.tensor(-1.0), torch.tensor(3.0), cz.QScheme(bits=8, symmetric=False)
    )
    assert float(qp.scale) == np.float32(4 / 255)
    assert int(qp.zero_point) == 64  # round(1 / (4 / 255)) = round(63.75)


def test_symmetric_scale_uses_the_restricted_range():
    qp = cz.choose_qparams(torch.tensor(-2.0), torch.tensor(1.0), cz.QScheme(bits=8))
    assert float(qp.scale) == np.float32(2 / 127)
    assert int(qp.zero_point) == 0


def test_asymmetric_zero_point_makes_zero_exact():
    for lo, hi in [(-1.0, 3.0), (-0.3, 0.7), (-5.0, 0.001), (-1e-3, 7e2)]:
        scheme = cz.QScheme(bits=4, symmetric=False)
        qp = cz.choose_qparams(torch.tensor(lo), torch.tensor(hi), scheme)
        q = cz.quantize(torch.tensor(0.0), qp)
        assert int(q) == int(qp.zero_point)
        assert float(cz.dequantize(q, qp)) == 0.0


@pytest.mark.parametrize("lo, hi, z", [(0.5, 3.0, 0), (-3.0, -0.5, 255)])
def test_one_sided_range_widened_to_zero(lo, hi, z):
    qp = cz.choose_qparams(torch.tensor(lo), torch.tensor(hi), cz.QScheme(bits=8, symmetric=False))
    assert float(qp.scale) == np.float32(abs(lo if z else hi) / 255)
    assert int(qp.zero_point) == z


@pytest.mark.parametrize("scale_dtype", SCALE_DTYPES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_range_gives_scale_one(scale_dtype, symmetric):
    scheme = cz.QScheme(bits=4, symmetric=symmetric, scale_dtype=scale_dtype)
    qp = cz.choose_qparams(torch.tensor(0.0), torch.tensor(0.0), scheme)
    assert float(qp.scale) == 1.0 and int(qp.zero_point) == 0


@pytest.mark.parametrize("scale_dtype", SCALE_DTYPES)
def test_tiny_range_clamped_to_smallest_normal(scale_dtype):
    scheme = cz.QScheme(bits=8, scale_dtype=scale_dtype)
    tiny = torch.finfo(scheme.torch_scale_dtype).tiny
    amax = torch.tensor([1e-45, 1e-40, 1e-38, 1e-30, 1e-9])
    qp = cz.choose_qparams(-amax, amax, scheme)
    np.testing.assert_array_equal(
        qp.scale.float().numpy(),
        ref.qparams_from_range(-amax.numpy(), amax.numpy(), 8, True, scale_dtype)[0],
    )
    assert float(qp.scale.min()) == tiny  # 1e-45 / 127 is below every dtype's tiny
    assert torch.all(qp.scale.float() >= tiny)


def test_rounding_to_storage_is_single():
    """3.23339835802714 lies just below a float16 tie; rounding via float32 would land on it."""
    lo = torch.tensor(0.0, dtype=torch.float64)
    hi = torch.tensor(3.23339835802714 * 3, dtype=torch.float64)
    qp = cz.choose_qparams(lo, hi, cz.QScheme(bits=2, symmetric=False, scale_dtype="float16"))
    assert float(qp.scale) == float(np.float16(3.23339835802714)) == 3.232421875


def test_scale_computed_in_float64():
    """(hi - lo) = 6e38 overflows float32 but not the float64 the formula uses."""
    scheme = cz.QScheme(bits=8, symmetric=False)
    qp = cz.choose_qparams(torch.tensor(-3e38), torch.tensor(3e38), scheme)
    s, z = ref.qparams_from_range(np.float32(-3e38), np.float32(3e38), 8, False)
    assert torch.isfinite(qp.scale).all()
    assert float(qp.scale) == float(s) and int(qp.zero_point) == int(z)


def test_fp16_overflow_raises():
    scheme = cz.QScheme(bits=8, scale_dtype="float16")
    with pytest.raises(ScaleOverflowError, match="float16"):
        cz.choose_qparams(torch.tensor(-1e7), torch.tensor(1e7), scheme)  # s = 78740 > 65504


def test_non_finite_range_raises():
    for lo, hi in [(float("nan"), 1.0), (-1.0, float("inf")), (float("-inf"), 0.0)]:
        with pytest.raises(NonFiniteError):
            cz.choose_qparams(torch.tensor(lo), torch.tensor(hi), cz.QScheme())


@pytest.mark.parametrize(
    "scheme, per_block",
    [
        (cz.QScheme(bits=8), 4),
        (cz.QScheme(bits=8, symmetric=False), 5),
        (cz.QScheme(bits=4, symmetric=False, scale_dtype="float16"), 3),
        (cz.QScheme(bits=4, scale_dtype="bfloat16"), 2),
    ],
)
def test_qparams_nbytes(scheme, per_block):
    qp = cz.choose_qparams(-torch.ones(10), torch.ones(10), scheme)
    assert qp.nbytes == 10 * per_block


# ---------------------------------------------------------------------------- layout
@pytest.mark.parametrize(
    "shape, gran, scale_shape",
    [
        ((6, 70), cz.PerTensor(), ()),
        ((6, 70), cz.PerChannel(0), (6,)),
        ((6, 70), cz.PerChannel(1), (70,)),
        ((6, 70), cz.PerChannel(-1), (70,)),
        ((6, 70), cz.PerGroup(32), (6, 3)),
        ((6, 64), cz.PerGroup(32), (6, 2)),
        ((12, 7), cz.PerGroup(5, axis=0), (3, 7)),
        ((3, 5, 7), cz.PerGroup(2, axis=1), (3, 3, 7)),
        ((3, 5, 7), cz.PerChannel(1), (5,)),
    ],
)
def test_scale_shapes_follow_the_tensor(shape, gran, scale_shape):
    _, expected = ref.block_ids(shape, ref.gran_tuple(gran))
    assert expected == scale_shape
    assert plan_blocks(shape, gran).scale_shape == scale_shape
    x = torch.arange(float(np.prod(shape))).reshape(shape)
    xb, b = to_blocks(x, gran)
    assert xb.shape[0] == max(int(np.prod(scale_shape)), 1)
    assert torch.equal(from_blocks(xb, b), x)


def test_scale_rows_map_to_the_right_elements():
    """Each element's block row holds that element: compare to the reference block map."""
    shape, gran = (3, 5, 7), cz.PerGroup(2, axis=1)
    x = torch.arange(105.0).reshape(shape)
    xb, b = to_blocks(x, gran)
    ids, sshape = ref.block_ids(shape, ref.gran_tuple(gran))
    # row-major block order in cuantiza is (*lead, groups); map scale positions -> rows
    row_of = torch.arange(b.n_blocks)
    pos = rows_to_scale(row_of, b).reshape(-1).numpy()  # scale position -> block row
    for flat, v in enumerate(x.reshape(-1).tolist()):
        assert v in xb[pos[ids.reshape(-1)[flat]]].tolist()


def test_check_qparams_shape_rejects_mismatch():
    qp = cz.choose_qparams(-torch.ones(4), torch.ones(4), cz.QScheme(granularity=cz.PerChannel(0)))
    check_qparams_shape(qp, (4, 9))
    with pytest.raises(ShapeError):
        check_qparams_shape(qp, (5, 9))
    with pytest.raises(ShapeError):
        cz.quantize(torch.zeros(5, 9), qp)


def test_axis_out_of_range_rejected():
    with pytest.raises(cz.ConfigError, match="axis"):
        cz.quantize_tensor(torch.zeros(4, 4), cz.QScheme(granularity=cz.PerChannel(2)))
