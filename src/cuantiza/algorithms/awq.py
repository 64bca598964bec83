"""AWQ: activation-aware weight quantization (Lin, Tang, Tang, Yang, Dang, Gan, Han 2023,
"AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration",
arXiv:2306.00978). Input channels that see large activations matter more; scaling them up in
the weight (and down in the activation, y = (x / s) (W s)^T is the same function) shrinks their
relative rounding error. The scale is searched, per group of linear layers sharing one input
x (e.g. the q/k/v projections after a norm):

    s(alpha) = m^alpha / sqrt(max(m^alpha) min(m^alpha)),   m = mean|x| per input channel
    loss(alpha) = sum_i ||x W_i^T - (x / s) Q(W_i s)^T||^2,   Q = RTN of ``scheme``

over alpha in {0, 1/grid, ..., (grid-1)/grid}; alpha = 0 (s = 1, plain RTN) is a candidate, so
the result is never worse than RTN on the calibration loss. m is taken relative to its maximum
and m^alpha is clamped at 1e-4 (dead channels get a finite scale); the normalisation centres
s around 1 geometrically. The paper's extra weight-clipping search is not done here (use
``range=MSE()`` for the RTN that follows).

``apply_scales`` folds s into the model as pure tensor functions: 1/s into the op that
produces x (a norm's weight and bias, or the rows and bias of a previous linear) and s into
the columns of the following weights; the float function is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..core.quantize import as_float, check_finite, dequantize, quantize_tensor
from ..core.range_specs import MinMax, RangeSpec
from ..core.scheme import QScheme
from ..errors import CalibrationError, ConfigError, ShapeError

MIN_SCALE = 1e-4  # floor of m^alpha, relative to the largest channel's


def as_weights(weights, in_features: int, name: str) -> list[torch.Tensor]:
    """float32 copies of a list of 2-D weights with ``in_features`` columns (ShapeError else)."""
    if isinstance(weights, torch.Tensor):
        weights = [weights]
    out = []
    for i, w in enumerate(weights):
        wf = as_float(w, f"{name} weight {i}")
        if wf.ndim != 2 or wf.shape[1] != in_features:
            raise ShapeError(
                f"{name}: weight {i} has shape {tuple(wf.shape)}; expected (out, {in_features}) "
                "to match the calibration inputs' last dimension"
            )
        check_finite(wf, f"{name} weight {i}")
        out.append(wf)
    if not out:
        raise ConfigError(
            f"{name}: no weights given; pass the linear layers that read these inputs"
        )
    return out


def _inputs(x: torch.Tensor, name: str) -> torch.Tensor:
    xf = as_float(x, f"{name} inputs")
    if xf.ndim == 0:
        raise ShapeError(f"{name}: calibration inputs must be (..., in_features), got a scalar")
    xf = xf.reshape(-1, xf.shape[-1])
    if xf.shape[0] == 0:
        raise CalibrationError(
            f"{name}: no calibration rows; run calibration data through the model first"
        )
    check_finite(xf, f"{name} inputs")
    return xf


def _loss(x, ys, ws, s, scheme, range, name) -> float:
    """sum_i ||y_i - (x / s) Q(W_i s)^T||^2 in float64."""
    xs = x / s
    total = 0.0
    for y, w in zip(ys, ws, strict=False):
        q, qp = quantize_tensor(w * s, scheme, range=range, name=name)
        d = torch.addmm(y, xs, dequantize(q, qp).T, alpha=-1)  # y - xs Q^T
        total += float(torch.linalg.vector_norm(d, dtype=torch.float64) ** 2)
    return total


def candidate_scales(m: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = m^alpha (m relative to its max, floored at MIN_SCALE), over sqrt(max s * min s)."""
    s = (m / m.max()).pow(alpha).clamp_(min=MIN_SCALE)
    return s / (s.max() * s.min()).sqrt()


