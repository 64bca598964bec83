"""Invariants of the numeric core, as hypothesis properties (profile "ci" in conftest.py)."""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import cuantiza as cz
from tests import reference as ref
from tests.thresholds import THRESHOLDS

BITS = st.integers(1, 8)
FLOATS = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def matrices(draw, max_rows=6, max_cols=40):
    rows, cols = draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols))
    scale = draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e3]))
    x = draw(arrays(np.float32, (rows, cols), elements=FLOATS))
    return (x * np.float32(scale)).astype(np.float32)


@st.composite
def schemes_for(draw, shape):
    rows, cols = shape
    gran = draw(st.sampled_from(["tensor", "channel0", "channel1", "group", "group0"]))
    g = {
        "tensor": cz.PerTensor(),
        "channel0": cz.PerChannel(0),
        "channel1": cz.PerChannel(1),
        "group": cz.PerGroup(draw(st.integers(1, cols)), axis=-1),
        "group0": cz.PerGroup(draw(st.integers(1, rows)), axis=0),
    }[gran]
    return cz.QScheme(
        draw(BITS),
        draw(st.booleans()),
        g,
        draw(st.sampled_from(["float32", "float16", "bfloat16"])),
    )


@st.composite
def cases(draw):
    x = draw(matrices())
    scheme = draw(schemes_for(x.shape))
    if scheme.scale_dtype == "float16":
        x = np.clip(x, -1000, 1000)  # keep fp16 scales (<= 65504) representable
    return x, scheme


def _elementwise(qp: cz.QParams, x: np.ndarray):
    """Scale and zero point per element, from the reference's block map."""
    ids, _ = ref.block_ids(x.shape, ref.gran_tuple(qp.scheme.granularity))
    return qp.scale.float().numpy().ravel()[ids], qp.zero_point.numpy().ravel()[ids]


# ---------------------------------------------------------------------------- packing
@given(bits=BITS, n=st.integers(0, 300), data=st.data())
def test_pack_unpack_round_trip(bits, n, data):
    codes = data.draw(arrays(np.uint8, n, elements=st.integers(0, (1 << bits) - 1)))
    packed = cz.pack(torch.from_numpy(codes), bits)
    assert packed.numel() == (n * bits + 7) // 8
    assert bytes(packed.tolist()) == ref.pack(codes, bits)
    assert np.array_equal(cz.unpack(packed, bits, n).numpy(), codes)


# ---------------------------------------------------------------------------- quantize
@given(cases())
def test_matches_reference_bit_for_bit(case):
    x, scheme = case
    q, qp = cz.quantize_tensor(torch.from_numpy(x), scheme)
    rq, rs, rz = ref.quantize_tensor(
        x, scheme.bits, scheme.symmetric, ref.gran_tuple(scheme.granularity), scheme.scale_dtype
    )
    assert np.array_equal(qp.scale.float().numpy(), rs)
    assert np.array_equal(qp.zero_point.numpy(), rz)
    assert np.array_equal(q.numpy().astype(np.int64), rq)


@given(cases())
def test_q_within_qmin_qmax(case):
    x, scheme = case
    q, _ = cz.quantize_tensor(torch.from_numpy(x), scheme)
    assert int(q.min()) >= scheme.qmin and int(q.max()) <= scheme.qmax
    if scheme.binary:
        assert set(q.unique().tolist()) <= {-1, 1}


@given(cases())
def test_error_at_most_half_a_step_inside_the_range(case):
    x, scheme = case
    if scheme.binary:
        return  # {-s, +s} has no step; its error is not bounded by s/2
    q, qp = cz.quantize_tensor(torch.from_numpy(x), scheme)
    x_hat = cz.dequantize(q, qp).numpy().astype(np.float64)
    s, z = _elementwise(qp, x)
    s, z = s.astype(np.float64), z.astype(np.float64)
    x64 = x.astype(np.float64)
    inside = (x64 >= s * (scheme.qmin - z)) & (x64 <= s * (scheme.qmax - z))
    slack = THRESHOLDS["float32_rel_slack"] * (np.abs(x64) + s)
    assert np.all(np.abs(x64 - x_hat)[inside] <= (s / 2 + slack)[inside])
    # with a min/max range and float32 scales every value is within half a step (float16 /
    # bfloat16 storage may round s down, so the levels cover slightly less than [lo, hi])
    if scheme.scale_dtype == "float32":
        assert np.all(np.abs(x64 - x_hat) <= s / 2 + slack)


@given(cases())
def test_quantize_dequantize_quantize_is_stable(case):
    x, scheme = case
    q, qp = cz.quantize_tensor(torch.from_numpy(x), scheme)
    assert torch.equal(cz.quantize(cz.dequantize(q, qp), qp), q)


@given(cases())
def test_zero_is_exact(case):
    x, scheme = case
    if scheme.binary:
        return  # binary has no zero level
    x = x.copy()
    x.reshape(-1)[::3] = 0.0  # zeros in (almost) every block
    q, qp = cz.quantize_tensor(torch.from_numpy(x), scheme)
    x_hat = cz.dequantize(q, qp).numpy()
    assert np.all(x_hat[x == 0] == 0)


# ---------------------------------------------------------------------------- straight-through
@given(cases(), st.floats(0.25, 1.0))
def test_ste_gradient_one_inside_zero_outside(case, shrink):
    x, scheme = case
    _, qp = cz.quantize_tensor(
        torch.from_numpy(x * np.float32(shrink)), scheme
    )  # some values clamp
    xt = torch.from_numpy(x).requires_grad_(True)
    cz.fake_quantize(xt, qp).sum().backward()
    s, z = _elementwise(qp, x)
    expected = ref.ste_mask(x, s, z, scheme.bits, scheme.symmetric).astype(np.float32)
    assert np.array_equal(xt.grad.numpy(), expected)


@given(cases())
def test_qtensor_round_trip(case):
    x, scheme = case
    q, qp = cz.quantize_tensor(torch.from_numpy(x), scheme)
    t = cz.QTensor.from_int(q, qp)
    assert torch.equal(t.int_repr(), q)
    assert t.nbytes == (x.size * scheme.bits + 7) // 8 + qp.nbytes
