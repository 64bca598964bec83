"""One dispatch table for integer layers. ``reference`` is the specification; every entry
here is tested against it bit for bit (tests/unit/test_kernels.py).

A kernel is chosen once, when a quantized module is built, from what is known then: the
reduction length K, the largest |x_int| the activation scheme allows and the largest |w_int|.
``choose(...)`` returns the first entry of ``TABLE`` whose condition holds; the name is kept on
the module and shown in reports.
"""

from __future__ import annotations

import torch

from . import fast, reference

# name -> condition(k, x_absmax, w_absmax, w_is_int8) under which it is exact; first match wins
TABLE = {
    "f32exact": (lambda k, xa, wa, w8: fast.f32exact_ok(k, xa, wa)),
    "int_mm": (lambda k, xa, wa, w8: w8 and xa <= 255),
    "reference": (lambda k, xa, wa, w8: True),
}


def choose(k: int, x_absmax: int, w_absmax: int, w_is_int8: bool, prefer: str | None = None) -> str:
    """Kernel name for a layer; ``prefer`` forces one (tests, benchmarks) if its condition holds."""
    if prefer is not None:
        if not TABLE[prefer](k, x_absmax, w_absmax, w_is_int8):
            raise ValueError(f"kernel {prefer!r} cannot run this layer exactly")
        return prefer
    return next(name for name, ok in TABLE.items() if ok(k, x_absmax, w_absmax, w_is_int8))


def linear_acc(kernel: str, q_x: torch.Tensor, z_x: torch.Tensor, w_int: torch.Tensor,
               w_rowsum: torch.Tensor) -> torch.Tensor:
    """acc = sum_k (q_x - z_x) w_int, exact (int32 or integer-valued float32)."""
    if kernel == "f32exact":
        return fast.linear_f32exact(q_x, z_x, w_int)
    if kernel == "int_mm":
        return fast.linear_int_mm(q_x, z_x, w_int, w_rowsum)
    return reference.linear_acc(q_x.to(torch.int64) - z_x.to(torch.int64), w_int)


def conv2d_acc(kernel: str, q_x, z_x, w_int, w_rowsum, stride, padding, dilation, groups):
    if kernel == "f32exact":
        return fast.conv2d_f32exact(q_x, z_x, w_int, stride, padding, dilation, groups)
    if kernel == "int_mm" and z_x.numel() == 1:
        return fast.conv2d_int_mm(q_x, z_x, w_int, w_rowsum, stride, padding, dilation, groups)
    return reference.conv2d_acc(q_x.to(torch.int64) - z_x.to(torch.int64), w_int, stride, padding,
                                dilation, groups)


dequant_acc = reference.dequant_acc
