"""Pieces shared by the quantized and the fake-quant modules, so both compute the same thing."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .. import backends
from ..backends.layers import ActInfo, IntWeight
from ..core.blocking import from_blocks, scale_to_rows, to_blocks
from ..core.qparams import QParams, choose_qparams
from ..core.qtensor import QTensor
from ..core.ranges import minmax_rows
from ..core.scheme import PerChannel, QScheme


def conv_args(conv: nn.Module) -> dict:
    """Geometry of a Conv1d/Conv2d as 2-D arguments (Conv1d runs as a 1 x k Conv2d)."""
    two = lambda v: tuple(v) if len(v) == 2 else (1, v[0]) if v is not None else None  # noqa: E731
    pad = conv.padding
    if isinstance(pad, str):
        raise ValueError(f"padding={pad!r} is not supported; give explicit padding")
    if conv.padding_mode != "zeros":
        raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported")
    pad = tuple(pad) if len(pad) == 2 else (0, pad[0])
    return {
        "stride": two(conv.stride),
        "padding": pad,
        "dilation": two(conv.dilation),
        "groups": conv.groups,
        "dims": conv.weight.ndim - 2,
    }


def weight_2d(w: torch.Tensor) -> torch.Tensor:
    """(O, ...) -> (O, K): conv weights are quantized as rows of their reduction."""
    return w.reshape(w.shape[0], -1)


def int_weight(qt: QTensor) -> IntWeight:
    """w_int = q - z (int8 if it fits, else int16), its row sums (int32) and max |w_int|."""
    q = qt.int_repr()
    s = qt.scheme
    if s.symmetric:
        w = q.to(torch.int8)
    else:
        qb, b = to_blocks(q.to(torch.int16), s.granularity)
        w = from_blocks(qb - scale_to_rows(qt.qparams.zero_point, b).to(torch.int16)[:, None], b)
    rowsum = w.reshape(w.shape[0], -1).sum(dim=1, dtype=torch.int32)
    absmax = int(w.abs().max()) if w.numel() else 0
    return IntWeight(w.contiguous(), rowsum, absmax)


def act_info(scheme: QScheme, scalar_zp: bool = True) -> ActInfo:
    """What a kernel needs to know of an activation scheme to be exact."""
    return ActInfo(scheme.qmax - scheme.qmin + 1, scheme.symmetric, scalar_zp)


def exit_scales(qp: QParams) -> torch.Tensor:
    """The weight scales a layer's exit multiplies by, as float32: one per output channel
    (PerChannel(0)) or one for the tensor (PerTensor); integer layers take no other granularity."""
    return qp.scale.to(torch.float32)


def dynamic_qparams(x2d: torch.Tensor, scheme, per_token: bool) -> QParams:
    """Activation qparams from the batch itself: one range per tensor or per row (token)."""
    if per_token:
        lo, hi = minmax_rows(x2d)
        return choose_qparams(lo, hi, scheme_per_row(scheme))
    lo, hi = torch.aminmax(x2d)
    return choose_qparams(lo, hi, scheme)


def fused_rows_ok(scheme: QScheme) -> bool:
    """Schemes ``quantize_sym_rows`` computes exactly: symmetric, restricted, float32 scales."""
    return (
        scheme.symmetric
        and not scheme.binary
        and not scheme.full_range
        and scheme.torch_scale_dtype == torch.float32
    )


def quantize_sym_rows(x2d: torch.Tensor, scheme: QScheme, offset: int = 0):
    """``quantize_2d(x2d, dynamic_qparams(x2d, scheme, per_token=True))`` in one fused pass for
    ``fused_rows_ok`` schemes, plus ``offset`` (codes q + offset as uint8 when offset > 0, which
    is how a u8 GEMM takes them): (codes, scale (M, 1) float32), or None when a row is not
    finite. The row kernel ``backends`` chooses (``quantize_absmax_rows``) states why the codes
    and scales are the general path's."""
    dtype = torch.uint8 if offset else scheme.q_dtype
    return backends.row_kernels(x2d).quantize_absmax_rows(x2d, scheme.qmax, offset, dtype)


def scheme_per_row(scheme: QScheme) -> QScheme:
    return dataclasses.replace(scheme, granularity=PerChannel(0))
