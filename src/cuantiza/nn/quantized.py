"""Quantized modules: integer arithmetic inside, dequantization at the exit.

``QuantLinear`` / ``QuantConv`` run static W*A* layers (activation qparams fixed by calibration)
or weight-only layers (``act=None``: float activations, dequantized weights).
``DynamicQuantLinear`` picks activation qparams from each batch. ``QuantEmbedding`` is
weight-only and dequantizes only the rows it looks up. See ``kernels.reference`` for the math.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import layers as kernels
from ..core.qparams import QParams
from ..core.qtensor import QTensor
from ..core.quantize import quantize, quantize_2d
from ..core.scheme import PerChannel, PerGroup, QScheme
from .layer_math import act_info, dynamic_qparams, exit_scales, fused_rows_ok, int_weight
from .weight_only import WeightOnlyKernel


class _QuantWeight(nn.Module):
    """Holds a QTensor weight, its integer form for the kernels, and an optional float bias."""

    def __init__(self, weight: QTensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight_q = weight
        self.register_buffer(
            "bias", None if bias is None else bias.detach().to(torch.float32).clone()
        )
        self.kernel = "dequantize"  # weight-only: float compute on dequantized weights

    def _choose(
        self, act_scheme: QScheme, prefer: str | None, scalar_zp: bool = True, conv: bool = False
    ):
        """Integer execution: keep w_int (int8, or int16 for asymmetric weights) and pick a
        kernel."""
        self.w_int = int_weight(self.weight_q)
        k = self.weight_q.shape[1]
        self.kernel = kernels.choose(k, act_info(act_scheme, scalar_zp), self.w_int, prefer, conv)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_q.dequantize()

    def extra_repr(self) -> str:
        why = getattr(self, "fallback", None)
        return f"{self.weight_q!r}, kernel={self.kernel}" + (f" ({why})" if why else "")


class QuantLinear(_QuantWeight):
    def __init__(
        self, weight: QTensor, bias=None, act: QParams | None = None, kernel: str | None = None
    ):
        super().__init__(weight, bias)
        self.act = act
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        if act is not None:
            self._choose(act.scheme, kernel)
            self.s_w, self.s_x = exit_scales(weight.qparams), act.scale.to(torch.float32)
        else:  # weight-only: the native kernel, or dequantize + F.linear (``fallback`` says why)
            self.weight_only = WeightOnlyKernel(weight, kernel)
            self.kernel, self.fallback = self.weight_only.name, self.weight_only.reason

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is None:
            if self.weight_only._qt is not self.weight_q:  # the weight was replaced
                self.weight_only = WeightOnlyKernel(self.weight_q, self.kernel)
            return self.weight_only(x, self.bias)
        q_x = quantize(x, self.act)
        return kernels.linear(
            self.kernel, q_x, self.act.zero_point, self.w_int, self.s_w, self.s_x, self.bias
        )


class DynamicQuantLinear(_QuantWeight):
    """Activations quantized per batch (per tensor or per token) from their own min/max."""

    def __init__(
        self,
        weight: QTensor,
        bias=None,
        act_scheme: QScheme | None = None,
        per_token: bool = False,
        kernel: str | None = None,
    ):
        super().__init__(weight, bias)
        self.act_scheme = act_scheme or QScheme(bits=8, symmetric=False)
        self.per_token = per_token
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self._choose(self.act_scheme, kernel, scalar_zp=not per_token)
        self.s_w = exit_scales(weight.qparams)

    def _choose(
        self, act_scheme: QScheme, prefer: str | None, scalar_zp: bool = True, conv: bool = False
    ):
        super()._choose(act_scheme, prefer, scalar_zp, conv)
        # per-token symmetric codes straight into a u8 x s8 GEMM (the native layer, else oneDNN's):
        # the hot path of dynamic transformers, one call per layer instead of the general path's
        # dozens
        self.fused = not scalar_zp and self.kernel == "onednn" and fused_rows_ok(act_scheme)
        self.fallback = None if self.fused else _dynamic_slow_reason(self, act_scheme, scalar_zp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:  # x as it comes, y made in its shape: no reshapes on the hot path
            xf = x if x.dtype == torch.float32 else x.to(torch.float32)
            y = kernels.per_token_linear(
                self.kernel, xf, self.act_scheme.qmax, self.w_int, self.s_w, self.bias
            )
            if y is not None:
                return y
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).to(torch.float32)  # (M, K)
        qp = dynamic_qparams(x2, self.act_scheme, self.per_token)
        q_x = quantize_2d(x2, qp)
        z_x = qp.zero_point.reshape(-1, 1) if self.per_token else qp.zero_point
        s_x = qp.scale.reshape(-1, 1) if self.per_token else qp.scale
        y = kernels.linear(
            self.kernel, q_x, z_x, self.w_int, self.s_w, s_x.to(torch.float32), self.bias
        )
        return y.reshape(*lead, self.out_features)  # -1 is ambiguous for an empty batch


# the change that reaches the fast path, named in the layer's repr and the report
_FAST_DYNAMIC_FIX = (
    "QuantConfig() without an activation (dynamic='auto'), or activation=QScheme(bits=7, "
    "symmetric=True) with dynamic='per_token', runs the native u8 x s8 GEMM"
)


def _dynamic_slow_reason(layer: DynamicQuantLinear, act: QScheme, scalar_zp: bool) -> str:
    """Why a dynamic layer is off the fused per-token GEMM, and the config change that fixes
    it (issue 13: no silent slow paths)."""
    if layer.kernel == "onednn":
        why = "per-tensor activation ranges: quantize, GEMM and exit as separate torch ops"
    elif act.qmax - act.qmin + 1 > 128:
        kind = "symmetric" if act.symmetric else "asymmetric"
        why = (
            f"{act.bits}-bit {kind} activation codes: a u8 x s8 GEMM's int16 pair sums could "
            f"saturate without VNNI, so the exact {layer.kernel} path runs"
        )
    elif not layer.w_int.is_int8:
        why = f"asymmetric weights (int16 w - z): the exact {layer.kernel} path runs"
    elif not scalar_zp and not act.symmetric:
        why = f"per-token zero points: the exact {layer.kernel} path runs"
    else:
        why = f"oneDNN's int8 GEMM is not available here: the exact {layer.kernel} path runs"
    return f"{why}; {_FAST_DYNAMIC_FIX}"


class QuantConv(_QuantWeight):
    """Conv1d / Conv2d. The weight is stored as (O, C/groups * k...) rows."""

    def __init__(
        self,
        weight: QTensor,
        weight_shape: tuple,
        conv: dict,
        bias=None,
        act: QParams | None = None,
        kernel: str | None = None,
    ):
        super().__init__(weight, bias)
        self.weight_shape = tuple(weight_shape)  # (O, C/groups, kh, kw) or (O, C/g, k)
        self.conv = dict(conv)
        self.act = act
        if act is not None:
            self._choose(act.scheme, kernel, conv=True)
            self.s_w, self.s_x = exit_scales(weight.qparams), act.scale.to(torch.float32)
            self.w_int.w = self.w_int.w.reshape(self._shape4d())

    def _shape4d(self) -> tuple:
        s = self.weight_shape
        return s if len(s) == 4 else (s[0], s[1], 1, s[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one_d = self.conv["dims"] == 1
        x4 = x.unsqueeze(2) if one_d else x
        c = self.conv
        if self.act is None:
            w = self.dequantized_weight().reshape(self._shape4d())
            y = F.conv2d(
                x4.to(torch.float32),
                w,
                self.bias,
                c["stride"],
                c["padding"],
                c["dilation"],
                c["groups"],
            )
        else:
            q_x = quantize(x4, self.act)
            acc = kernels.conv2d_acc(
                self.kernel,
                q_x,
                self.act.zero_point,
                self.w_int,
                c["stride"],
                c["padding"],
                c["dilation"],
                c["groups"],
            )
            y = conv_exit(acc, self.s_w, self.s_x, self.bias)
        return y.squeeze(2) if one_d else y


def conv_exit(
    acc: torch.Tensor, s_w: torch.Tensor, s_x: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """dequant_acc with per-output-channel s_w and bias on the channel axis of (N, O, H, W)."""
    shape = (1, -1, 1, 1)
    s_w = s_w.reshape(shape) if s_w.ndim else s_w
    return kernels.dequant_acc(acc, s_w, s_x, None if bias is None else bias.reshape(shape))


class QuantEmbedding(nn.Module):
    """Weight-only embedding; dequantizes just the looked-up rows."""

    def __init__(self, weight: QTensor, padding_idx: int | None = None):
        super().__init__()
        self.weight_q = weight
        self.padding_idx = padding_idx
        self.num_embeddings, self.embedding_dim = weight.shape
        self.codes = weight.int_repr()
        g = weight.scheme.granularity
        self.scale = weight.qparams.scale.to(torch.float32)
        self.zero = weight.qparams.zero_point.to(torch.float32)
        self.group = g.size if isinstance(g, PerGroup) else None
        self.per_row = isinstance(g, (PerChannel, PerGroup))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        q = self.codes[idx].to(torch.float32)  # (..., D)
        if not self.per_row:
            return (q - self.zero) * self.scale
        s, z = self.scale[idx], self.zero[idx]  # (...,) or (..., G)
        if self.group is None:
            s, z = s[..., None], z[..., None]
        else:
            d = self.embedding_dim
            s = s.repeat_interleave(self.group, dim=-1)[..., :d]
            z = z.repeat_interleave(self.group, dim=-1)[..., :d]
        return (q - z) * s

    def extra_repr(self) -> str:
        return repr(self.weight_q)
