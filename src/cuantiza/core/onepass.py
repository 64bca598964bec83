"""The one-pass route of round-to-nearest quantization with a MinMax range: the native kernel
``rtn_fused.c`` (``_native.fused``) takes each block row once, while it is in cache, for its
min/max, its scale and zero point and its integers (or their codes, packed), instead of a
min/max pass, ``choose_qparams`` in torch and a quantize pass (and a packing pass).

It applies where it gives exactly what the general path gives and the blocked view is the
tensor itself: a MinMax range (the class itself), a restricted symmetric or an asymmetric scheme
of 1 (asymmetric), 2, 4 or 8 bits, PerChannel(0) or PerGroup(g) along the last axis without
padding, on a C-contiguous float32 tensor the native kernels take (``_native.usable``); packed
codes also need whole bytes per row. Anything else, and a row that is not finite or whose scale
overflows its storage dtype, gives None: the caller's general path then runs (and raises the
typed error). ``ops.quantize_tensor``, ``ops.quantize_tensor_codes`` and ``QTensor.from_float``
try it first; ``tests/unit/test_native_fused.py`` holds it to the general path bit for bit.
"""

from __future__ import annotations

import torch

from ..backends.native import rtn as _native
from ..backends.native import fused as native_fused
from .blocking import Blocking, plan_blocks, rows_to_scale
from .qparams import _MANTISSA_BITS, QParams
from .scheme import PerTensor, QScheme
from .range_specs import MinMax

BITS = (1, 2, 4, 8)            # widths the kernel writes (packed: 1, 2, 4; one byte: 8 and any q)
_KIND_BITS = {"q": 0, "codes": 8}                                # "packed": the scheme's width


def plan(xf: torch.Tensor, scheme: QScheme, spec, kind: str) -> Blocking | None:
    """The blocking if the fused pass applies to ``xf`` for ``kind`` ("q": integers, "codes":
    8-bit codes q - qmin, "packed": sub-8-bit codes packed), else None."""
    if type(spec) is not MinMax or scheme.binary or scheme.full_range or scheme.bits not in BITS:
        return None
    if isinstance(scheme.granularity, PerTensor) or not _native.usable(xf):
        return None
    b = plan_blocks(tuple(xf.shape), scheme.granularity)
    if b.pad or list(b.perm) != sorted(b.perm):                  # not a view of x's own order
        return None
    if kind == "packed" and (scheme.bits == 8 or b.block_len * scheme.bits % 8):
        return None
    return b


def quantize(xf: torch.Tensor, scheme: QScheme, spec, kind: str):
    """(result, QParams) in one pass, or None (the general path then runs). The result: for
    "q" the integers in x's shape and ``scheme.q_dtype``; for "codes" (8 bits) the codes
    q - qmin, uint8 in x's shape; for "packed" the codes packed at ``scheme.bits`` (flat uint8,
    ``packing.pack``'s layout). The QParams equal ``ops.quantize_tensor_params``'."""
    b = plan(xf, scheme, spec, kind)
    if b is None:
        return None
    dt = scheme.torch_scale_dtype
    got = native_fused.quantize_minmax_rows(
        xf.reshape(b.n_blocks, b.block_len), scheme.qmin, scheme.qmax, scheme.symmetric,
        _MANTISSA_BITS.get(dt, 0), dt, _KIND_BITS.get(kind, scheme.bits),
        scheme.q_dtype if kind == "q" else torch.uint8)
    if got is None:                                              # not finite, or overflow
        return None
    out, s, z = got
    qp = QParams(rows_to_scale(s, b), rows_to_scale(z, b), scheme)
    return (out if kind == "packed" else out.reshape(xf.shape)), qp
