"""The native kernels (``cuantiza.backends.native``) against the torch path and
``tests/reference.py``,
bit for bit: same integers, same qparams, same errors.

Most tests lower the size thresholds so that small tensors take the native path and are split
over several threads (odd part boundaries included); ``CUANTIZA_NATIVE=0`` gives the torch path.
"""

import shutil

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import cuantiza as cz
from cuantiza.backends import torch_rows
from cuantiza.backends.native import fused as native_fused
from cuantiza.backends.native import rtn as _native
from cuantiza.backends.native import threads as native_threads
from cuantiza.core import onepass, ranges
from cuantiza.core import quantize as ops
from cuantiza.core.blocking import to_blocks
from cuantiza.core.onepass import Form
from cuantiza.errors import NonFiniteError, ShapeError
from tests import reference as ref
from tests.helpers.data import planted_with_denormals
from tests.helpers.native import native_everywhere, same_result, torch_path

needs_native = pytest.mark.skipif(
    not _native.built(), reason="native kernels not built (no C compiler)"
)

GRANULARITIES = [
    (cz.PerTensor(), (7, 61)),
    (cz.PerChannel(0), (7, 61)),
    (cz.PerChannel(1), (7, 61)),
    (cz.PerGroup(32), (5, 96)),
    (cz.PerGroup(32), (5, 70)),  # ragged: the last group holds 6 values
    (cz.PerGroup(5, axis=0), (13, 7)),
    (cz.PerGroup(3, axis=1), (3, 5, 7)),
]
GRAN_IDS = [
    "tensor",
    "channel0",
    "channel1",
    "group32",
    "group32-ragged",
    "group5-axis0",
    "group3-3d",
]


@pytest.fixture
def native(monkeypatch):
    """Native path for tensors of any size, split into pieces of ~40 elements over 3 threads
    (at least 16 elements each); returns a dict counting the kernel calls through ``_native``
    (and the fused MinMax pass, ``backends.native.fused``, which takes over where it applies)."""
    native_everywhere(monkeypatch)
    calls = {"minmax": 0, "quantize": 0, "pack": 0, "fused": 0}
    for module, name, key in (
        (_native, "minmax_rows", "minmax"),
        (_native, "quantize_rows", "quantize"),
        (_native, "pack_codes", "pack"),
        (native_fused, "quantize_minmax_rows", "fused"),
    ):
        real = getattr(module, name)

        def counted(*a, _real=real, _key=key, **k):
            calls[_key] += 1
            return _real(*a, **k)

        monkeypatch.setattr(module, name, counted)
    return calls


