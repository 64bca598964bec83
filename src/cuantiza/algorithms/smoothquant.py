"""SmoothQuant (Xiao, Lin, Seznec, Wu, Demouth, Han 2022, "SmoothQuant: Accurate and Efficient
Post-Training Quantization for Large Language Models", arXiv:2211.10438), for W8A8: activation
outlier channels make per-tensor activation ranges coarse; moving part of each channel's
magnitude into the weights (y = (x / s) (W s)^T, the same function) balances the two:

    s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha)

with max|X_j| over calibration data (``ActAbsMax``) and max_i over the rows of *all* the
weights that read x (q/k/v together), alpha = 0.5 by default. Channels where either maximum
is 0 (or the activation's is not finite) keep s_j = 1. Fold with ``awq.apply_scales``.

``ActAbsMax`` streams per-channel max|x| over batches of shape (..., C); rows with NaN/Inf are
excluded and counted (``skipped``), as in ``gptq.Hessian``; ``merge`` is exact (a max).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import CalibrationError, ConfigError, ShapeError, UnsupportedDtypeError
from .awq import as_weights


class ActAbsMax:
    """Per-channel max|x| over calibration batches x of shape (..., channels).

    >>> a = ActAbsMax().add(torch.tensor([[1.0, -3.0], [-2.0, 0.5]])); a.value().tolist()
    [2.0, 3.0]
    """

    def __init__(self, channels: int | None = None, name: str = "layer"):
        self.channels, self.name = channels, name
        self.absmax: torch.Tensor | None = None
        self.n = 0  # rows seen (finite)
        self.skipped = 0  # rows left out because they held NaN or Inf

    def add(self, x: torch.Tensor) -> ActAbsMax:
        x = torch.as_tensor(x).detach()
        if not x.is_floating_point():
            raise UnsupportedDtypeError(f"{self.name}: activations must be floating, got {x.dtype}")
        if x.ndim == 0 or (self.channels is not None and x.shape[-1] != self.channels):
            raise ShapeError(
                f"{self.name}: activations of shape {tuple(x.shape)} do not end in "
                f"{self.channels} channels"
            )
        self.channels = x.shape[-1]
        x = x.reshape(-1, self.channels).to(torch.float32)
        ok = torch.isfinite(x).all(dim=1)
        if not bool(ok.all()):
            self.skipped += int((~ok).sum())
            x = x[ok]
        if x.shape[0]:
            m = x.abs().amax(dim=0)
            self.absmax = m if self.absmax is None else torch.maximum(self.absmax, m)
            self.n += x.shape[0]
        return self

    def merge(self, other: ActAbsMax) -> ActAbsMax:
        if not isinstance(other, ActAbsMax) or (
            None not in (self.channels, other.channels) and other.channels != self.channels
        ):
            raise ShapeError(
                f"{self.name}: can only merge an ActAbsMax of {self.channels} channels, got "
                f"{other!r}"
            )
        if other.absmax is not None:
            self.absmax = (
                other.absmax.clone()
                if self.absmax is None
                else torch.maximum(self.absmax, other.absmax)
            )
        self.channels = self.channels or other.channels
        self.n += other.n
        self.skipped += other.skipped
        return self

    def value(self) -> torch.Tensor:
        if self.absmax is None:
            raise CalibrationError(
                f"{self.name}: no finite activation rows ({self.skipped} skipped); "
                "run calibration batches through the model first"
            )
        return self.absmax.clone()

    def __repr__(self) -> str:
        return (
            f"ActAbsMax({self.name}, channels={self.channels}, n={self.n}, skipped={self.skipped})"
        )


def smooth_scales(
    act_absmax,
    weights: Sequence[torch.Tensor] | torch.Tensor,
    alpha: float = 0.5,
    *,
    name: str = "layer",
) -> torch.Tensor:
    """SmoothQuant scales s (in,), float32, from per-channel max|x| (a tensor or an
    ``ActAbsMax``) and the weights (each (out_i, in)) that read x.

    >>> smooth_scales(torch.tensor([4.0, 1.0, 0.0]), [torch.tensor([[1.0, 4.0, 2.0]])]).tolist()
    [2.0, 0.5, 1.0]
    """
    if not 0 <= alpha <= 1:
        raise ConfigError(f"{name}: SmoothQuant alpha must be in [0, 1], got {alpha}")
    a = act_absmax.value() if isinstance(act_absmax, ActAbsMax) else torch.as_tensor(act_absmax)
    if a.ndim != 1:
        raise ShapeError(
            f"{name}: act_absmax must be one value per channel, got shape {tuple(a.shape)}"
        )
    ws = as_weights(weights, a.shape[0], name)
    a = a.detach().to(torch.float64).abs()
    wmax = torch.stack([w.abs().amax(dim=0) for w in ws]).amax(dim=0).to(torch.float64)
    ok = torch.isfinite(a) & (a > 0) & (wmax > 0)
    s = (a.pow(alpha) / wmax.pow(1 - alpha)).to(torch.float32)
    ok &= torch.isfinite(s) & (s > 0)  # over/underflow of float32
    return torch.where(ok, s, torch.ones_like(s))
