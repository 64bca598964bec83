"""The specification of integer execution. Slow and obvious; every fast path is tested
against these functions bit for bit.

A quantized layer sees integers ``x_int = q_x - z_x`` (activations) and ``w_int = q_w - z_w``
(weights). It accumulates exactly in integers, then dequantizes at its exit::

    acc[n, o] = sum_k x_int[n, k] * w_int[o, k]                 (int64 here, must fit int32)
    y[n, o]   = (float32(acc[n, o]) * s_w[o]) * s_x[n] + bias[o]     (float32, left to right)

Three float32 operations in that order (s_x is one scale, or one per row for per-token
activations), so every implementation that gets ``acc`` right gets ``y`` bit for bit.
"""

from __future__ import annotations

import torch

from ..errors import ShapeError

INT32_MAX = 2**31 - 1


def _to_int32(acc: torch.Tensor) -> torch.Tensor:
    if acc.numel() and int(acc.abs().max()) > INT32_MAX:
        raise ShapeError(
            "integer accumulator overflows int32; use fewer bits or split the reduction"
        )
    return acc.to(torch.int32)


def linear_acc(x_int: torch.Tensor, w_int: torch.Tensor) -> torch.Tensor:
    """acc = x_int @ w_int^T in exact integers. x_int (..., K), w_int (O, K) -> int32 (..., O)."""
    return _to_int32(torch.matmul(x_int.to(torch.int64), w_int.to(torch.int64).t()))


def im2col(x: torch.Tensor, kh: int, kw: int, stride, padding, dilation) -> torch.Tensor:
    """Integer im2col. x (N, C, H, W) -> (N, Ho, Wo, C, kh, kw); padding value 0 (= real 0)."""
    ph, pw = padding
    x = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    sh, sw = stride
    dh, dw = dilation
    n, c, h, w = x.shape
    ho = (h - dh * (kh - 1) - 1) // sh + 1
    wo = (w - dw * (kw - 1) - 1) // sw + 1
    st = x.stride()
    return x.as_strided(
        (n, ho, wo, c, kh, kw), (st[0], st[2] * sh, st[3] * sw, st[1], st[2] * dh, st[3] * dw)
    )


def conv2d_acc(
    x_int: torch.Tensor,
    w_int: torch.Tensor,
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
    groups: int = 1,
) -> torch.Tensor:
    """Exact integer 2-D convolution. x_int (N, C, H, W), w_int (O, C/groups, kh, kw)
    -> int32 (N, O, Ho, Wo). Zero padding is the real value 0, i.e. x_int = 0."""
    o, cg, kh, kw = w_int.shape
    if x_int.shape[1] != cg * groups:
        raise ShapeError(f"input has {x_int.shape[1]} channels, weight expects {cg * groups}")
    cols = im2col(x_int.to(torch.int64), kh, kw, stride, padding, dilation)  # (N,Ho,Wo,C,kh,kw)
    n, ho, wo = cols.shape[:3]
    og = o // groups
    outs = []
    for g in range(groups):
        cg_cols = cols[:, :, :, g * cg : (g + 1) * cg].reshape(n, ho, wo, cg * kh * kw)
        wg = w_int[g * og : (g + 1) * og].reshape(og, cg * kh * kw).to(torch.int64)
        outs.append(torch.matmul(cg_cols, wg.t()))  # (N,Ho,Wo,og)
    return _to_int32(torch.cat(outs, dim=-1).permute(0, 3, 1, 2).contiguous())


def dequant_acc(
    acc: torch.Tensor, s_w: torch.Tensor, s_x: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """y = (float32(acc) * s_w) * s_x (+ bias): the layer's exit. s_w, s_x and bias broadcast
    against acc (s_w and bias on the output-channel axis, s_x per tensor or per row).
    A float32 ``acc`` (fresh from a kernel) is consumed: its memory holds the result."""
    y = acc.to(torch.float32)
    if y.requires_grad:  # simulation with autograd: no in-place ops
        y = y * s_w * s_x
        return y + bias if bias is not None else y
    y.mul_(s_w).mul_(s_x)
    return y.add_(bias) if bias is not None else y
