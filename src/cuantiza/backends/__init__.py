"""Every kernel of cuantiza, and the one place where each is chosen.

Two families, each with a torch reference and native C kernels held to it bit for bit:

* **Row kernels**: the passes of the numeric core over a blocked tensor ``(n, L)``, one scale
  and zero point per row (``core.blocking``): ``minmax_rows``, ``quantize_rows``,
  ``quantize_absmax_rows`` (``torch_rows`` / ``native.rtn``), ``pack_codes`` /
  ``unpack_codes`` (``torch_packing`` / ``native.rtn``) and the one-pass MinMax quantizer
  (``native.fused``, whose reference is the composition of the others). The functions below
  return the module (or function) to call; the core never tests for a native library itself.
* **Integer layer kernels** (``layers``): the integer part of quantized Linear and Conv layers,
  acc = sum_k (q_x - z_x) w_int, from one table of kernels that are exact for the layer
  (reference, oneDNN, float32-exact, int_mm, the native per-token GEMM).

Native C runs where its library is built (``setup.py``), not switched off by
``CUANTIZA_NATIVE=0``, and the input is one it takes (``native.rtn.usable``: a contiguous
float32 CPU tensor without gradient and large enough to pay for the call); torch otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch

from . import torch_packing, torch_rows
from .native import fused as native_fused
from .native import rtn as native_rtn


def row_kernels(x: torch.Tensor) -> ModuleType:
    """The row kernels for ``x``: ``native.rtn`` where it takes x, else ``torch_rows``. Both
    have ``minmax_rows``, ``quantize_rows`` and ``quantize_absmax_rows`` with one signature."""
    return native_rtn if native_rtn.usable(x) else torch_rows


def pack_kernels(flat: torch.Tensor, bits: int, offset: int) -> ModuleType:
    """The packing kernel for these codes: ``native.rtn`` (1, 2, 4, 8 bits, large int8/uint8)
    or ``torch_packing``; both have ``pack_codes(flat, bits, offset) -> (bytes, lo, hi)``."""
    return native_rtn if native_rtn.packable(flat, bits, offset) else torch_packing


def unpack_kernels(packed: torch.Tensor, bits: int) -> ModuleType:
    """The unpacking kernel: ``torch_packing`` (no native one yet)."""
    return torch_packing


def onepass_kernel(x: torch.Tensor) -> Callable | None:
    """``native.fused.quantize_minmax_rows`` where the native kernels take ``x``, else None
    (the core then runs min/max, choose_qparams and quantize as separate passes)."""
    return native_fused.quantize_minmax_rows if native_rtn.usable(x) else None