def awq_scales(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor] | torch.Tensor,
    scheme: QScheme,
    *,
    grid: int = 20,
    range: RangeSpec = MinMax(),
    name: str = "layer",
) -> torch.Tensor:
    """Per-input-channel scales s (in_features,), float32, minimising the quantized output
    error of ``weights`` (each (out_i, in)) on calibration inputs ``x`` (..., in); see the
    module docstring. Fold them with ``apply_scales`` before quantizing the weights."""
    if not isinstance(grid, int) or grid < 1:
        raise ConfigError(f"{name}: AWQ grid must be a positive integer, got {grid!r}")
    xf = _inputs(x, name)
    ws = as_weights(weights, xf.shape[1], name)
    m = xf.abs().mean(dim=0)
    best = torch.ones(xf.shape[1])
    if not bool(m.max() > 0):
        return best  # all-zero inputs: nothing to weigh
    ys = [xf @ w.T for w in ws]
    best_loss = _loss(xf, ys, ws, best, scheme, range, name)  # alpha = 0: s = 1, RTN
    for alpha in (
        torch.arange(1, grid, dtype=torch.float64) / grid
    ).tolist():  # `range` is shadowed
        s = candidate_scales(m, alpha)
        loss = _loss(xf, ys, ws, s, scheme, range, name)
        if loss < best_loss:
            best, best_loss = s, loss
    return best


class Folded(NamedTuple):
    prev: torch.Tensor  # the producer's weight with 1/s folded in
    prev_bias: torch.Tensor | None  # its bias / s (None if it had none)
    weights: list  # the following weights, columns times s


def _check_scales(s: torch.Tensor, n: int, name: str) -> torch.Tensor:
    s = torch.as_tensor(s)
    if s.ndim != 1 or s.shape[0] != n:
        raise ShapeError(f"{name}: scales of shape {tuple(s.shape)} do not match {n} channels")
    if not bool(torch.isfinite(s).all() & (s != 0).all()):
        raise ConfigError(
            f"{name}: scales must be finite and nonzero; recompute them from finite statistics"
        )
    return s


def apply_scales(
    prev: torch.Tensor,
    weights,
    s: torch.Tensor,
    prev_bias: torch.Tensor | None = None,
    name: str = "layer",
) -> Folded:
    """Fold per-channel scales ``s`` (in,): the producer of x gets 1/s -- a norm's weight
    vector (in,) (and its bias), or a previous linear's weight (in, k) row-wise (and its bias)
    -- and every following weight (out_i, in) gets its columns times s. Pure: inputs are not
    modified; results keep the inputs' dtypes.

    >>> g, w = torch.rand(4) + 0.5, torch.randn(3, 4)
    >>> f = apply_scales(g, [w], torch.tensor([1.0, 2.0, 4.0, 0.5]))
    >>> x = torch.randn(2, 4)
    >>> torch.allclose((x * f.prev) @ f.weights[0].T, (x * g) @ w.T, rtol=1e-5, atol=1e-6)
    True
    """
    prev = torch.as_tensor(prev)
    s = _check_scales(s, prev.shape[0] if prev.ndim else -1, name)
    if prev.ndim not in (1, 2):
        raise ShapeError(
            f"{name}: the previous op's weight must be a norm vector (in,) or a linear "
            f"weight (in, k), got shape {tuple(prev.shape)}"
        )
    s32 = s.to(torch.float32)
    div = s32 if prev.ndim == 1 else s32[:, None]
    new_prev = (prev.to(torch.float32) / div).to(prev.dtype)
    pb = None if prev_bias is None else torch.as_tensor(prev_bias)
    if pb is not None and tuple(pb.shape) != (s.shape[0],):
        raise ShapeError(
            f"{name}: the previous op's bias has shape {tuple(pb.shape)}, expected ({s.shape[0]},)"
        )
    new_bias = None if pb is None else (pb.to(torch.float32) / s32).to(pb.dtype)
    ws = [weights] if isinstance(weights, torch.Tensor) else list(weights)
    for i, w in enumerate(ws):
        if w.ndim != 2 or w.shape[1] != s.shape[0]:
            raise ShapeError(
                f"{name}: weight {i} of shape {tuple(w.shape)} does not have {s.shape[0]} columns"
            )
    return Folded(new_prev, new_bias, [(w.to(torch.float32) * s32).to(w.dtype) for w in ws])
