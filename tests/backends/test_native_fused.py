"""The fused MinMax pass (``cuantiza.fused`` over ``rtn_fused.c``) against the general path (the
torch path, ``CUANTIZA_NATIVE=0``) bit for bit: the same integers, codes and packed bytes, scales
(dtype included) and zero points, the same typed errors; and that it runs exactly where it
applies. Most tests lower the native thresholds so that small tensors take the fused pass split
over 3 threads at odd row boundaries (test_native's fixture values)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cuantiza as cz
from cuantiza.backends.native import fused as native_fused
from cuantiza.backends.native import rtn as _native
from cuantiza.backends.native import threads as native_threads
from cuantiza.core import onepass
from cuantiza.core.onepass import Form
from cuantiza.core.qparams import _round_once
from cuantiza.errors import NonFiniteError, ScaleOverflowError
from tests.helpers.data import planted_with_denormals
from tests.helpers.native import native_everywhere, same_result, torch_path

needs_native = pytest.mark.skipif(
    not _native.built(), reason="native kernels not built (no C compiler)"
)

SCALE_DTYPES = ["float32", "float16", "bfloat16"]
# (granularity, shape): every case where the blocked view is the tensor itself
VIEWS = [
    (cz.PerChannel(0), (7, 64)),
    (cz.PerGroup(32), (5, 96)),
    (cz.PerGroup(128), (3, 256)),
    (cz.PerGroup(32), (2, 3, 64)),
    (cz.PerGroup(16, axis=1), (4, 48)),
]  # axis 1 of 2: the last
VIEW_IDS = ["channel0", "group32", "group128", "group32-3d", "group16-axis1"]
WIDTHS = [(1, False), (2, True), (2, False), (4, True), (4, False), (8, True), (8, False)]
WIDTH_IDS = ["1asym", "2sym", "2asym", "4sym", "4asym", "8sym", "8asym"]


@pytest.fixture
def counted(monkeypatch):
    """Native path for tensors of any size, split into pieces of ~40 elements over 3 threads;
    returns a list that gets one entry per call of the fused kernel's wrapper."""
    native_everywhere(monkeypatch)
    return _count(monkeypatch)


def _count(monkeypatch) -> list:
    calls, real = [], native_fused.quantize_minmax_rows
    monkeypatch.setattr(
        native_fused, "quantize_minmax_rows", lambda *a: calls.append(a[0].shape) or real(*a)
    )
    return calls


def _same_qtensor(t: cz.QTensor, u: cz.QTensor) -> None:
    same_result((t.data, t.qparams), (u.data, u.qparams))
    assert (
        t.shape == u.shape
        and t.qparams.zero_point.dtype == u.qparams.zero_point.dtype == torch.int32
    )


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _check_all(x: torch.Tensor, scheme: cz.QScheme, monkeypatch) -> int:
    """quantize_tensor, QTensor.from_float (and quantize_tensor_codes at 8 bits) against the
    torch path; returns how many of these calls there were."""
    same_result(
        cz.quantize_tensor(x, scheme),
        torch_path(lambda: cz.quantize_tensor(x, scheme), monkeypatch),
    )
    _same_qtensor(
        cz.QTensor.from_float(x, scheme),
        torch_path(lambda: cz.QTensor.from_float(x, scheme), monkeypatch),
    )
    if scheme.bits != 8:
        return 2
    codes = cz.core.quantize.quantize_tensor_codes(x, scheme)
    same_result(
        codes, torch_path(lambda: cz.core.quantize.quantize_tensor_codes(x, scheme), monkeypatch)
    )
    return 3


@pytest.mark.parametrize("gran, shape", VIEWS, ids=VIEW_IDS)
@pytest.mark.parametrize("bits, symmetric", WIDTHS, ids=WIDTH_IDS)
def test_fused_equals_the_general_path(bits, symmetric, gran, shape, counted, monkeypatch):
    """Gaussian data with ties of small half-integers, zeros of both signs, denormals and an
    all-zero last slab, every scale dtype; every call takes the fused pass."""
    x = planted_with_denormals(shape, seed=bits)
    calls = 0
    for scale_dtype in SCALE_DTYPES:
        calls += _check_all(x, cz.QScheme(bits, symmetric, gran, scale_dtype), monkeypatch)
    assert len(counted) == calls


