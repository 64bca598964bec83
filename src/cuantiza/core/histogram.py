"""HistogramObserver: order-free, exactly mergeable histograms on a power-of-two grid.

Counts over ``bins`` equal bins on [-R, R), R = 2^k the smallest power of two strictly above
every finite |x| seen (R starts at 2^-100). With w = 2R / bins (a power of two)::

    bin(x) = floor(x / w) + bins / 2          # x / w is exact: w is a power of two

When R doubles, floor(x / 2w) = floor(floor(x / w) / 2), so old bins (2m, 2m + 1) fold into
m + bins/4 with no approximation; the histogram is a function of the data set alone, and merging
the histograms of any split of the data equals one pass over all of it. ``bins`` must be a
multiple of 4. Memory: bins (x channels) int64 counters, whatever the data volume.

>>> h = HistogramObserver(bins=8); h.observe(torch.tensor([0.3, -0.2, 0.9]))
>>> h.radius, h.counts[0].tolist()      # w = 0.25: bins floor(x / w) + 4
(1.0, [0, 0, 0, 1, 0, 1, 0, 1])
"""

from __future__ import annotations

import math

import torch

from ..errors import CalibrationError, ConfigError
from . import ranges
from .observers import Observer
from .scheme import QScheme

START_EXPONENT = -100  # R = 2^-100 before any nonzero data: far below any useful range
CHUNK = 1 << 20  # values binned per step, to bound temporary memory


