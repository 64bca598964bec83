"""Streaming observers: exact merge, bounded memory, NaN/Inf/mask handling, state round trip,
and the ranges read off histograms."""

import math

import numpy as np
import pytest
import torch

import cuantiza as cz
from cuantiza.errors import CalibrationError, ConfigError
from tests import reference as ref
from tests.thresholds import THRESHOLDS

# symmetric: the asymmetric histogram MSE search is a 64 x 64 grid, slow for a unit test
SCHEME8 = cz.QScheme(bits=8)
PER_CHANNEL8 = cz.QScheme(bits=8, granularity=cz.PerChannel(0))


def _batches(seed=0, n=6, grow=False):
    """Batches of (16, 4) activations; with ``grow`` each batch has a 10x wider range."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 4, generator=g) * (10.0**i if grow else 1.0) for i in range(n)]


def _feed(obs, batches):
    for b in batches:
        obs.observe(b)
    return obs


def _state_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def _qparams_equal(a: cz.QParams, b: cz.QParams) -> bool:
    return torch.equal(a.scale, b.scale) and torch.equal(a.zero_point, b.zero_point)


def _state_bytes(obs) -> int:
    return sum(
        v.numel() * v.element_size()
        for v in obs.state_dict().values()
        if isinstance(v, torch.Tensor)
    )


MERGEABLE = {
    "minmax": lambda axis=None: cz.MinMaxObserver(axis),
    "histogram-mse": lambda axis=None: cz.HistogramObserver(256, "mse", channel_axis=axis),
    "percentile": lambda axis=None: cz.Percentile(99.0, bins=256).make(axis),
    "entropy": lambda axis=None: cz.HistogramObserver(256, "entropy", channel_axis=axis),
}


# ---------------------------------------------------------------------------- exact merge
@pytest.mark.parametrize("kind", MERGEABLE)
@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("grow", [False, True], ids=["same-range", "growing-range"])
def test_merge_of_split_data_equals_one_pass(kind, axis, grow):
    batches = _batches(seed=1, grow=grow)
    whole = _feed(MERGEABLE[kind](axis), batches)
    for cut in (1, 3, 5):
        left = _feed(MERGEABLE[kind](axis), batches[:cut])
        right = _feed(MERGEABLE[kind](axis), batches[cut:])
        for merged in (
            left.merge(right),
            _feed(MERGEABLE[kind](axis), batches[cut:]).merge(
                _feed(MERGEABLE[kind](axis), batches[:cut])
            ),
        ):
            assert _state_equal(merged.state_dict(), whole.state_dict())
            scheme = SCHEME8 if axis is None else PER_CHANNEL8
            assert _qparams_equal(merged.qparams(scheme), whole.qparams(scheme))


def test_histogram_merge_when_second_part_has_much_larger_range():
    small = torch.randn(1000) * 0.01
    large = torch.randn(1000) * 1000.0
    one = cz.HistogramObserver(512)
    one.observe(torch.cat([small, large]))
    a, b = cz.HistogramObserver(512), cz.HistogramObserver(512)
    a.observe(small)
    b.observe(large)
    assert a.radius < b.radius / 2**15  # the radius really has to grow
    a.merge(b)
    assert a.radius == one.radius and torch.equal(a.counts, one.counts)
    for method in ("mse", "percentile", "entropy"):
        a.method = one.method = method
        assert _qparams_equal(a.qparams(SCHEME8), one.qparams(SCHEME8))


def test_histogram_equals_reference_histogram_whatever_the_batching():
    x = torch.cat(
        [torch.randn(500) * 0.1, torch.randn(500) * 30.0, torch.tensor([0.0, -0.0, 2.0**-50])]
    )
    x = x[torch.randperm(x.numel())]
    obs = cz.HistogramObserver(128)
    for chunk in x.split(37):  # radius grows many times on the way
        obs.observe(chunk)
    radius = ref.histogram_radius(x.numpy())
    assert obs.radius == radius
    np.testing.assert_array_equal(obs.counts[0].numpy(), ref.histogram(x.numpy(), 128, radius))


def test_histogram_docstring_example():
    h = cz.HistogramObserver(bins=8)
    h.observe(torch.tensor([0.3, -0.2, 0.9]))
    assert h.radius == 1.0
    assert h.counts[0].tolist() == [0, 0, 0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("kind", list(MERGEABLE) + ["moving_average"])
def test_merge_with_empty_observer(kind):
    make = MERGEABLE.get(kind, lambda axis=None: cz.MovingAverageObserver(0.1, axis))
    full = _feed(make(), _batches())
    expected = full.state_dict()
    assert _state_equal(full.merge(make()).state_dict(), expected)
    assert _state_equal(make().merge(full).state_dict(), expected)


# ---------------------------------------------------------------------------- moving average
def test_moving_average_update_rule():
    m = 0.25
    obs = cz.MovingAverageObserver(m)
    lo = hi = None
    for b in _batches(seed=2):
        obs.observe(b)
        blo, bhi = float(b.min()), float(b.max())
        lo, hi = (blo, bhi) if lo is None else (lo + m * (blo - lo), hi + m * (bhi - hi))
    rtol = THRESHOLDS["float32_formula_rtol"]
    assert float(obs.lo) == pytest.approx(lo, rel=rtol) and float(obs.hi) == pytest.approx(
        hi, rel=rtol
    )
    assert obs.n_batches == 6


def test_moving_average_merge_is_batch_weighted_mean():
    """Documented: an EMA has no order-free exact merge; merge weights each state by its batches."""
    a = _feed(cz.MovingAverageObserver(0.1), _batches(seed=3, n=2))
    b = _feed(cz.MovingAverageObserver(0.1), _batches(seed=4, n=6))
    alo, ahi, blo, bhi = float(a.lo), float(a.hi), float(b.lo), float(b.hi)
    a.merge(b)
    rtol = THRESHOLDS["float32_formula_rtol"]
    assert float(a.lo) == pytest.approx((2 * alo + 6 * blo) / 8, rel=rtol)
    assert float(a.hi) == pytest.approx((2 * ahi + 6 * bhi) / 8, rel=rtol)
    assert a.n_batches == 8 and a.n_seen == 8 * 64


def test_moving_average_merge_of_equal_states_is_identity():
    a = _feed(cz.MovingAverageObserver(0.1), _batches(seed=5))
    b = _feed(cz.MovingAverageObserver(0.1), _batches(seed=5))
    lo, hi = a.lo.clone(), a.hi.clone()
    a.merge(b)
    assert torch.equal(a.lo, lo) and torch.equal(a.hi, hi)


# ---------------------------------------------------------------------------- bounded memory
@pytest.mark.parametrize(
    "make",
    [
        lambda: cz.MinMaxObserver(),
        lambda: cz.MovingAverageObserver(0.1),
        lambda: cz.HistogramObserver(256),
        lambda: cz.HistogramObserver(256, channel_axis=1),
    ],
    ids=["minmax", "moving_average", "histogram", "histogram-per-channel"],
)
def test_state_size_independent_of_number_of_batches(make):
    obs = make()
    obs.observe(_batches(n=1)[0])
    size = _state_bytes(obs)
    _feed(obs, _batches(seed=6, n=40, grow=False) + _batches(seed=7, n=8, grow=True))
    assert _state_bytes(obs) == size
    assert obs.n_seen == 49 * 64


# ---------------------------------------------------------------------------- NaN / Inf / masks
def _dirty_batch():
    clean = torch.linspace(-2.0, 3.0, 50)
    dirt = torch.tensor(
        [float("nan")] * 3
        + [
            float("inf"),
            float("-inf"),
            torch.finfo(torch.float32).min,
            torch.finfo(torch.float32).max,
            -1e31,
        ]
    )
    return clean, torch.cat([clean[:20], dirt, clean[20:]])


@pytest.mark.parametrize("kind", list(MERGEABLE) + ["moving_average"])
def test_nan_inf_and_mask_values_excluded_and_counted(kind):
    make = MERGEABLE.get(kind, lambda axis=None: cz.MovingAverageObserver(0.1, axis))
    clean, dirty = _dirty_batch()
    obs, ref_obs = make(), make()
    obs.observe(dirty)
    ref_obs.observe(clean)
    assert (obs.n_nan, obs.n_inf, obs.n_seen) == (3, 5, 50)
    assert _qparams_equal(obs.qparams(SCHEME8), ref_obs.qparams(SCHEME8))
    if hasattr(obs, "counts"):
        assert int(obs.counts.sum()) == 50 and obs.radius == 4.0


@pytest.mark.parametrize("kind", list(MERGEABLE) + ["moving_average"])
def test_all_nan_is_a_calibration_error(kind):
    make = MERGEABLE.get(kind, lambda axis=None: cz.MovingAverageObserver(0.1, axis))
    obs = make()
    obs.observe(torch.full((4, 4), float("nan")))
    with pytest.raises(CalibrationError, match="16 NaN"):
        obs.qparams(SCHEME8)
    with pytest.raises(CalibrationError, match="no data"):
        make().qparams(SCHEME8)


def test_channel_with_only_masked_values_gets_a_zero_range():
    x = torch.randn(8, 3)
    x[:, 1] = torch.finfo(torch.float32).min
    obs = cz.MinMaxObserver(channel_axis=1)
    obs.observe(x)
    qp = obs.qparams(PER_CHANNEL8)
    assert torch.all(torch.isfinite(qp.scale)) and float(qp.scale[1]) == 1.0


# ---------------------------------------------------------------------------- state dicts
@pytest.mark.parametrize("kind", list(MERGEABLE) + ["moving_average"])
@pytest.mark.parametrize("axis", [None, 1])
def test_state_dict_round_trip(kind, axis):
    make = MERGEABLE.get(kind, lambda axis=None: cz.MovingAverageObserver(0.1, axis))
    batches = _batches(seed=8, grow=True)
    obs = _feed(make(axis), batches[:3])
    copy = make(axis).load_state_dict(obs.state_dict())
    assert _state_equal(copy.state_dict(), obs.state_dict())
    _feed(obs, batches[3:])  # both continue identically
    _feed(copy, batches[3:])
    assert _state_equal(copy.state_dict(), obs.state_dict())
    scheme = SCHEME8 if axis is None else PER_CHANNEL8
    assert _qparams_equal(copy.qparams(scheme), obs.qparams(scheme))


def test_state_dict_is_a_copy():
    obs = _feed(cz.HistogramObserver(64), _batches())
    d = obs.state_dict()
    d["counts"].zero_()
    assert int(obs.counts.sum()) == obs.n_seen


# ---------------------------------------------------------------------------- per channel
def test_per_channel_ranges_are_per_column():
    x = torch.randn(32, 5) * torch.arange(1.0, 6.0)
    obs = cz.MinMaxObserver(channel_axis=1)
    obs.observe(x)
    assert torch.equal(obs.lo, x.amin(dim=0)) and torch.equal(obs.hi, x.amax(dim=0))
    qp = obs.qparams(cz.QScheme(granularity=cz.PerChannel(0)))
    assert qp.scale.shape == (5,)


def test_granularity_must_match_the_observer():
    per_tensor = _feed(cz.MinMaxObserver(), _batches())
    per_channel = _feed(cz.MinMaxObserver(channel_axis=1), _batches())
    with pytest.raises(ConfigError):
        per_tensor.qparams(PER_CHANNEL8)
    with pytest.raises(ConfigError):
        per_channel.qparams(SCHEME8)
    with pytest.raises(ConfigError):
        per_tensor.qparams(cz.QScheme(granularity=cz.PerGroup(4)))


def test_channel_count_change_rejected():
    for obs in (cz.MinMaxObserver(channel_axis=1), cz.HistogramObserver(64, channel_axis=1)):
        obs.observe(torch.randn(4, 3))
        with pytest.raises(ConfigError, match="channel count"):
            obs.observe(torch.randn(4, 5))


def test_merge_requires_same_kind():
    with pytest.raises(ConfigError):
        cz.MinMaxObserver().merge(cz.MovingAverageObserver())
    with pytest.raises(ConfigError):
        cz.MinMaxObserver().merge(cz.MinMaxObserver(channel_axis=0))
    with pytest.raises(ConfigError, match="bins"):
        cz.HistogramObserver(64).merge(cz.HistogramObserver(128))


@pytest.mark.parametrize(
    "make",
    [
        lambda: cz.HistogramObserver(bins=10),
        lambda: cz.HistogramObserver(bins=4),
        lambda: cz.HistogramObserver(method="kl"),
        lambda: cz.Histogram(bins=6),
        lambda: cz.Histogram(method="percentile"),
        lambda: cz.Percentile(50.0),
        lambda: cz.Percentile(101),
        lambda: cz.MovingAverage(0.0),
        lambda: cz.MovingAverage(1.5),
        lambda: cz.MSE(grid=0),
        lambda: cz.MSE(max_shrink=1.0),
    ],
)
def test_invalid_observer_configuration_rejected(make):
    with pytest.raises(ConfigError):
        make()


# ---------------------------------------------------------------------------- ranges off histograms
@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_histogram_percentile_within_one_bin_of_numpy(p):
    """Compared with numpy's inverted-CDF percentile (the smallest x with F(x) >= p), which is
    what reading a histogram's CDF estimates. numpy's default "linear" method interpolates
    between neighbouring samples instead; in a sparse tail they differ by up to the gap
    between two samples, which can exceed a bin (99.99 here: 0.15 vs. a 0.125 bin)."""
    x = torch.cat([torch.randn(20000), torch.randn(200) * 20])
    obs = cz.Percentile(p, bins=1024).make()
    for chunk in x.split(4000):
        obs.observe(chunk)
    lo, hi = obs.range(SCHEME8)
    exact_lo, exact_hi = np.percentile(
        x.numpy().astype(np.float64), [100 - p, p], method="inverted_cdf"
    )
    tol = THRESHOLDS["histogram_percentile_bins"] * 2 * obs.radius / obs.bins
    assert abs(float(lo) - exact_lo) <= tol and abs(float(hi) - exact_hi) <= tol


def test_histogram_percentile_within_one_bin_of_numpy_linear_in_dense_data():
    x = torch.randn(20000)
    obs = cz.Percentile(99.0, bins=1024).make()
    obs.observe(x)
    lo, hi = obs.range(SCHEME8)
    exact_lo, exact_hi = np.percentile(x.numpy().astype(np.float64), [1.0, 99.0])
    tol = THRESHOLDS["histogram_percentile_bins"] * 2 * obs.radius / obs.bins
    assert abs(float(lo) - exact_lo) <= tol and abs(float(hi) - exact_hi) <= tol


def _one_heavy_outlier():
    x = torch.randn(10000)
    x[0] = 50.0
    return x


@pytest.mark.parametrize("method", ["mse", "entropy"])
def test_histogram_range_clips_a_heavy_outlier(method):
    x = _one_heavy_outlier()
    obs = cz.HistogramObserver(2048, method)
    obs.observe(x)
    lo, hi = obs.range(cz.QScheme(bits=4))
    assert float(hi) < 10.0  # the outlier at 50 is clipped
    assert float(hi) > 2.0 and float(lo) < -2.0  # the bulk of N(0, 1) is kept


@pytest.mark.parametrize("method", ["mse", "entropy"])
def test_histogram_range_beats_minmax_with_an_outlier(method):
    x = _one_heavy_outlier()
    scheme = cz.QScheme(bits=4)
    sqnr = {}
    for name, obs in [
        ("minmax", cz.MinMaxObserver()),
        ("hist", cz.HistogramObserver(2048, method)),
    ]:
        obs.observe(x)
        sqnr[name] = ref.sqnr_db(
            x.numpy(), cz.fake_quantize(x, obs.qparams(scheme)).detach().numpy()
        )
    assert sqnr["hist"] >= sqnr["minmax"] + THRESHOLDS["histogram_vs_minmax_sqnr_gain_db"]


def test_histogram_mse_keeps_full_range_without_outliers():
    x = torch.rand(4000) * 2 - 1  # uniform: clipping only hurts
    obs = cz.HistogramObserver(1024, "mse")
    obs.observe(x)
    lo, hi = obs.range(cz.QScheme(bits=8))
    width = THRESHOLDS["histogram_range_bins"] * 2 * obs.radius / obs.bins
    assert float(hi) >= float(x.max()) - width and float(lo) <= float(x.min()) + width


def test_entropy_on_one_sided_data_stays_one_sided():
    x = torch.relu(torch.randn(5000))
    obs = cz.HistogramObserver(1024, "entropy")
    obs.observe(x)
    lo, hi = obs.range(cz.QScheme(bits=8, symmetric=False))
    width = THRESHOLDS["histogram_range_bins"] * 2 * obs.radius / obs.bins
    assert float(lo) >= 0.0 and 1.0 < float(hi) <= float(x.max()) + width


def test_histogram_minmax_method_is_exact():
    x = torch.randn(300) * 3
    obs = cz.HistogramObserver(64, "minmax")
    obs.observe(x)
    lo, hi = obs.range(SCHEME8)
    assert float(lo) == float(x.min()) and float(hi) == float(x.max())


@pytest.mark.parametrize("symmetric", [True, False])
def test_observer_qparams_match_quantize_tensor_minmax(symmetric):
    x = torch.randn(64, 8)
    scheme = cz.QScheme(bits=8, symmetric=symmetric)
    obs = _feed(cz.MinMaxObserver(), list(x.split(16)))
    _, qp = cz.quantize_tensor(x, scheme)
    assert _qparams_equal(obs.qparams(scheme), qp)
    assert math.isfinite(float(qp.scale))