def _edge_rows() -> torch.Tensor:
    """One 64-value row per edge case."""
    rows = _randn(12, 64)
    rows[0] = 0.0  # all zero: s = 1
    rows[1] = -0.0
    rows[2] = rows[2].abs() + 1.0  # one-sided, positive
    rows[3] = -rows[3].abs() - 1.0  # one-sided, negative
    rows[4] = torch.tensor(1e-40)  # denormal range: s = tiny
    rows[5, ::3] = -3e-39
    rows[6] = rows[6] * 1e-6  # below float16's tiny after / qmax
    rows[7] = torch.arange(64) - 31.5  # ties when s is a power of two
    rows[7, 0] = -127.0
    rows[8] = torch.linspace(-6.5, 6.5, 14).repeat(5)[:64]  # 4 bits, s = 1: all ties
    rows[8, 0] = 7.0
    rows[9] = torch.linspace(-3.2e4, 3.2e4, 64)  # 1 bit asym: s = 64000 < 65504
    rows[10] = rows[10] * 1e30  # large, fine in float32
    rows[11, :5] = torch.tensor([1e-30, 3.0, -2.0, 2.5, -0.5])
    return rows


@pytest.mark.parametrize("bits, symmetric", WIDTHS, ids=WIDTH_IDS)
def test_edge_rows(bits, symmetric, counted, monkeypatch):
    """Edge rows, one scale per row (and per group of 32 within them); a scale that would
    overflow float16 falls back and raises as the general path does."""
    x = _edge_rows()
    for gran in (cz.PerChannel(0), cz.PerGroup(32)):
        for scale_dtype in SCALE_DTYPES:
            scheme = cz.QScheme(bits, symmetric, gran, scale_dtype)
            if scale_dtype == "float16":  # row 10 overflows float16
                _same_errors(x, scheme, ScaleOverflowError, monkeypatch)
            _check_all(x[:10] if scale_dtype == "float16" else x, scheme, monkeypatch)
    assert counted


