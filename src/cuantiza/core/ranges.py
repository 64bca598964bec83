"""Pure range selection: which [lo, hi] to quantize, given data rows or a histogram.

Nothing here keeps state; observers (``observers.py``) accumulate statistics and call these.

* rows: a blocked tensor ``(n_blocks, block_len)`` (see ``layout``), one range per row.
* histograms: counts over ``bins`` equal bins covering [-R, R) (see ``observers.Histogram``).

Error model for a histogram: every value counts as its bin's centre c and costs
(c - dq(q(c)))^2 (rounding and clipping alike); bins are 2R/bins wide, far below a step s.
"""

from __future__ import annotations

import math

import torch

from .. import backends
from ..backends.torch_rows import ROW_CHUNK_ELEMS, round_clamp, row_chunks
from .qparams import scale_from_range, zero_point_from_range
from .scheme import QScheme


def minmax_rows(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row min and max of blocked rows ``(n, L)`` (NaN propagates; callers check
    finiteness), by the row kernel ``backends`` chooses; zero-length rows give 0."""
    n, length = xb.shape
    if length == 0:
        z = torch.zeros(n, dtype=xb.dtype)
        return z, z
    return backends.row_kernels(xb).minmax_rows(xb)


def percentile_rows(xb: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (100 - p)-th and p-th percentiles (linear interpolation, exact)."""
    q = torch.tensor([1 - p / 100, p / 100], dtype=torch.float64)
    lo, hi = torch.quantile(xb.to(torch.float64), q, dim=1)
    return lo.to(torch.float32), hi.to(torch.float32)


# A shrunk range must beat min/max by this relative margin: errors are float32 norms (relative
# error ~1e-6), so the margin keeps the search never worse than min/max in exact arithmetic.
MSE_MARGIN = 1e-5


def _row_errors(
    x: torch.Tensor,
    s: torch.Tensor,
    z: torch.Tensor,
    scheme: QScheme,
    norm: float,
    buf: torch.Tensor,
) -> torch.Tensor:
    """(sum |x - dq(q(x))|^norm)^(1/norm) per row, float32; s and z are (n, 1) float32 and
    ``buf`` a float32 buffer of x's shape (reused: no multi-MB temporary per candidate)."""
    if scheme.binary:
        d = torch.where(x >= 0, s, -s, out=buf).sub_(x)
    else:
        t = round_clamp(x, s, None if scheme.symmetric else z, scheme.qmin, scheme.qmax, out=buf)
        if not scheme.symmetric:
            t.sub_(z)
        d = t.mul_(s).sub_(x)
    return torch.linalg.vector_norm(d, ord=norm, dim=1)


def mse_rows(
    xb: torch.Tensor, scheme: QScheme, grid: int = 32, max_shrink: float = 0.75, norm: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row clipping range minimising sum |x - dq(q(x))|^norm over ``grid`` candidates
    ``[lo, hi] * (1 - k * max_shrink / grid)``, k = 0..grid-1 (k = 0 is min/max itself; a
    shrunk range wins only if better by ``MSE_MARGIN``, relative). The scale rounded to its
    storage dtype is the one evaluated. Scales of all candidates are chosen at once per chunk."""
    xb = xb.detach()  # a search, not a differentiable op
    lo, hi = minmax_rows(xb)
    ratios = torch.tensor([1.0 - k * max_shrink / grid for k in range(grid)], dtype=lo.dtype)[
        :, None
    ]
    best_lo, best_hi = lo.clone(), hi.clone()
    buf = torch.empty(min(xb.numel(), max(ROW_CHUNK_ELEMS, xb.shape[1])), dtype=torch.float32)
    for rows in row_chunks(xb.shape[0], xb.shape[1]):
        x, n = xb[rows], rows.stop - rows.start
        clo, chi = lo[rows] * ratios, hi[rows] * ratios  # (grid, n)
        s = scale_from_range(clo, chi, scheme)
        z = zero_point_from_range(clo, s, scheme).float()
        s, b = s.float(), buf[: x.numel()].view(x.shape)
        err = torch.stack(
            [_row_errors(x, s[k, :, None], z[k, :, None], scheme, norm, b) for k in range(grid)]
        )
        err[0] *= 1 - MSE_MARGIN  # (grid, n): min/max wins ties
        k = err.argmin(dim=0)  # (n,)
        idx = torch.arange(n)
        best_lo[rows], best_hi[rows] = clo[k, idx], chi[k, idx]
    return best_lo, best_hi


# ----------------------------------------------------------------------------- histograms
def bin_centers(bins: int, radius: float) -> torch.Tensor:
    w = 2 * radius / bins
    return -radius + w * (torch.arange(bins, dtype=torch.float64) + 0.5)


def hist_percentile(counts: torch.Tensor, radius: float, p: float) -> tuple[float, float]:
    """(100 - p)-th and p-th percentiles of histogrammed data, interpolated inside a bin.
    Accurate to one bin width, 2R / bins."""
    c = counts.to(torch.float64)
    total = float(c.sum())
    if total == 0:
        return 0.0, 0.0
    cdf = torch.cumsum(c, 0)
    w = 2 * radius / c.numel()

    def at(frac: float) -> float:
        target = frac * total
        i = int(
            torch.searchsorted(cdf, torch.tensor([target], dtype=torch.float64))[0].clamp(
                max=c.numel() - 1
            )
        )
        before = float(cdf[i - 1]) if i > 0 else 0.0
        inside = (target - before) / float(c[i]) if c[i] > 0 else 0.0
        return -radius + w * (i + min(max(inside, 0.0), 1.0))

    return at(1 - p / 100), at(p / 100)


def _occupied(counts: torch.Tensor, radius: float) -> tuple[float, float]:
    nz = torch.nonzero(counts).flatten()
    w = 2 * radius / counts.numel()
    return -radius + w * int(nz[0]), -radius + w * (int(nz[-1]) + 1)


def hist_expected_error(
    counts: torch.Tensor, radius: float, lo: torch.Tensor, hi: torch.Tensor, scheme: QScheme
) -> torch.Tensor:
    """Squared error of each candidate range (lo[k], hi[k]), every value taken at its bin's
    centre: (c - dq(q(c)))^2, clipping and rounding alike, weighted by the bin's count."""
    nz = counts > 0
    c = counts[nz].to(torch.float64)  # occupied bins only
    centers = bin_centers(counts.numel(), radius)[nz][None, :]  # (1, B')
    s = scale_from_range(lo, hi, scheme).to(torch.float64)[:, None]  # (K, 1)
    z = zero_point_from_range(lo, s[:, 0], scheme).to(torch.float64)[:, None]
    if scheme.binary:
        fq = torch.where(centers >= 0, s, -s)
    else:
        fq = round_clamp(centers, s, z, scheme.qmin, scheme.qmax).sub_(z).mul_(s)
    return ((centers - fq) ** 2 * c[None, :]).sum(dim=1)


def hist_mse(
    counts: torch.Tensor, radius: float, scheme: QScheme, grid: int = 64
) -> tuple[float, float]:
    """Range with the least expected squared error; candidates shrink each end of the
    occupied range on a ``grid`` x ``grid`` lattice (one axis for symmetric schemes)."""
    if float(counts.sum()) == 0:
        return 0.0, 0.0
    dlo, dhi = _occupied(counts, radius)
    r = torch.linspace(1.0, 1.0 / grid, grid, dtype=torch.float64)
    if scheme.symmetric:
        amax = max(abs(dlo), abs(dhi))
        lo, hi = -amax * r, amax * r
    else:
        lo = (min(dlo, 0.0) * r)[:, None].expand(grid, grid).reshape(-1)
        hi = (max(dhi, 0.0) * r)[None, :].expand(grid, grid).reshape(-1)
    err = hist_expected_error(counts, radius, lo, hi, scheme)
    k = int(torch.argmin(err))
    return float(lo[k]), float(hi[k])


def _kl_threshold(mag: torch.Tensor, levels: int) -> int:
    """TensorRT-style entropy calibration on a histogram of magnitudes: the number of bins
    i >= levels whose distribution, squeezed into ``levels`` buckets, diverges least (KL)."""
    n = mag.numel()
    best_i, best_kl = n, math.inf
    for i in range(levels, n + 1):
        p = mag[:i].clone()
        p[i - 1] += mag[i:].sum()  # outliers onto the edge bin
        nonzero = (p > 0).to(torch.float64)
        bucket = torch.arange(i) * levels // i  # bin -> one of `levels` buckets
        sums = torch.bincount(bucket, weights=mag[:i], minlength=levels)
        nnz = torch.bincount(bucket, weights=nonzero, minlength=levels)
        q = nonzero * (sums / nnz.clamp(min=1))[bucket]  # spread evenly over nonzero bins
        ps, qs = p / p.sum(), q / max(float(q.sum()), 1e-300)
        m = (ps > 0) & (qs > 0)
        # a bin with mass in P but none in Q has infinite KL; weigh it heavily instead
        kl = float((ps[m] * torch.log(ps[m] / qs[m])).sum()) + 30 * float(
            ps[(ps > 0) & (qs == 0)].sum()
        )
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i


def hist_entropy(
    counts: torch.Tensor, radius: float, scheme: QScheme, max_bins: int = 512
) -> tuple[float, float]:
    """Entropy (KL-divergence) calibration. Works on the magnitude histogram; one-sided data
    gets all the levels, signed data half of them. Bins are merged down to ``max_bins``
    magnitude bins first to bound the search."""
    c = counts.to(torch.float64)
    if float(c.sum()) == 0:
        return 0.0, 0.0
    dlo, dhi = _occupied(counts, radius)
    half = c.numel() // 2
    mag = c[half:] + c[:half].flip(0)  # |x| histogram over [0, R)
    merge = max(1, mag.numel() // max_bins)
    mag = mag.reshape(-1, merge).sum(dim=1)
    one_sided = dlo >= 0 or dhi <= 0
    levels = scheme.levels if one_sided else max(scheme.levels // 2, 1)
    levels = min(levels, mag.numel())
    i = _kl_threshold(mag, levels)
    t = radius * i / mag.numel()
    return max(dlo, -t), min(dhi, t)
