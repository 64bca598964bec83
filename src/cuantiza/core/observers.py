"""Streaming observers: they gather statistics of activations for a range spec (``specs.py``).

Observers hold only bounded streaming state, whatever the amount of data:

* ``MinMaxObserver``: running min/max (per tensor or per channel). ``merge`` is exact.
* ``MovingAverageObserver``: lo <- lo + m (batch_lo - lo), first batch sets it. Its merge is the
  batch-weighted mean of the two states (an EMA has no order-free merge; documented, tested).
* ``HistogramObserver``: counts over ``bins`` equal bins on [-R, R), R the smallest power of two
  *strictly* above every |x| seen. Bin index = floor(x / w) + bins/2 with w = 2R / bins, a
  power of two, so the division is exact. When R doubles, bins pair up (2m, 2m+1) -> m + bins/4
  exactly, so the histogram depends only on the data, never on its order or split:
  ``merge`` of histograms of parts equals the histogram of the whole, bit for bit.
  Percentile, MSE and entropy ranges are read off it (``ranges.py``). (In ``histogram.py``.)

NaN, ±Inf and mask-like values (|x| > 1e30; attention masks use float32 min, about -3.4e38)
are excluded from the statistics and counted in ``n_nan`` / ``n_inf``.
"""

from __future__ import annotations

import math

import torch

from ..errors import CalibrationError, ConfigError, UnsupportedDtypeError
from .qparams import QParams, choose_qparams
from .scheme import PerChannel, PerTensor, QScheme

MASK_LIKE = 1e30  # no real activation is this large; attention masks use finfo(float32).min


class Observer:
    """Common bookkeeping: which axis is per-channel, and what was excluded."""

    kind = "observer"

    def __init__(self, channel_axis: int | None = None):
        self.channel_axis = channel_axis
        self.n_seen = 0  # finite values that entered the statistics
        self.n_nan = 0
        self.n_inf = 0  # ±Inf and mask-like values

    def range(self, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) per channel (or one pair) to quantize over; each observer defines it."""
        raise NotImplementedError

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """(channels, values) float32; one row when per-tensor."""
        if x.is_complex() or not x.is_floating_point():
            raise UnsupportedDtypeError(f"observers take real floating tensors, got {x.dtype}")
        x = x.detach().to(torch.float32)
        if self.channel_axis is None:
            return x.reshape(1, -1)
        a = self.channel_axis % x.ndim
        return x.movedim(a, 0).reshape(x.shape[a], -1)

    def _split_finite(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Count and exclude NaN/Inf/mask-like values; return rows and a keep-mask (or None)."""
        bad_nan = torch.isnan(rows)
        bad_big = rows.abs() > MASK_LIKE
        n_nan, n_big = int(bad_nan.sum()), int(bad_big.sum())
        self.n_nan += n_nan
        self.n_inf += n_big
        self.n_seen += rows.numel() - n_nan - n_big
        if n_nan == 0 and n_big == 0:
            return rows, None
        return rows, ~(bad_nan | bad_big)

    def _require_data(self):
        if self.n_seen == 0:
            what = "only NaN/Inf values" if (self.n_nan or self.n_inf) else "no data"
            raise CalibrationError(
                f"{type(self).__name__} saw {what} ({self.n_nan} NaN, {self.n_inf} Inf); feed "
                "calibration batches that reach this tensor, or exclude the module"
            )

    def _scale_shape_check(self, scheme: QScheme):
        g = scheme.granularity
        if isinstance(g, PerTensor) and self.channel_axis is not None:
            raise ConfigError("a per-channel observer cannot produce per-tensor qparams")
        if isinstance(g, PerChannel) and self.channel_axis is None:
            raise ConfigError("a per-tensor observer cannot produce per-channel qparams")
        if not isinstance(g, (PerTensor, PerChannel)):
            raise ConfigError(f"observers produce per-tensor or per-channel qparams, not {g}")

    def qparams(self, scheme: QScheme) -> QParams:
        self._require_data()
        self._scale_shape_check(scheme)
        lo, hi = self.range(scheme)
        if self.channel_axis is None:
            lo, hi = lo.reshape(()), hi.reshape(())
        return choose_qparams(lo, hi, scheme)

    def _counters(self) -> dict:
        return {
            "n_seen": self.n_seen,
            "n_nan": self.n_nan,
            "n_inf": self.n_inf,
            "channel_axis": -1 if self.channel_axis is None else self.channel_axis,
        }

    def _load_counters(self, d: dict):
        self.n_seen, self.n_nan, self.n_inf = int(d["n_seen"]), int(d["n_nan"]), int(d["n_inf"])

    def _merge_counters(self, other: Observer):
        if type(other) is not type(self) or other.channel_axis != self.channel_axis:
            raise ConfigError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        self.n_seen += other.n_seen
        self.n_nan += other.n_nan
        self.n_inf += other.n_inf


