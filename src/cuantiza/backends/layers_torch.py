"""Fast paths for the integer layers; each returns exactly what ``reference`` returns.

* ``f32exact``: the integer products summed by float32 GEMM/conv (MKL / oneDNN). Exact, not
  approximate, when K * max|x_int| * max|w_int| < 2^24: every partial sum is then an integer
  that float32 represents exactly, in any summation order.
* ``int_mm``: int8 x int8 -> int32 with ``torch._int_mm``. Asymmetric uint8 activations are
  shifted into int8 (q - 128) and the shift is put back with the weight row sums::

      sum_k (q - z) w = sum_k (q - 128) w + (128 - z) * sum_k w
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import SYM_CODE_OFFSET
from .layers_reference import im2col

F32_EXACT = 2**24


def f32exact_ok(k: int, x_absmax: int, w_absmax: int) -> bool:
    return k * x_absmax * w_absmax < F32_EXACT


def linear_f32exact(q_x: torch.Tensor, z_x: torch.Tensor, w_int: torch.Tensor) -> torch.Tensor:
    x = q_x.to(torch.float32) - z_x.to(torch.float32)
    return F.linear(x, w_int.to(torch.float32))


def f32split_chunk(x_absmax: int, w_absmax: int) -> int:
    """Longest K slice whose integer dot products float32 holds exactly."""
    return max(1, (F32_EXACT - 1) // max(1, x_absmax * w_absmax))


def linear_f32split(
    q_x: torch.Tensor, z_x: torch.Tensor, w_f32: torch.Tensor, chunk: int
) -> torch.Tensor:
    """f32exact over K slices short enough to be exact, the slices summed in float64 (exact up
    to 2^53): the integer accumulator for any K, at float32 GEMM speed. Returns float64."""
    x = q_x.to(torch.float32) - z_x.to(torch.float32)
    k = x.shape[-1]
    acc = F.linear(x[..., :chunk], w_f32[:, :chunk]).to(torch.float64)
    for k0 in range(chunk, k, chunk):
        acc += F.linear(x[..., k0 : k0 + chunk], w_f32[:, k0 : k0 + chunk])
    return acc


def has_vnni() -> bool:
    """x86 VNNI (AVX-512 or AVX) makes int8 dot products native; without it torch._int_mm is
    slow."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def linear_int_mm(
    q_x: torch.Tensor, z_x: torch.Tensor, w_int8: torch.Tensor, w_rowsum: torch.Tensor
) -> torch.Tensor:
    """q_x (..., K) int8 or uint8; w_int8 (O, K) int8; w_rowsum (O,) int32 = sum_k w."""
    lead = q_x.shape[:-1]
    q2 = q_x.reshape(-1, q_x.shape[-1])  # (M, K)
    if q2.dtype == torch.uint8:
        acc = torch._int_mm((q2.to(torch.int16) - 128).to(torch.int8), w_int8.t())
        shift = 128 - z_x.reshape(-1, 1).to(torch.int32)  # (M or 1, 1)
        acc = acc + shift * w_rowsum
    else:
        acc = torch._int_mm(q2, w_int8.t())
        if bool((z_x != 0).any()):
            acc = acc - z_x.reshape(-1, 1).to(torch.int32) * w_rowsum
    return acc.reshape(*lead, -1)


def conv2d_f32exact(q_x, z_x, w_int, stride, padding, dilation, groups) -> torch.Tensor:
    x = q_x.to(torch.float32) - z_x.to(torch.float32)
    return F.conv2d(x, w_int.to(torch.float32), None, stride, padding, dilation, groups)


def conv2d_int_mm(q_x, z_x, w_int8, w_rowsum, stride, padding, dilation, groups) -> torch.Tensor:
    """im2col in uint8/int8 (padding with the zero point, i.e. real 0), then ``_int_mm``."""
    o, cg, kh, kw = w_int8.shape
    zp = int(z_x)
    ph, pw = padding
    x = F.pad(q_x, (pw, pw, ph, ph), value=zp) if (ph or pw) else q_x
    cols = im2col(x, kh, kw, stride, (0, 0), dilation)  # (N,Ho,Wo,C,kh,kw)
    n, ho, wo = cols.shape[:3]
    og = o // groups
    outs = []
    for g in range(groups):
        cg_cols = cols[:, :, :, g * cg : (g + 1) * cg].reshape(n * ho * wo, cg * kh * kw)
        wg = w_int8[g * og : (g + 1) * og].reshape(og, -1)
        outs.append(linear_int_mm(cg_cols, z_x, wg, w_rowsum[g * og : (g + 1) * og]))
    acc = torch.cat(outs, dim=-1).reshape(n, ho, wo, o)
    return acc.permute(0, 3, 1, 2).contiguous()


def onednn_available() -> bool:
    ops = getattr(torch.ops, "onednn", None)
    return (
        torch.backends.mkldnn.is_available()
        and ops is not None
        and hasattr(ops, "qlinear_prepack")
        and hasattr(ops, "qlinear_pointwise")
    )


class OneDNNWeight:
    """An int8 weight prepacked for oneDNN's u8 x s8 -> s32 GEMM (``onednn::qlinear_pointwise``).

    Exact only for activation codes in [0, 127]: without VNNI, x86 multiplies u8 x s8 pairs with
    ``vpmaddubsw``, which saturates at int16 (255 * 127 * 2 > 32767; 127 * 127 * 2 is not).
    Scales are passed as 1, so the output is float32(acc), rounded as int32 -> float32 is."""

    def __init__(self, w_int8: torch.Tensor):
        o = w_int8.shape[0]
        self.packed = torch.ops.onednn.qlinear_prepack(w_int8.contiguous(), None)
        self.ones = torch.ones(o, dtype=torch.float32)
        self.zeros = torch.zeros(o, dtype=torch.int64)
        self._s_w: tuple = (None, None)  # (the s_w given, its per-channel copy)

    def _scales(self, s_w: torch.Tensor | None) -> torch.Tensor:
        if s_w is None:
            return self.ones
        if self._s_w[0] is not s_w:  # a layer passes the same tensor every call
            self._s_w = (s_w, s_w.reshape(-1).expand(self.ones.shape).contiguous())
        return self._s_w[1]

    def acc(
        self, q_u8: torch.Tensor, zero_point: int, s_w: torch.Tensor | None = None
    ) -> torch.Tensor:
        """float32(sum_k (q - zero_point) w), times s_w per output channel if given (one
        rounding, as float32(acc) * s_w), for q uint8 (M, K) with values <= 127."""
        scales = self._scales(s_w)
        return torch.ops.onednn.qlinear_pointwise(
            q_u8,
            1.0,
            zero_point,
            self.packed,
            scales,
            self.zeros,
            None,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )


def linear_onednn(
    q_x: torch.Tensor, z_x: torch.Tensor, pack: OneDNNWeight, s_w: torch.Tensor | None = None
) -> torch.Tensor:
    """acc (or float32(acc) * s_w, fused into the GEMM's output stage)."""
    lead = q_x.shape[:-1]
    q2 = q_x.reshape(-1, q_x.shape[-1])
    if q2.dtype == torch.int8:  # symmetric codes |q| <= 63: shift into [1, 127]
        acc = pack.acc((q2 + SYM_CODE_OFFSET).view(torch.uint8), SYM_CODE_OFFSET, s_w)
    else:
        acc = pack.acc(q2, int(z_x), s_w)
    return acc.reshape(*lead, -1)
