"""The Hessian of a linear layer's inputs, H = 2/n X^T X, streamed, and its damped inverse
Cholesky factor: what GPTQ needs of the calibration data.

``Hessian`` streams X batch by batch into X^T X (float64); rows with NaN/Inf are excluded and
counted (``skipped``), not an error: one bad token must not spoil a layer. Hessians of the same
layer merge exactly (sums). ``inverse_cholesky`` damps H until the factor exists (FAULTS 14).
"""

from __future__ import annotations

import torch

from ..core.quantize import check_finite
from ..errors import CalibrationError, ConfigError, ShapeError, UnsupportedDtypeError

PIVOT_TOL = 1e-10  # smallest pivot^2 / max(diag): below it H is treated as singular


FIRST_RETRY = 1e-6  # relative damping tried after damp = 0


_ROWS = 1 << 14  # rows converted to float64 at a time in Hessian.add


class Hessian:
    """Streaming ``2/n X^T X`` for one layer's inputs (the Hessian of the mean squared output
    error). ``add(x)`` takes x of shape (..., in_features); ``merge`` adds another accumulator
    (exact up to float64 summation order); ``value()`` returns the matrix.

    >>> h = Hessian(4).add(torch.ones(3, 4)); h.n, float(h.value()[0, 1])
    (3, 2.0)
    """

    def __init__(self, in_features: int, name: str = "layer"):
        if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features < 1:
            raise ConfigError(
                f"{name}: Hessian in_features must be a positive integer, got {in_features!r}"
            )
        self.in_features, self.name = in_features, name
        self.xtx = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.n = 0  # rows accumulated
        self.skipped = 0  # rows left out because they held NaN or Inf

    def add(self, x: torch.Tensor) -> Hessian:
        x = torch.as_tensor(x).detach()
        if not x.is_floating_point():
            raise UnsupportedDtypeError(
                f"{self.name}: calibration inputs must be floating, got {x.dtype}"
            )
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ShapeError(
                f"{self.name}: calibration inputs of shape {tuple(x.shape)} do not end in "
                f"in_features={self.in_features}; pass the layer's inputs (..., {self.in_features})"
            )
        x = x.reshape(-1, self.in_features)
        for i in range(0, x.shape[0], _ROWS):
            c = x[i : i + _ROWS].to(torch.float64)
            ok = torch.isfinite(c).all(dim=1)
            if not bool(ok.all()):
                self.skipped += int((~ok).sum())
                c = c[ok]
            self.xtx.addmm_(c.T, c)
            self.n += c.shape[0]
        return self

    def merge(self, other: Hessian) -> Hessian:
        if not isinstance(other, Hessian) or other.in_features != self.in_features:
            raise ShapeError(
                f"{self.name}: can only merge a Hessian of in_features={self.in_features}, "
                f"got {other!r}"
            )
        self.xtx += other.xtx
        self.n += other.n
        self.skipped += other.skipped
        return self

    def value(self) -> torch.Tensor:
        if self.n == 0:
            raise CalibrationError(
                f"{self.name}: no finite calibration rows ({self.skipped} skipped); "
                "run calibration batches through the layer before GPTQ"
            )
        return self.xtx * (2.0 / self.n)

    def __repr__(self) -> str:
        return (
            f"Hessian({self.name}, in_features={self.in_features}, n={self.n}, "
            f"skipped={self.skipped})"
        )


def hessian_matrix(hessian, in_features: int, name: str) -> torch.Tensor:
    if isinstance(hessian, Hessian):
        hessian = hessian.value()
    h = torch.as_tensor(hessian)
    if tuple(h.shape) != (in_features, in_features):
        raise ShapeError(
            f"{name}: Hessian of shape {tuple(h.shape)} does not match in_features="
            f"{in_features}; accumulate it from this layer's inputs"
        )
    if not h.is_floating_point():
        raise UnsupportedDtypeError(f"{name}: the Hessian must be floating, got {h.dtype}")
    h = h.detach().to(torch.float64, copy=True)
    check_finite(h, f"{name}'s Hessian")
    return h


def _try_inverse_cholesky(h: torch.Tensor, lam: float) -> torch.Tensor | None:
    """U (upper) with U^T U = (H + lam I)^-1, or None if H + lam I is not (numerically) PD.

    With J the flip, H = R R^T for the upper R = J chol(J H J) J, so H^-1 = R^-T R^-1 and
    U = R^-1: one Cholesky and one triangular solve, never H^-1 itself (torch's
    ``cholesky_inverse`` is ~10x slower on CPU and the result is the same factor)."""
    a = h.flip(0, 1).contiguous()
    a.diagonal().add_(lam)
    lo, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0 or not bool(torch.isfinite(lo).all()):
        return None
    if float(lo.diagonal().square().min()) <= PIVOT_TOL * float(a.diagonal().max()):
        return None
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    u = torch.linalg.solve_triangular(lo, eye, upper=False).flip(0, 1)
    return u if bool(torch.isfinite(u).all()) else None


def inverse_cholesky(h: torch.Tensor, damp: float, damp_max: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of (H + lambda I)^-1, lambda = damp * mean(diag H), damp grown x10
    (0 -> 1e-6) until it succeeds; CalibrationError past ``damp_max``."""
    mean_diag = float(h.diagonal().mean())
    rel, tried = damp, []
    while True:
        tried.append(rel)
        u = _try_inverse_cholesky(h, rel * mean_diag)
        if u is not None:
            return u
        rel = rel * 10 if rel > 0 else FIRST_RETRY
        if rel > damp_max:
            raise CalibrationError(
                f"GPTQ on {name}: the Hessian is not positive definite even with damping "
                f"{', '.join(f'{d:g}' for d in tried)} x mean(diag H) (damp_max={damp_max:g}); "
                f"use more calibration rows (at least in_features={h.shape[0]}) or raise damp / "
                "damp_max"
            )