def _masked_minmax(rows, keep):
    if keep is None:
        return torch.aminmax(rows, dim=1)
    lo = torch.where(keep, rows, torch.full_like(rows, math.inf)).amin(dim=1)
    hi = torch.where(keep, rows, torch.full_like(rows, -math.inf)).amax(dim=1)
    return lo, hi


class MinMaxObserver(Observer):
    kind = "minmax"

    def __init__(self, channel_axis: int | None = None):
        super().__init__(channel_axis)
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def observe(self, x: torch.Tensor) -> None:
        rows, keep = self._split_finite(self._rows(x))
        if rows.shape[1] == 0 or (keep is not None and not keep.any()):
            return
        lo, hi = _masked_minmax(rows, keep)
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        else:
            self._check_channels(lo)
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)

    def _seen(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (lo, hi) observed so far; CalibrationError before any finite value."""
        if self.lo is None or self.hi is None:
            self._require_data()
            raise CalibrationError(f"{type(self).__name__} holds no range")
        return self.lo, self.hi

    def _check_channels(self, lo):
        if lo.shape != self._seen()[0].shape:
            raise ConfigError(
                f"channel count changed from {self._seen()[0].numel()} to {lo.numel()}"
            )

    def range(self, scheme: QScheme):
        lo, hi = self._seen()
        # channels that only ever held excluded values: +inf/-inf -> treat as zero range
        lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
        hi = torch.where(torch.isfinite(hi), hi, torch.zeros_like(hi))
        return lo, hi

    def merge(self, other: MinMaxObserver) -> MinMaxObserver:
        self._merge_counters(other)
        if other.lo is not None:
            o_lo, o_hi = other._seen()
            if self.lo is None or self.hi is None:
                self.lo, self.hi = o_lo.clone(), o_hi.clone()
            else:
                self._check_channels(o_lo)
                self.lo, self.hi = torch.minimum(self.lo, o_lo), torch.maximum(self.hi, o_hi)
        return self

    def state_dict(self) -> dict:
        d = {"kind": self.kind, **self._counters()}
        if self.lo is not None:
            lo, hi = self._seen()
            d["lo"], d["hi"] = lo.clone(), hi.clone()
        return d

    def load_state_dict(self, d: dict):
        self._load_counters(d)
        self.lo, self.hi = (d["lo"].clone(), d["hi"].clone()) if "lo" in d else (None, None)
        return self


class MovingAverageObserver(MinMaxObserver):
    kind = "moving_average"

    def __init__(self, momentum: float = 0.01, channel_axis: int | None = None):
        super().__init__(channel_axis)
        self.momentum = momentum
        self.n_batches = 0

    def observe(self, x: torch.Tensor) -> None:
        rows, keep = self._split_finite(self._rows(x))
        if rows.shape[1] == 0 or (keep is not None and not keep.any()):
            return
        lo, hi = _masked_minmax(rows, keep)
        self.n_batches += 1
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
            return
        self._check_channels(lo)
        m = self.momentum
        self.lo = self.lo + m * (lo - self.lo)
        self.hi = self.hi + m * (hi - self.hi)

    def merge(self, other: MinMaxObserver) -> MovingAverageObserver:
        """Batch-weighted mean of the two averages (an EMA has no exact order-free merge)."""
        nb = other.n_batches if isinstance(other, MovingAverageObserver) else 0
        na = self.n_batches
        self._merge_counters(other)  # raises unless other is a MovingAverageObserver too
        if other.lo is None:
            return self
        o_lo, o_hi = other._seen()
        if self.lo is None or self.hi is None:
            self.lo, self.hi = o_lo.clone(), o_hi.clone()
        else:
            self._check_channels(o_lo)
            self.lo = (self.lo * na + o_lo * nb) / (na + nb)
            self.hi = (self.hi * na + o_hi * nb) / (na + nb)
        self.n_batches = na + nb
        return self

    def state_dict(self) -> dict:
        return {**super().state_dict(), "momentum": self.momentum, "n_batches": self.n_batches}

    def load_state_dict(self, d: dict):
        super().load_state_dict(d)
        self.momentum, self.n_batches = float(d["momentum"]), int(d["n_batches"])
        return self