class HistogramObserver(Observer):
    kind = "histogram"

    def __init__(
        self,
        bins: int = 2048,
        method: str = "mse",
        p: float = 99.99,
        channel_axis: int | None = None,
    ):
        super().__init__(channel_axis)
        if bins < 8 or bins % 4:
            raise ConfigError(f"histogram bins must be a multiple of 4 and >= 8, got {bins}")
        if method not in ("mse", "entropy", "percentile", "minmax"):
            raise ConfigError(
                f"histogram method must be mse, entropy, percentile or minmax, got {method!r}"
            )
        self.bins, self.method, self.p = bins, method, p
        self.exponent = START_EXPONENT
        self.counts: torch.Tensor | None = None  # (bins,) or (channels, bins) int64
        self.lo: torch.Tensor | None = None  # exact per-channel min/max, for "minmax"
        self.hi: torch.Tensor | None = None

    @property
    def radius(self) -> float:
        return math.ldexp(1.0, self.exponent)

    def _seen(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(counts, lo, hi) observed so far; CalibrationError before any finite value."""
        if self.counts is None or self.lo is None or self.hi is None:
            self._require_data()
            raise CalibrationError(f"{type(self).__name__} holds no histogram")
        return self.counts, self.lo, self.hi

    def _grow_to(self, exponent: int) -> None:
        """Double R until it reaches 2^exponent, folding bin pairs exactly."""
        while self.exponent < exponent:
            c = self._seen()[0]
            folded = c.reshape(*c.shape[:-1], self.bins // 2, 2).sum(dim=-1)  # (.., bins/2)
            pad = torch.zeros(*c.shape[:-1], self.bins // 4, dtype=torch.int64)
            self.counts = torch.cat([pad, folded, pad], dim=-1)
            self.exponent += 1

    def observe(self, x: torch.Tensor) -> None:
        rows, keep = self._split_finite(self._rows(x))  # (C, n)
        if keep is not None:
            rows = torch.where(keep, rows, torch.zeros_like(rows))
        n_ch, n = rows.shape
        if n == 0:
            return
        if self.counts is None or self.lo is None or self.hi is None:
            self.counts = torch.zeros(n_ch, self.bins, dtype=torch.int64)
            self.lo = torch.full((n_ch,), math.inf)
            self.hi = torch.full((n_ch,), -math.inf)
        elif self.counts.shape[0] != n_ch:
            raise ConfigError(f"channel count changed from {self.counts.shape[0]} to {n_ch}")
        masked_lo = (
            rows if keep is None else torch.where(keep, rows, torch.full_like(rows, math.inf))
        )
        masked_hi = (
            rows if keep is None else torch.where(keep, rows, torch.full_like(rows, -math.inf))
        )
        self.lo = torch.minimum(self.lo, masked_lo.amin(dim=1))
        self.hi = torch.maximum(self.hi, masked_hi.amax(dim=1))
        amax = float(rows.abs().max())
        # smallest power of two strictly above amax: frexp gives amax = m 2^e, 0.5 <= m < 1
        self._grow_to(math.frexp(amax)[1] if amax > 0 else START_EXPONENT)
        w = math.ldexp(2.0, self.exponent) / self.bins
        offsets = (torch.arange(n_ch) * self.bins)[:, None]
        flat = torch.zeros(n_ch * self.bins, dtype=torch.int64)
        for j in range(0, n, max(1, CHUNK // n_ch)):
            part = rows[:, j : j + max(1, CHUNK // n_ch)].to(torch.float64)
            idx = torch.floor(part / w).to(torch.int64) + self.bins // 2 + offsets
            if keep is not None:
                idx = idx[keep[:, j : j + max(1, CHUNK // n_ch)]]
            flat += torch.bincount(idx.flatten(), minlength=n_ch * self.bins)
        self.counts = self._seen()[0] + flat.reshape(n_ch, self.bins)

    def merge(self, other: HistogramObserver) -> HistogramObserver:
        if other.bins != self.bins:
            raise ConfigError(f"cannot merge histograms of {other.bins} and {self.bins} bins")
        self._merge_counters(other)
        if other.counts is None:
            return self
        o_counts, o_lo, o_hi = other._seen()
        if self.counts is None:
            self.counts, self.exponent = o_counts.clone(), other.exponent
            self.lo, self.hi = o_lo.clone(), o_hi.clone()
            return self
        theirs = HistogramObserver(self.bins).load_state_dict(other.state_dict())
        top = max(self.exponent, theirs.exponent)
        self._grow_to(top)
        theirs._grow_to(top)
        counts, lo, hi = self._seen()
        self.counts = counts + theirs._seen()[0]
        self.lo, self.hi = torch.minimum(lo, o_lo), torch.maximum(hi, o_hi)
        return self

    def _row_range(self, c: int, scheme: QScheme) -> tuple[float, float]:
        all_counts, all_lo, all_hi = self._seen()
        counts, r, d_lo, d_hi = all_counts[c], self.radius, float(all_lo[c]), float(all_hi[c])
        if self.method == "minmax":
            return d_lo, d_hi
        if self.method == "percentile":
            lo, hi = ranges.hist_percentile(counts, r, self.p)
            return max(lo, d_lo), min(hi, d_hi)
        if self.method == "entropy":
            lo, hi = ranges.hist_entropy(counts, r, scheme)
        else:
            lo, hi = ranges.hist_mse(counts, r, scheme)
        # bin edges overshoot the data by up to a bin: stay inside the exact min/max widened to
        # contain 0 (all-zero data: [0, 0] -> scale 1, not a scale of one bin width ~1e-32)
        return max(lo, min(d_lo, 0.0)), min(hi, max(d_hi, 0.0))

    def range(self, scheme: QScheme):
        pairs = [self._row_range(c, scheme) for c in range(self._seen()[0].shape[0])]
        lo = torch.tensor([p[0] for p in pairs], dtype=torch.float32)
        hi = torch.tensor([p[1] for p in pairs], dtype=torch.float32)
        return lo, hi

    def state_dict(self) -> dict:
        d = {
            "kind": self.kind,
            **self._counters(),
            "bins": self.bins,
            "method": self.method,
            "p": self.p,
            "exponent": self.exponent,
        }
        if self.counts is not None:
            counts, lo, hi = self._seen()
            d.update(counts=counts.clone(), lo=lo.clone(), hi=hi.clone())
        return d

    def load_state_dict(self, d: dict):
        self._load_counters(d)
        self.bins, self.method, self.p = int(d["bins"]), str(d["method"]), float(d["p"])
        self.exponent = int(d["exponent"])
        if "counts" in d:
            self.counts, self.lo, self.hi = d["counts"].clone(), d["lo"].clone(), d["hi"].clone()
        return self
