"""One dispatch table for integer layers. ``reference`` is the specification; every entry
here is tested against it bit for bit (tests/unit/test_kernels.py).

A kernel is chosen once, when a quantized module is built, from what is known then: the
reduction length K, the activation scheme (levels, symmetric or one zero point per batch) and
the weight (int8 or wider, largest |w_int|). ``choose`` returns the first entry of ``TABLE``
whose condition makes it exact; the name is kept on the module and shown in reports.

Measured on this project's 2-core AVX2 machine (benchmarks/RESULTS.md): oneDNN's u8 x s8 GEMM
is the fast one; ``torch._int_mm`` is 20-40x slower than float32 without VNNI, so it ranks first
only on CPUs with VNNI (``int_mm_vnni``); elsewhere ``f32split`` (exact float32 K slices)
runs every layer that the faster paths cannot. ``int_mm`` stays selectable with ``prefer``.
Dynamic per-token layers on ``onednn`` run the whole layer from float input in one step
(``per_token_linear``: the native per-token GEMM where it is built, quantize, GEMM and exit in
one C call, faster than oneDNN's GEMM alone at transformer shapes; else torch ops around
oneDNN's GEMM); its output is this table's, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..constants import SYM_CODE_OFFSET
from . import layers_reference as reference
from . import layers_torch as fast
from . import row_kernels
from .native import linear as native_linear


@dataclass
class IntWeight:
    """A layer's integer weight w_int = q - z (int8, or int16 for asymmetric weights), its row
    sums, its largest magnitude, and kernel-specific packings made on first use."""

    w: torch.Tensor
    rowsum: torch.Tensor
    absmax: int
    packs: dict = field(default_factory=dict)

    @property
    def is_int8(self) -> bool:
        return self.w.dtype == torch.int8

    def f32(self) -> torch.Tensor:
        if "f32" not in self.packs:
            self.packs["f32"] = self.w.reshape(self.w.shape[0], -1).to(torch.float32)
        return self.packs["f32"]

    def onednn(self) -> fast.OneDNNWeight:
        if "onednn" not in self.packs:
            self.packs["onednn"] = fast.OneDNNWeight(self.w.reshape(self.w.shape[0], -1))
        return self.packs["onednn"]

    def native_linear(self, act_qmax: int) -> native_linear.NativeLinear | None:
        """The weight packed for the native per-token layer (quantize, GEMM and exit in one C
        call, ``_native.linear``), or None where that does not apply (not built or disabled, or
        not exact). The shape check and the packing are done once; ``CUANTIZA_NATIVE`` is read
        at every call."""
        if not native_linear.enabled():
            return None
        key = ("native", act_qmax)
        if key not in self.packs:
            w2 = self.w.reshape(self.w.shape[0], -1)
            self.packs[key] = (
                native_linear.NativeLinear(w2, act_qmax)
                if native_linear.supports(w2, act_qmax)
                else None
            )
        return self.packs[key]


@dataclass(frozen=True)
class ActInfo:
    levels: int  # qmax - qmin + 1 of the activation scheme
    symmetric: bool
    scalar_zp: bool  # one zero point for the whole batch (per-tensor ranges)

    @property
    def absmax(self) -> int:
        return self.levels - 1


def _onednn_ok(k, a: ActInfo, w: IntWeight) -> bool:
    return (
        fast.onednn_available() and w.is_int8 and a.levels <= 128 and (a.symmetric or a.scalar_zp)
    )


# name -> condition(k, act, weight) under which the kernel is exact; first match wins
_VNNI = fast.has_vnni()

TABLE = {
    "onednn": _onednn_ok,
    "f32exact": lambda k, a, w: fast.f32exact_ok(k, a.absmax, w.absmax),
    "int_mm_vnni": lambda k, a, w: (
        _VNNI and w.is_int8 and a.absmax <= 255
    ),  # int_mm where it is fast
    "f32split": lambda k, a, w: True,
    "int_mm": lambda k, a, w: w.is_int8 and a.absmax <= 255,
    "reference": lambda k, a, w: True,
}
CONV = ("f32exact", "int_mm", "reference")  # conv runs as im2col; oneDNN's conv is not wired
LINEAR = ("onednn", "f32exact", "int_mm_vnni", "f32split", "int_mm", "reference")


def choose(
    k: int, act: ActInfo, w: IntWeight, prefer: str | None = None, conv: bool = False
) -> str:
    """Kernel name for a layer; ``prefer`` forces one (tests, benchmarks) if it is exact here."""
    names = CONV if conv else LINEAR
    if prefer is not None:
        if prefer not in names or not TABLE[prefer](k, act, w):
            raise ValueError(f"kernel {prefer!r} cannot run this layer exactly")
        return prefer
    return next(n for n in names if TABLE[n](k, act, w))


def linear_acc(kernel: str, q_x: torch.Tensor, z_x: torch.Tensor, w: IntWeight) -> torch.Tensor:
    """acc = sum_k (q_x - z_x) w_int, exact (int32, or integer-valued float32)."""
    if kernel == "onednn":
        return fast.linear_onednn(q_x, z_x, w.onednn())
    if kernel == "f32exact":
        return fast.linear_f32exact(q_x, z_x, w.w)
    if kernel == "f32split":
        # |q_x - z_x| <= 255 for every activation scheme of 8 bits or fewer
        return fast.linear_f32split(q_x, z_x, w.f32(), fast.f32split_chunk(255, w.absmax))
    if kernel in ("int_mm", "int_mm_vnni"):
        return fast.linear_int_mm(q_x, z_x, w.w, w.rowsum)
    return reference.linear_acc(q_x.to(torch.int64) - z_x.to(torch.int64), w.w)


def linear(
    kernel: str,
    q_x: torch.Tensor,
    z_x: torch.Tensor,
    w: IntWeight,
    s_w: torch.Tensor,
    s_x: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """The whole integer layer after activation quantization: acc, then the exit
    (float32(acc) * s_w) * s_x + bias. oneDNN applies s_w in its GEMM's output stage (the same
    single rounding), which saves a pass over the output."""
    if kernel == "onednn":
        y = fast.linear_onednn(q_x, z_x, w.onednn(), s_w)
        y.mul_(s_x)
        return y.add_(bias) if bias is not None else y
    return dequant_acc(linear_acc(kernel, q_x, z_x, w), s_w, s_x, bias)


def conv2d_acc(kernel: str, q_x, z_x, w: IntWeight, stride, padding, dilation, groups):
    if kernel == "f32exact":
        return fast.conv2d_f32exact(q_x, z_x, w.w, stride, padding, dilation, groups)
    if kernel == "int_mm" and z_x.numel() == 1:
        return fast.conv2d_int_mm(q_x, z_x, w.w, w.rowsum, stride, padding, dilation, groups)
    return reference.conv2d_acc(
        q_x.to(torch.int64) - z_x.to(torch.int64), w.w, stride, padding, dilation, groups
    )


def per_token_linear(
    kernel: str,
    x2: torch.Tensor,
    act_qmax: int,
    w: IntWeight,
    s_w: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor | None:
    """The whole dynamic layer for symmetric per-token activation codes (restricted range,
    float32 scales, ``act_qmax`` <= 63) on the ``onednn`` kernel, from float32 x (..., K), one
    token a row: codes, GEMM and exit (acc * s_w) * s_x + bias, y (..., N). Bit for bit
    ``linear``'s result after the general activation quantization; None where that path must
    run instead (another kernel, or a row that is not finite, for which it raises the typed
    error)."""
    if kernel != "onednn":
        return None
    native = w.native_linear(act_qmax)
    if native is not None:
        return native.forward(x2, s_w, bias)
    lead, x2 = x2.shape[:-1], x2.reshape(-1, x2.shape[-1])
    got = row_kernels(x2).quantize_absmax_rows(x2, act_qmax, SYM_CODE_OFFSET, torch.uint8)
    if got is None:
        return None
    q_u8, s_x = got
    y = w.onednn().acc(q_u8, SYM_CODE_OFFSET, s_w).mul_(s_x)
    y = y.add_(bias) if bias is not None else y
    return y.reshape(*lead, y.shape[-1])  # -1 is ambiguous for an empty batch


# Weight-only layers (float activations): the native kernel where it takes the layer, else the
# reference (dequantize the whole weight, then F.linear), on every call.
WEIGHT_ONLY = ("native_wo", "dequantize")


def choose_weight_only(
    native_refusal: str | None, prefer: str | None = None
) -> tuple[str, str | None]:
    """(kernel, why the reference) for a weight-only layer: ``native_refusal`` is the native
    kernel's reason for refusing the layer (None: it takes it). ``prefer`` forces one."""
    if prefer not in (None, *WEIGHT_ONLY):
        raise ValueError(f"weight-only kernels are {WEIGHT_ONLY}, not {prefer!r}")
    if prefer == "dequantize":
        return "dequantize", "asked for"
    if native_refusal is not None:
        if prefer == "native_wo":
            raise ValueError(f"kernel 'native_wo' cannot run this layer: {native_refusal}")
        return "dequantize", native_refusal
    return "native_wo", None


dequant_acc = reference.dequant_acc