def test_built_when_a_compiler_is_present():
    """A broken build must not pass silently as the torch fallback."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the optional extension is legitimately absent")
    assert _native.built(), (
        "a C compiler exists but cuantiza/backends/native/_rtn*.so was not built or failed to load"
    )


@pytest.mark.parametrize("gran, shape", GRANULARITIES, ids=GRAN_IDS)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", range(1, 9))
def test_quantize_tensor_native_equals_torch_and_reference(
    bits, symmetric, gran, shape, native, monkeypatch
):
    x = planted_with_denormals(shape, seed=bits)
    for scale_dtype in ("float32", "float16"):
        scheme = cz.QScheme(bits, symmetric, gran, scale_dtype)
        got = cz.quantize_tensor(x, scheme)
        same_result(
            got, torch_path(lambda scheme=scheme: cz.quantize_tensor(x, scheme), monkeypatch)
        )
        rq, rs, rz = ref.quantize_tensor(
            x.numpy(), bits, symmetric, ref.gran_tuple(gran), scale_dtype
        )
        np.testing.assert_array_equal(got[0].numpy().astype(np.int64), rq)
        np.testing.assert_array_equal(got[1].scale.float().numpy(), rs)
    binary = bits == 1 and symmetric  # binary stays on the torch path
    strided = not to_blocks(x, gran)[0].is_contiguous()  # (channel1: a transposed view)
    one_pass = (
        onepass.plan(x, scheme, cz.MinMax(), Form.INTEGERS) is not None
    )  # MinMax at 1 (asym), 2, 4, 8 bits
    two_pass = not (binary or strided or one_pass)
    assert (native["fused"] > 0, native["minmax"] > 0, native["quantize"] > 0) == (
        one_pass,
        two_pass,
        two_pass,
    )


@pytest.mark.parametrize("restricted", [True, False])
def test_ties_round_half_to_even(restricted, native, monkeypatch):
    """Values exactly at (k + 1/2) s: s = 1 (row max 127, or -128 for the full range)."""
    scheme = cz.QScheme(8, True, cz.PerChannel(0), restricted=restricted)
    ties = torch.arange(-126.5, 127.0, 1.0)  # every tie of the 8-bit grid
    x = torch.stack([torch.cat([ties, torch.tensor([127.0 if restricted else -128.0])])] * 3)
    q, qp = cz.quantize_tensor(x, scheme)
    assert torch.all(qp.scale.abs() == 1.0)
    expected = torch.round(x / qp.scale[:, None]).clamp(scheme.qmin, scheme.qmax).to(torch.int8)
    assert torch.equal(q, expected)  # torch.round: half to even
    assert q[0, :4].tolist() == [-126, -126, -124, -124]
    same_result(
        (q, qp), torch_path(lambda scheme=scheme: cz.quantize_tensor(x, scheme), monkeypatch)
    )


def test_true_division_not_reciprocal(native, monkeypatch):
    """Values next to ties, where x * (1 / s) and x / s round differently (the ops docstring's
    -1 / (2/7) = -3.4999998 -> -3, while -1 * 3.5 -> -4): the kernel divides."""
    s = torch.tensor(2.0 / 7.0)  # the float32 scale of range [-2, 2], 4 bits
    k = torch.arange(-7, 7, dtype=torch.float32) + 0.5
    near = (k * s)[:, None] * torch.tensor(
        [1 - 2**-23, 1.0, 1 + 2**-23]
    )  # ties and both neighbours
    x = torch.cat([torch.tensor([2.0, -1.0]), near.reshape(-1)]).repeat(5, 1)
    scheme = cz.QScheme(4, True, cz.PerChannel(0))
    q, qp = cz.quantize_tensor(x, scheme)
    assert torch.all(qp.scale == s)
    assert not torch.equal(
        torch.round(x / s), torch.round(x * (1 / s))
    )  # the test can tell them apart
    assert torch.equal(q, torch.round(x / s).clamp(-7, 7).to(torch.int8))
    rq, _, _ = ref.quantize_tensor(x.numpy(), 4, True, ref.gran_tuple(cz.PerChannel(0)))
    np.testing.assert_array_equal(q.numpy().astype(np.int64), rq)
    same_result(
        (q, qp), torch_path(lambda scheme=scheme: cz.quantize_tensor(x, scheme), monkeypatch)
    )
    assert torch.equal(cz.quantize(x, qp), q)  # given qparams: quantize_rows
    assert native["fused"] == 1 and native["quantize"] == 1  # each divides


def test_signed_zeros_and_denormals(native, monkeypatch):
    """All-zero rows of either sign, all-denormal rows (scale clamped to the smallest normal)."""
    x = torch.zeros(6, 37)
    x[1] = -0.0
    x[2] = torch.tensor(1e-40)
    x[3, ::2] = -1e-41
    x[4] = torch.linspace(-1e-38, 1e-38, 37)
    x[5] = torch.randn(37)
    for scheme in (
        cz.QScheme(4, True, cz.PerChannel(0)),
        cz.QScheme(8, False, cz.PerChannel(0)),
        cz.QScheme(3, True, cz.PerChannel(0), restricted=False),
    ):
        same_result(
            cz.quantize_tensor(x, scheme),
            torch_path(lambda scheme=scheme: cz.quantize_tensor(x, scheme), monkeypatch),
        )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("gran", [cz.PerTensor(), cz.PerChannel(0), cz.PerGroup(16)])
def test_non_finite_same_error(bad, gran, native, monkeypatch):
    x = torch.randn(9, 48)
    x[4, 33] = bad
    x[7, 2] = float("nan")
    scheme = cz.QScheme(8, False, gran)
    with pytest.raises(NonFiniteError) as native_err:
        cz.quantize_tensor(x, scheme, name="w")
    with pytest.raises(NonFiniteError) as torch_err:
        torch_path(lambda: cz.quantize_tensor(x, scheme, name="w"), monkeypatch)
    assert str(native_err.value) == str(torch_err.value)


@pytest.mark.parametrize("shape", [(5, 37), (1, 1001), (40, 16), (3, 15), (64, 1)])
def test_minmax_rows_nan_propagates(shape, native, monkeypatch):
    """NaN anywhere in a row (vector body or scalar tail) gives NaN for that row, as torch."""
    x = torch.randn(shape)
    x.view(-1)[::7] = float("nan")
    x[0] = torch.randn(shape[1])
    x.view(-1)[-1] = float("inf")
    lo, hi = ranges.minmax_rows(x)
    lo_t, hi_t = torch_path(lambda: ranges.minmax_rows(x), monkeypatch)
    torch.testing.assert_close(lo, lo_t, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(hi, hi_t, rtol=0, atol=0, equal_nan=True)
    assert native["minmax"] == 1


@pytest.mark.parametrize("symmetric", [True, False])
def test_quantize_given_qparams_with_non_finite_values(symmetric, native, monkeypatch):
    """quantize() with given qparams does not check: NaN gives 0 and +-Inf the bounds, as torch."""
    x = torch.randn(4, 40)
    x[0, 3], x[1, 17], x[2, 39] = float("nan"), float("inf"), -float("inf")
    scheme = cz.QScheme(6, symmetric, cz.PerChannel(0))
    qp = cz.choose_qparams(torch.full((4,), -2.0), torch.full((4,), 3.0), scheme)
    q = cz.quantize(x, qp)
    assert torch.equal(q, torch_path(lambda: cz.quantize(x, qp), monkeypatch))
    assert native["quantize"] == 1


@pytest.mark.parametrize("threads", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("shape", [(1, 12345), (17, 257), (2, 4096), (1000, 3)])
def test_thread_split_boundaries(threads, shape, native, monkeypatch):
    """Row ranges (and ranges along one long row) split at odd boundaries."""
    monkeypatch.setattr(native_threads, "thread_count", lambda: threads)
    x = torch.randn(shape) * 5
    for gran in (cz.PerTensor(), cz.PerChannel(0)):
        for scheme in (cz.QScheme(4, True, gran), cz.QScheme(8, False, gran)):
            same_result(
                cz.quantize_tensor(x, scheme),
                torch_path(lambda scheme=scheme: cz.quantize_tensor(x, scheme), monkeypatch),
            )


def test_non_contiguous_and_grad_inputs_fall_back(native, monkeypatch):
    """Non-contiguous rows and tensors requiring grad keep the torch path, same results."""
    x = torch.randn(12, 80)
    rows = x[:, ::2]
    scheme = cz.QScheme(8, True, cz.PerChannel(0))
    qp = ops.tensor_qparams(rows, scheme)
    assert torch.equal(
        ops.quantize_2d(rows, qp), torch_path(lambda: ops.quantize_2d(rows, qp), monkeypatch)
    )
    lo, hi = ranges.minmax_rows(x.t())
    assert torch.equal(lo, x.amin(dim=0)) and torch.equal(hi, x.amax(dim=0))
    assert not _native.usable(x.t()) and not _native.usable(x.clone().requires_grad_())
    same_result(
        cz.quantize_tensor(x.t(), scheme),
        torch_path(lambda: cz.quantize_tensor(x.t(), scheme), monkeypatch),
    )


def test_fallback_when_disabled(monkeypatch):
    """CUANTIZA_NATIVE=0: available() is False and the kernels are never called."""
    monkeypatch.setenv("CUANTIZA_NATIVE", "0")
    monkeypatch.setattr(_native, "MIN_ELEMS", 1)

    def boom(*a, **k):
        raise AssertionError("native kernel called although CUANTIZA_NATIVE=0")

    monkeypatch.setattr(_native, "minmax_rows", boom)
    monkeypatch.setattr(_native, "quantize_rows", boom)
    assert not _native.available()
    x = torch.randn(64, 128)
    q, qp = cz.quantize_tensor(x, cz.QScheme(4, False, cz.PerGroup(32)))
    rq, rs, _ = ref.quantize_tensor(x.numpy(), 4, False, ref.gran_tuple(cz.PerGroup(32)))
    np.testing.assert_array_equal(q.numpy().astype(np.int64), rq)


@needs_native
def test_default_thresholds_route_large_tensors(monkeypatch):
    """Without patched thresholds a large float32 weight takes the native path (split over two
    threads), a small one not."""
    monkeypatch.delenv("CUANTIZA_NATIVE", raising=False)
    monkeypatch.setattr(native_threads, "thread_count", lambda: 2)
    assert _native.usable(torch.zeros(256, 512)) and not _native.usable(torch.zeros(8, 8))
    x = torch.randn(1024, 1100)
    assert native_threads.row_parts(*x.shape)[1] == 2  # threads
    for scheme in (
        cz.QScheme(8, True, cz.PerChannel(0)),
        cz.QScheme(4, True, cz.PerGroup(128), "float16"),
    ):
        got = cz.quantize_tensor(x, scheme)
        same_result(
            got, torch_path(lambda scheme=scheme: cz.quantize_tensor(x, scheme), monkeypatch)
        )
        assert torch.equal(cz.QTensor.from_float(x, scheme).int_repr(), got[0])


@needs_native
@given(
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    rows=st.integers(1, 9),
    cols=st.integers(1, 70),
    seed=st.integers(0, 2**16),
    scale_pow=st.integers(-130, 20),
)
def test_quantize_rows_property(bits, symmetric, rows, cols, seed, scale_pow):
    """The kernel alone against the torch path, scales from denormal-range to large."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * 2.0**scale_pow
    x.view(-1)[::5] = torch.round(x.view(-1)[::5]) + 0.5  # ties when s is a power of two
    scheme = cz.QScheme(bits, symmetric, cz.PerChannel(0))
    qp = cz.choose_qparams(x.amin(dim=1), x.amax(dim=1), scheme)
    s, z = qp.scale.float()[:, None], qp.zero_point.float()[:, None]
    got = _native.quantize_rows(x, s, z, scheme.qmin, scheme.qmax, symmetric, scheme.q_dtype)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("CUANTIZA_NATIVE", "0")
        assert torch.equal(
            got,
            torch_rows.quantize_rows(x, s, z, scheme.qmin, scheme.qmax, symmetric, scheme.q_dtype),
        )


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 3])
@pytest.mark.parametrize(
    "dtype, offset", [(torch.uint8, 0), (torch.int8, 7), (torch.int8, 128), (torch.uint8, -3)]
)
def test_pack_native_equals_torch_and_reference(bits, dtype, offset, native, monkeypatch):
    """Every length around a byte boundary and the thread split; widths not dividing 8 (3) keep
    the torch path."""
    lo = max(-offset, -128 if dtype == torch.int8 else 0)
    hi = min((1 << bits) - offset, 128 if dtype == torch.int8 else 256)
    for n in (1, 7, 8, 9, 15, 16, 17, 63, 65, 200, 1001):
        q = torch.randint(lo, hi, (n,), dtype=torch.int16).to(dtype)
        got = cz.pack(q, bits, offset)
        assert torch.equal(got, torch_path(lambda q=q: cz.pack(q, bits, offset), monkeypatch))
        codes = ((q.to(torch.int16) + offset) % 256).tolist()
        assert bytes(got.tolist()) == ref.pack(codes, bits)
    assert native["pack"] == (0 if bits == 3 else 11)


