"""GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers", arXiv:2210.17323): round the columns of a weight one
at a time and push each column's rounding error onto the columns not yet rounded, so as to
minimise the layer's output error on calibration inputs X (rows x of shape (in_features,)):

    min over codes  ||X W^T - X W_hat^T||^2 = n/2 sum_rows (w - w_hat) H (w - w_hat)^T,
    H = 2/n X^T X

Algorithm (the paper's, in our own code): dead inputs (H_ii = 0) get w_i = 0 and H_ii = 1;
H + lambda I with lambda = damp * mean(diag H) is inverted through its Cholesky factor and U,
the upper Cholesky factor of the inverse, gives the update of column j's error
e = (w_j - q(w_j)) / U_jj onto the later columns: w_k -= e U_jk. Updates are "lazy-batched":
applied inside a block of ``block_size`` columns at once, then to the rest of the matrix by one
matrix product. Everything runs in float64; the rounding itself is cuantiza's (float32
``round(w / s) + z``, half to even), so a Hessian equal to I gives exactly RTN's codes.

Choices:

* Damping that fails (the Cholesky of H + lambda I breaks down, a pivot^2 falls under
  1e-10 max(diag) -- numerically singular --, or the factor of the inverse is not finite) is
  retried with damp x 10 (damp = 0 is retried at 1e-6) while it stays <= ``damp_max``; beyond
  that ``CalibrationError`` names the layer and the damping tried. U comes from one Cholesky
  of the flipped matrix and a triangular solve (the same factor as chol(inverse), cheaper).
* PerGroup: a group's qparams come from the *updated* weights when the first column of the group is
  reached (the reference implementation's rule). The reference code reads them before the current
  block's own pending updates; we include those, so the result is that of the column-by-column
  algorithm and does not depend on ``block_size``. With ``act_order=True`` (columns in descending
  diag(H) order) groups are "static": qparams from the original weights up front, in natural order,
  so the result keeps the ordinary group layout. PerChannel / PerTensor qparams are always chosen up
  front from the original weights (after zeroing dead columns).
* ``Hessian`` (``hessian.py``) streams X batch by batch into X^T X (float64, in x in memory);
  rows with NaN/Inf are *excluded and counted* (``skipped``), not an error: one bad token must
  not spoil a layer.
"""

from __future__ import annotations

import dataclasses

import torch

from ..backends.torch_rows import round_clamp
from ..core.qparams import QParams
from ..core.qtensor import QTensor
from ..core.quantize import as_float, check_finite, tensor_qparams
from ..core.range_specs import MinMax, RangeSpec
from ..core.scheme import PerChannel, PerGroup, PerTensor, QScheme
from ..errors import ConfigError, ShapeError
from .hessian import Hessian, hessian_matrix, inverse_cholesky