def _same_errors(x: torch.Tensor, scheme: cz.QScheme, error: type, monkeypatch) -> None:
    """Every entry point raises ``error`` with the torch path's message."""
    entries = [
        lambda: cz.quantize_tensor(x, scheme, name="w"),
        lambda: cz.QTensor.from_float(x, scheme, name="w"),
    ]
    if scheme.bits == 8:
        entries.append(lambda: cz.core.quantize.quantize_tensor_codes(x, scheme, name="w"))
    for entry in entries:
        with pytest.raises(error) as got:
            entry()
        with pytest.raises(error) as want:
            torch_path(entry, monkeypatch)
        assert str(got.value) == str(want.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(
    "bits, symmetric", [(4, True), (8, False), (1, False)], ids=["4sym", "8asym", "1asym"]
)
def test_non_finite_raises_the_typed_error(bad, bits, symmetric, counted, monkeypatch):
    """NaN/Inf in the vector body or the tail of a row: the fused pass gives up, the general
    path raises NonFiniteError naming the tensor, with the torch path's message."""
    for where in ((4, 33), (7, 63), (0, 0)):
        x = _randn(9, 64)
        x[where] = bad
        for gran in (cz.PerChannel(0), cz.PerGroup(32)):
            _same_errors(
                x, cz.QScheme(bits, symmetric, gran, "float16"), NonFiniteError, monkeypatch
            )
    assert counted


def test_scale_overflow(counted, monkeypatch):
    """Scales beyond the storage dtype: float16 (65504) and, for 1-bit asymmetric
    (s = hi - lo), float32 and bfloat16."""
    x = _randn(6, 64)
    x[3, 5] = 1e6  # s = 1e6 / 7 > 65504
    _same_errors(
        x, cz.QScheme(4, True, cz.PerChannel(0), "float16"), ScaleOverflowError, monkeypatch
    )
    x[3, 5], x[3, 6] = 3e38, -3e38  # s = 6e38 > float32 max
    for scale_dtype in ("float32", "bfloat16"):
        _same_errors(
            x, cz.QScheme(1, False, cz.PerGroup(32), scale_dtype), ScaleOverflowError, monkeypatch
        )
    assert len(counted) == 9  # from_float: packed, then q


def _double_rounding_ranges(dt: torch.dtype, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ranges [lo < 0 < hi] whose scale (hi - lo) / levels rounded once to ``dt`` is not
    float64 -> float32 -> dt (none for max / qmax of one float32: hi - lo is what makes them)."""
    g = torch.Generator().manual_seed(0)
    hi = torch.rand(1 << 20, generator=g) * 30 + 1
    lo = -torch.rand(1 << 20, generator=g) * 1e-3
    s64 = (hi.to(torch.float64) - lo.to(torch.float64)) / levels
    differ = _round_once(s64, dt) != s64.to(torch.float32).to(dt)
    return lo[differ][:16], hi[differ][:16]


@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16"])
def test_scale_rounded_once(scale_dtype, counted, monkeypatch):
    """Rows whose scale would round twice through float32: the kernel rounds once, as
    ``qparams._round_once``."""
    dt = getattr(torch, scale_dtype)
    lo, hi = _double_rounding_ranges(dt, 15)
    assert len(lo) >= 4
    x = (_randn(len(lo), 64).abs() % 1) * (hi - lo)[:, None] + lo[:, None]
    x = torch.minimum(torch.maximum(x, lo[:, None]), hi[:, None])
    x[:, 3], x[:, 60] = lo, hi
    scheme = cz.QScheme(4, False, cz.PerChannel(0), scale_dtype)
    q, qp = cz.quantize_tensor(x, scheme)
    assert torch.equal(
        qp.scale, _round_once((hi.to(torch.float64) - lo.to(torch.float64)) / 15, dt)
    )
    _check_all(x, scheme, monkeypatch)


@needs_native
@settings(max_examples=60, deadline=None)
@given(
    width=st.sampled_from(WIDTHS),
    rows=st.integers(1, 9),
    groups=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    scale_pow=st.integers(-130, 30),
    scale_dtype=st.sampled_from(SCALE_DTYPES),
    offset=st.floats(-2, 2),
)
def test_property(width, rows, groups, seed, scale_pow, scale_dtype, offset):
    """Random rows of magnitudes from denormal to large, shifted off zero, against the torch
    path (called directly: one direct kernel call, no thread split)."""
    bits, symmetric = width
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, groups * 32, generator=g) + offset) * 2.0**scale_pow
    x.view(-1)[::5] = torch.round(x.view(-1)[::5]) + 0.5  # ties when s is a power of two
    scheme = cz.QScheme(bits, symmetric, cz.PerGroup(32), scale_dtype)
    with pytest.MonkeyPatch.context() as m:
        m.delenv("CUANTIZA_NATIVE", raising=False)
        m.setattr(_native, "MIN_ELEMS", 1)
        got = onepass.quantize(x, scheme, cz.MinMax(), Form.INTEGERS)
        packed = onepass.quantize(x, scheme, cz.MinMax(), Form.PACKED)
        m.setenv("CUANTIZA_NATIVE", "0")
        try:
            want = cz.quantize_tensor(x, scheme)
        except ScaleOverflowError:
            assert got is None and packed is None
            return
        same_result(got, want)
        if bits < 8:
            assert torch.equal(packed[0], cz.pack(want[0], bits, -scheme.qmin))


@needs_native
@pytest.mark.parametrize(
    "scheme",
    [
        cz.QScheme(8, True, cz.PerChannel(0)),
        cz.QScheme(4, True, cz.PerGroup(128), "float16"),
        cz.QScheme(4, False, cz.PerGroup(32), "bfloat16"),
    ],
    ids=["int8-ch", "int4-g128", "int4a-g32"],
)
def test_default_thresholds(scheme, monkeypatch):
    """Without patched thresholds: a large weight is split over two threads, a small one is
    one direct call; both fused and both the general path's results."""
    monkeypatch.delenv("CUANTIZA_NATIVE", raising=False)
    monkeypatch.setattr(native_threads, "thread_count", lambda: 2)
    calls = _count(monkeypatch)
    big = _randn(256, 4096) * 0.02
    assert (
        native_threads.row_parts(*big.reshape(-1, 128).shape)[1] == 2
        and native_threads.row_parts(*big.shape)[1] == 2
    )
    for x in (big, _randn(16, 512)):
        _check_all(x, scheme, monkeypatch)
    assert len(calls) == 2 * (3 if scheme.bits == 8 else 2)


EXCLUDED = [
    ("full range", cz.QScheme(4, True, cz.PerChannel(0), restricted=False), cz.MinMax(), (8, 64)),
    ("binary", cz.QScheme(1, True, cz.PerChannel(0)), cz.MinMax(), (8, 64)),
    ("percentile", cz.QScheme(8, True, cz.PerChannel(0)), cz.Percentile(99.0), (8, 64)),
    ("moving average", cz.QScheme(8, True, cz.PerChannel(0)), cz.MovingAverage(), (8, 64)),
    ("per tensor", cz.QScheme(8, True, cz.PerTensor()), cz.MinMax(), (8, 64)),
    ("per channel 1", cz.QScheme(8, True, cz.PerChannel(1)), cz.MinMax(), (8, 64)),
    ("padded groups", cz.QScheme(4, True, cz.PerGroup(32)), cz.MinMax(), (8, 70)),
    ("groups along axis 0", cz.QScheme(4, True, cz.PerGroup(4, axis=0)), cz.MinMax(), (8, 64)),
    ("3 bits", cz.QScheme(3, True, cz.PerChannel(0)), cz.MinMax(), (8, 64)),
    ("5 bits", cz.QScheme(5, False, cz.PerGroup(32)), cz.MinMax(), (8, 64)),
    ("6 bits", cz.QScheme(6, True, cz.PerGroup(32)), cz.MinMax(), (8, 64)),
    ("7 bits", cz.QScheme(7, False, cz.PerChannel(0)), cz.MinMax(), (8, 64)),
]


@pytest.mark.parametrize("what, scheme, spec, shape", EXCLUDED, ids=[e[0] for e in EXCLUDED])
def test_excluded_cases_keep_the_general_path(what, scheme, spec, shape, counted, monkeypatch):
    x = planted_with_denormals(shape, seed=3)
    same_result(
        cz.quantize_tensor(x, scheme, spec),
        torch_path(lambda: cz.quantize_tensor(x, scheme, spec), monkeypatch),
    )
    t = cz.QTensor.from_float(x, scheme, spec)
    assert torch.equal(
        t.data, torch_path(lambda: cz.QTensor.from_float(x, scheme, spec), monkeypatch).data
    )
    assert counted == []


def test_other_inputs_keep_the_general_path(counted, monkeypatch):
    """Non-contiguous, float16 input (converted: then fused), too small, disabled, and packed
    codes that would not fill whole bytes per row (1-bit groups of 4: q fused, packing not)."""
    x = planted_with_denormals((8, 64), seed=4)
    scheme = cz.QScheme(4, True, cz.PerChannel(0))
    same_result(
        cz.quantize_tensor(x.t().contiguous().t(), scheme),
        torch_path(lambda: cz.quantize_tensor(x, scheme), monkeypatch),
    )
    assert counted == []
    same_result(
        cz.quantize_tensor(x.half(), scheme),
        torch_path(lambda: cz.quantize_tensor(x.half(), scheme), monkeypatch),
    )
    assert len(counted) == 1
    torch_path(lambda: cz.QTensor.from_float(x, scheme), monkeypatch)
    monkeypatch.setattr(_native, "MIN_ELEMS", x.numel() + 1)
    cz.quantize_tensor(x, scheme)
    assert len(counted) == 1
    monkeypatch.setattr(_native, "MIN_ELEMS", 1)
    one_bit = cz.QScheme(1, False, cz.PerGroup(4))
    _check_all(x, one_bit, monkeypatch)
    assert len(counted) == 3  # q twice (from_float: packing apart)
    assert onepass.plan(x, one_bit, cz.MinMax(), Form.INTEGERS) and not onepass.plan(
        x, one_bit, cz.MinMax(), Form.PACKED
    )


@pytest.mark.parametrize(
    "row_bytes, ptr", [(11008, 0x7F0000114040), (64, 0x7F0000200000), (4096, 0x7F00001FF000)]
)
def test_large_results_split_on_huge_pages(row_bytes, ptr, monkeypatch):
    """The pieces of a large result: every row once, in order, each cut at the first row
    whose output starts at or after a 2 MiB boundary; small results keep ``_parts``' pieces."""
    monkeypatch.setattr(native_threads, "thread_count", lambda: 2)
    n = 45088768 // row_bytes
    parts, threads = native_fused._row_parts(n, row_bytes, row_bytes, ptr)
    assert threads == 2 and len(parts) > 2
    assert [p[3] for p in parts] == [0] + list(np.cumsum([p[1] for p in parts])[:-1])
    assert sum(p[1] for p in parts) == n and all(p[0] == p[3] * row_bytes for p in parts)
    for _, _, _, row in parts[1:]:  # a boundary in (previous row, this row]
        start, page = ptr + row * row_bytes, native_fused.HUGE_PAGE
        assert start - row_bytes < start // page * page <= start
    assert native_fused._row_parts(64, 1024, 1024, ptr) == native_threads.row_parts(64, 1024)
    assert native_fused._row_parts(1, 1 << 24, 1 << 24, ptr) == ([(0, 1, 1 << 24, 0)], 1)


def test_split_on_huge_pages_equals_the_general_path(counted, monkeypatch):
    """The snapped split end to end (a small "huge page" so that small tensors take it)."""
    monkeypatch.setattr(_native, "HUGE_RESULT_BYTES", 1)
    monkeypatch.setattr(native_fused, "HUGE_PAGE", 96)
    x = planted_with_denormals((37, 64), seed=5)
    for scheme in (
        cz.QScheme(8, True, cz.PerChannel(0)),
        cz.QScheme(4, False, cz.PerGroup(32), "float16"),
    ):
        _check_all(x, scheme, monkeypatch)
    assert counted
