"""The one-pass route of round-to-nearest quantization with a MinMax range: the native kernel
``rtn_fused.c`` (``backends.native.fused``) takes each block row once, while it is in cache, for its
min/max, its scale and zero point and its integers (or their codes, packed), instead of a
min/max pass, ``choose_qparams`` in torch and a quantize pass (and a packing pass).

It applies where it gives exactly what the general path gives and the blocked view is the tensor
itself: a MinMax range (the class itself), a restricted symmetric or an asymmetric scheme of 1
(asymmetric), 2, 4 or 8 bits, PerChannel(0) or PerGroup(g) along the last axis without padding, on a
C-contiguous float32 tensor the native kernels take (``backends.onepass_kernel``); packed codes also
need whole bytes per row. Anything else, and a row that is not finite or whose scale overflows its
storage dtype, gives None: the caller's general path then runs (and raises the typed error).
``quantize.quantize_tensor``, ``quantize.quantize_tensor_codes`` and ``QTensor.from_float`` try it
first; tests hold it to the general path bit for bit.
"""

from __future__ import annotations

import enum

import torch

from .. import backends
from .blocking import Blocking, plan_blocks, rows_to_scale
from .qparams import MANTISSA_BITS, QParams, grid_is_finite
from .range_specs import MinMax
from .scheme import PerTensor, QScheme

BITS = (1, 2, 4, 8)  # widths the kernel writes (packed: 1, 2, 4; one byte: 8 and any q)


class Form(enum.Enum):
    """What a quantize pass writes."""

    INTEGERS = "integers"  # q in x's shape, scheme.q_dtype
    CODES = "codes"  # the codes q - qmin of an 8-bit scheme, uint8 in x's shape
    PACKED = "packed"  # sub-8-bit codes packed at scheme.bits (``core.packing``), flat


def plan(xf: torch.Tensor, scheme: QScheme, spec, form: Form) -> Blocking | None:
    """The blocking if the one-pass kernel applies to ``xf`` for ``form``, else None."""
    if type(spec) is not MinMax or scheme.binary or scheme.full_range or scheme.bits not in BITS:
        return None
    if isinstance(scheme.granularity, PerTensor):
        return None
    b = plan_blocks(tuple(xf.shape), scheme.granularity)
    if b.pad or list(b.perm) != sorted(b.perm):  # not a view of x's own order
        return None
    if form is Form.PACKED and (scheme.bits == 8 or b.block_len * scheme.bits % 8):
        return None
    return b


def quantize(xf: torch.Tensor, scheme: QScheme, spec, form: Form):
    """(result, QParams) in one pass, or None (the general path then runs): the result in
    ``form`` (see ``Form``); the QParams equal ``quantize.quantize_tensor_params``'."""
    b = plan(xf, scheme, spec, form)
    kernel = None if b is None else backends.onepass_kernel(xf)
    if b is None or kernel is None:
        return None
    dt = scheme.torch_scale_dtype
    width = {Form.INTEGERS: 0, Form.CODES: 8, Form.PACKED: scheme.bits}[form]
    got = kernel(
        xf.reshape(b.n_blocks, b.block_len),
        scheme.qmin,
        scheme.qmax,
        scheme.symmetric,
        MANTISSA_BITS.get(dt, 0),
        dt,
        width,
        scheme.q_dtype if form is Form.INTEGERS else torch.uint8,
    )
    if got is None:  # not finite, or overflow
        return None
    out, s, z = got
    if not grid_is_finite(s, scheme):  # a range near float32's maximum: the general path's
        return None  # clamp applies (FAULTS 39)
    qp = QParams(rows_to_scale(s, b), rows_to_scale(z, b), scheme)
    return (out if form is Form.PACKED else out.reshape(xf.shape)), qp
