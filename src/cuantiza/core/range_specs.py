"""Range specs: how to pick the range [lo, hi] that a tensor is quantized over.

Each spec is a small frozen value usable two ways:

* activations (streaming): ``spec.make(channel_axis)`` returns an observer (``observers.py``,
  ``histogram.py``) that accumulates bounded statistics over calibration batches;
* weights (all data at hand): ``spec.rows_range(rows, scheme)`` returns one range per block row
  (see ``layout``); ``quantize_tensor(x, scheme, range=spec)`` uses it.

``MinMax()`` is exact and the default. ``Percentile(p)`` clips to the (100 - p)-th and p-th
percentiles, against outliers. ``Histogram(bins, method)`` picks the range of least expected
squared error (``"mse"``) or least KL divergence (``"entropy"``). ``MSE()`` searches the clipping
range that minimises the quantization error itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from . import ranges
from .histogram import HistogramObserver
from .observers import MinMaxObserver, MovingAverageObserver
from .scheme import QScheme


@dataclass(frozen=True)
class MinMax:
    def make(self, channel_axis=None):
        return MinMaxObserver(channel_axis)

    def rows_range(self, rows: torch.Tensor, scheme: QScheme):
        return ranges.minmax_rows(rows)


@dataclass(frozen=True)
class MovingAverage:
    """Exponential moving average of per-batch min/max; ``momentum`` is the new batch's weight."""

    momentum: float = 0.01

    def __post_init__(self):
        if not 0 < self.momentum <= 1:
            raise ConfigError(f"momentum must be in (0, 1], got {self.momentum}")

    def make(self, channel_axis=None):
        return MovingAverageObserver(self.momentum, channel_axis)

    def rows_range(self, rows, scheme):
        return ranges.minmax_rows(rows)  # one "batch": the weight itself


@dataclass(frozen=True)
class Percentile:
    """Clip to the (100 - p)-th .. p-th percentiles. Streaming: read off an exact-merge
    histogram (accurate to one bin, 2R / bins); weights: exact ``torch.quantile``."""

    p: float = 99.99
    bins: int = 4096

    def __post_init__(self):
        if not 50 < self.p <= 100:
            raise ConfigError(f"percentile must be in (50, 100], got {self.p}")

    def make(self, channel_axis=None):
        return HistogramObserver(self.bins, "percentile", self.p, channel_axis)

    def rows_range(self, rows, scheme):
        return ranges.percentile_rows(rows, self.p)


@dataclass(frozen=True)
class Histogram:
    """Range of least expected squared error (``method="mse"``) or KL divergence
    (``"entropy"``, TensorRT-style) over a ``bins``-bin histogram."""

    bins: int = 2048
    method: str = "mse"

    def __post_init__(self):
        if self.method not in ("mse", "entropy"):
            raise ConfigError(f"Histogram method must be 'mse' or 'entropy', got {self.method!r}")
        if self.bins < 8 or self.bins % 4:
            raise ConfigError(f"Histogram bins must be a multiple of 4 and >= 8, got {self.bins}")

    def make(self, channel_axis=None):
        return HistogramObserver(self.bins, self.method, channel_axis=channel_axis)

    def rows_range(self, rows, scheme):
        lo = torch.empty(rows.shape[0])
        hi = torch.empty(rows.shape[0])
        for i in range(rows.shape[0]):
            obs = self.make()
            obs.observe(rows[i])
            lo[i], hi[i] = obs.range(scheme)
        return lo, hi


@dataclass(frozen=True)
class MSE:
    """Search, per block, the clipping ratio of the min/max range in
    ``1 - k * max_shrink / grid`` (k = 0..grid-1) that minimises sum |x - dq(q(x))|^norm.
    As an activation observer it uses the histogram MSE search."""

    grid: int = 32
    max_shrink: float = 0.75
    norm: float = 2.0

    def __post_init__(self):
        if self.grid < 1 or not 0 <= self.max_shrink < 1 or self.norm <= 0:
            raise ConfigError(f"invalid MSE search {self}")

    def make(self, channel_axis=None):
        return HistogramObserver(2048, "mse", channel_axis=channel_axis)

    def rows_range(self, rows, scheme):
        return ranges.mse_rows(rows, scheme, self.grid, self.max_shrink, self.norm)


RangeSpec = MinMax | MovingAverage | Percentile | Histogram | MSE