@pytest.mark.parametrize("bad", [-1, 16, 127, -128])
@pytest.mark.parametrize("n", [20, 1001])
def test_pack_out_of_range_same_error(bad, n, native, monkeypatch):
    """A code outside [0, 2^bits) after the offset (at the start, in the vector body, in the
    tail): the same ShapeError as the torch path; int8 -128 + 7 wraps to no valid code."""
    for where in (0, n // 2, n - 1):
        q = torch.zeros(n, dtype=torch.int8)
        q[where] = bad - 7 if bad not in (127, -128) else bad
        with pytest.raises(ShapeError) as native_err:
            cz.pack(q, 4, 7)
        with pytest.raises(ShapeError) as torch_err:
            torch_path(lambda q=q: cz.pack(q, 4, 7), monkeypatch)
        assert str(native_err.value) == str(torch_err.value)


@pytest.mark.parametrize("gran, shape", GRANULARITIES, ids=GRAN_IDS)
@pytest.mark.parametrize(
    "symmetric, restricted",
    [(True, True), (True, False), (False, True)],
    ids=["sym", "symfull", "asym"],
)
def test_eight_bit_codes_from_the_quantize_pass(
    symmetric, restricted, gran, shape, native, monkeypatch
):
    """QTensor.from_float at 8 bits takes the codes q - qmin from the quantize pass
    (ops.quantize_tensor_codes): the bytes of pack(q, 8, -qmin), on both paths; strided blocks
    (channel1) and ragged groups included."""
    x = planted_with_denormals(shape, seed=8)
    x.view(-1)[-1] = -30.0  # codes 0 and 2^8 - 1 both occur
    scheme = cz.QScheme(8, symmetric, gran, "bfloat16", restricted=restricted)
    for native_path in (True, False):
        packs = native["pack"]
        if native_path:
            t = cz.QTensor.from_float(x, scheme)
        else:
            t = torch_path(lambda: cz.QTensor.from_float(x, scheme), monkeypatch)
        assert native["pack"] == packs  # no packing pass
        q, qp = cz.quantize_tensor(x, scheme)
        assert torch.equal(t.data, cz.pack(q, 8, offset=-scheme.qmin)) and t.shape == tuple(x.shape)
        assert torch.equal(t.qparams.scale, qp.scale) and torch.equal(
            t.qparams.zero_point, qp.zero_point
        )
        assert torch.equal(t.int_repr(), q)
    strided = not to_blocks(x, gran)[0].is_contiguous()  # (channel1: the torch path)
    assert strided or native["quantize"] > 0 or native["fused"] > 0


def test_eight_bit_codes_default_thresholds(monkeypatch):
    """Without patched thresholds: a large weight's 8-bit codes come from the kernel (no pack
    call), the same bytes as packing q."""
    monkeypatch.delenv("CUANTIZA_NATIVE", raising=False)
    x = torch.randn(300, 1000)
    called = []
    monkeypatch.setattr(_native, "pack_codes", lambda *a: called.append(1))
    for scheme in (
        cz.QScheme(8, True, cz.PerChannel(0)),
        cz.QScheme(8, False, cz.PerGroup(128), "float16"),
    ):
        t = cz.QTensor.from_float(x, scheme)
        with monkeypatch.context() as m:
            m.setenv("CUANTIZA_NATIVE", "0")
            expected = cz.pack(cz.quantize_tensor(x, scheme)[0], 8, offset=-scheme.qmin)
        assert torch.equal(t.data, expected)
    assert not called


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_eight_bit_codes_non_finite_same_error(bad, native, monkeypatch):
    """NaN/Inf: from_float raises quantize_tensor's error (same type and message), native or not."""
    x = torch.randn(9, 48)
    x[7, 40] = bad
    scheme = cz.QScheme(8, True, cz.PerChannel(0))
    with pytest.raises(NonFiniteError) as codes_err:
        cz.QTensor.from_float(x, scheme, name="w")
    with pytest.raises(NonFiniteError) as torch_err:
        torch_path(lambda: cz.QTensor.from_float(x, scheme, name="w"), monkeypatch)
    with pytest.raises(NonFiniteError) as q_err:
        cz.quantize_tensor(x, scheme, name="w")
    assert str(codes_err.value) == str(torch_err.value) == str(q_err.value)


def test_codes_need_eight_bits():
    with pytest.raises(cz.ConfigError, match="8-bit"):
        ops.quantize_tensor_codes(torch.randn(4, 8), cz.QScheme(4))