class _ColumnParams:
    """Scales / zero points as float32 (P, out or 1) rows plus column -> row index ``col``;
    for dynamic groups, filled in as the quantizer reaches each group."""

    def __init__(
        self, w: torch.Tensor, scheme: QScheme, range: RangeSpec, name: str, dynamic: bool
    ):
        out, n = w.shape
        g, self.scheme, self.range, self.name, self.dynamic = (
            scheme.granularity,
            scheme,
            range,
            name,
            dynamic,
        )
        if isinstance(g, PerGroup):
            self.size, groups = g.size, -(-n // g.size)
            self.col = torch.arange(n) // g.size
        if dynamic:
            self.scale = torch.empty(out, groups, dtype=scheme.torch_scale_dtype)
            self.zero = torch.zeros(out, groups, dtype=torch.int32)
            self.s, self.z = torch.empty(groups, out), torch.zeros(groups, out)
            self.row_scheme = dataclasses.replace(scheme, granularity=PerChannel(0))
            return
        qp = tensor_qparams(w.to(torch.float32), scheme, range, name)
        self.scale, self.zero = qp.scale, qp.zero_point
        if isinstance(g, PerTensor):
            shape, self.col = (1, 1), torch.zeros(n, dtype=torch.long)
        elif isinstance(g, PerChannel) and g.axis % 2 == 0:
            shape, self.col = (1, out), torch.zeros(n, dtype=torch.long)
        elif isinstance(g, PerChannel):
            shape, self.col = (n, 1), torch.arange(n)
        else:
            shape = None  # (out, groups): one row per group
        rows = (lambda v: v.T) if shape is None else (lambda v: v.reshape(shape))
        self.s = rows(qp.scale.to(torch.float32)).contiguous()
        self.z = rows(qp.zero_point.to(torch.float32)).contiguous()

    def start_group(self, gi: int, cols: torch.Tensor) -> None:
        """qparams of group ``gi`` from its current columns ``cols`` (k, out), zero padded."""
        w = cols.T.to(torch.float32)
        if w.shape[1] < self.size and not self.scheme.binary:  # as the group layout pads
            w = torch.nn.functional.pad(w, (0, self.size - w.shape[1]))
        qp = tensor_qparams(w, self.row_scheme, self.range, self.name)
        self.scale[:, gi], self.zero[:, gi] = qp.scale, qp.zero_point
        self.s[gi], self.z[gi] = qp.scale.to(torch.float32), qp.zero_point.to(torch.float32)

    def qparams(self) -> QParams:
        return QParams(self.scale, self.zero, self.scheme)


def quantize_column(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, scheme: QScheme):
    """cuantiza's rounding of one float64 column: (q, dequantized value in float64)."""
    x = w.to(torch.float32)
    if scheme.binary:
        q = torch.where(x >= 0, 1.0, -1.0)
    else:
        q = round_clamp(x, s, None if scheme.symmetric else z, scheme.qmin, scheme.qmax)
    return q, (q - z).mul_(s).to(torch.float64)


def _group_columns(wt, u, err, i1, i2, j, size):
    """Columns j .. j+size of the fully updated weight (transposed), pending block updates
    included: rows past the block still owe -err[:j-i1] @ U[i1:j, .]."""
    end = min(j + size, wt.shape[0])
    inside = wt[j : min(end, i2)]
    if end <= i2:
        return inside
    beyond = wt[i2:end] - u[i1:j, i2:end].T @ err[: j - i1]
    return torch.cat([inside, beyond])


def _gptq_blocks(
    wt: torch.Tensor, u: torch.Tensor, params: _ColumnParams, block: int
) -> torch.Tensor:
    """The lazy-batch GPTQ loop over wt (in, out) float64, modified in place; codes (in, out)."""
    n, out = wt.shape
    q_all = torch.empty(n, out, dtype=torch.float32)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        err = torch.empty(i2 - i1, out, dtype=torch.float64)
        for j in range(i1, i2):
            if params.dynamic and j % params.size == 0:
                params.start_group(
                    j // params.size, _group_columns(wt, u, err, i1, i2, j, params.size)
                )
            p = int(params.col[j])
            q, dq = quantize_column(wt[j], params.s[p], params.z[p], params.scheme)
            e = (wt[j] - dq).div_(u[j, j])
            q_all[j], err[j - i1] = q, e
            if j + 1 < i2:
                wt[j + 1 : i2].addmm_(u[j, j + 1 : i2, None], e[None], alpha=-1)  # addr_ is slow
        if i2 < n:
            wt[i2:].addmm_(u[i1:i2, i2:].T, err, alpha=-1)
    return q_all


def _check(w: torch.Tensor, scheme: QScheme, damp, damp_max, block_size, name: str) -> None:
    if w.ndim != 2:
        raise ShapeError(
            f"{name}: GPTQ needs a 2-D weight (out_features, in_features), got {tuple(w.shape)}; "
            "reshape convolution weights to (out, in * kh * kw) first"
        )
    g = scheme.granularity
    if isinstance(g, PerGroup) and g.axis % 2 != 1:
        raise ConfigError(f"{name}: GPTQ groups run along in_features; use PerGroup(size, axis=-1)")
    if not (0 <= damp <= damp_max):
        raise ConfigError(
            f"{name}: GPTQ needs 0 <= damp <= damp_max, got damp={damp}, damp_max={damp_max}"
        )
    if not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"{name}: block_size must be a positive integer, got {block_size!r}")


def gptq(
    w: torch.Tensor,
    hessian,
    scheme: QScheme,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    damp_max: float = 1.0,
    range: RangeSpec = MinMax(),
    name: str = "weight",
) -> QTensor:
    """GPTQ-quantize ``w`` (out, in) given ``hessian`` (a ``Hessian`` or an (in, in) matrix).
    Returns an ordinary QTensor of ``scheme``; ``w`` is not modified. See the module docstring."""
    wf = as_float(w, name)
    _check(wf, scheme, damp, damp_max, block_size, name)
    check_finite(wf, name)
    h = hessian_matrix(hessian, wf.shape[1], name)
    dead = h.diagonal() == 0
    h.diagonal()[dead] = 1.0
    w64 = wf.to(torch.float64)
    w64[:, dead] = 0.0
    dynamic = isinstance(scheme.granularity, PerGroup) and not act_order
    params = _ColumnParams(w64, scheme, range, name, dynamic)
    if act_order:
        perm = torch.argsort(h.diagonal(), descending=True, stable=True)
        w64, h, params.col = w64[:, perm], h[perm][:, perm], params.col[perm]
    u = inverse_cholesky(h, damp, damp_max, name)
    q = _gptq_blocks(w64.T.contiguous(), u, params, block_size).T
    if act_order:
        q = q[:, torch.argsort(perm)]
    return QTensor.from_int(q.to(scheme.q_dtype), params.qparams())


__all__ = ["Hessian", "gptq", "inverse_cholesky", "quantize_column"]
