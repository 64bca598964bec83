"""A decoder's small per-token steps in C (``decode.c``, built into the ``_wo`` library):
RMSNorm, and rotary embedding with the key/value cache append. ``llm.runtime`` calls them when
``available()`` and otherwise runs its torch code, which is their reference (the rotary step
equals it bit for bit; RMSNorm is within the bound in ``decode.c``)."""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from .loader import load_library, switched_on


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, i32, p, f32 = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p, ctypes.c_float
    lib.cz_rms_norm.argtypes = [p, p, i64, i64, f32, p]
    lib.cz_rms_norm.restype = None
    lib.cz_rope_append.argtypes = [p, i64, i64, i64, i64, p, p, i64, p, p, i64, p]
    lib.cz_rope_append.restype = i32
    return lib


_LIB: Any = load_library("_wo*.so", _declare)


def available() -> bool:
    return _LIB is not None and switched_on()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x * rsqrt(mean(x^2, -1) + eps)) for contiguous float32 x (rows, n)."""
    out = torch.empty_like(x)
    n = x.shape[-1]
    _LIB.cz_rms_norm(x.data_ptr(), weight.data_ptr(), x.numel() // n, n, eps, out.data_ptr())
    return out


def rope_append(
    qkv: torch.Tensor,
    heads: int,
    kv_heads: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> torch.Tensor:
    """Queries (T, heads, d) rotated for positions pos.., keys rotated and values copied into
    one layer's caches (kv_heads, max_len, d). qkv (T, (heads + 2 kv_heads) d) contiguous
    float32; cos, sin the full (positions, d) tables, contiguous."""
    t = qkv.shape[0]
    max_len, d = k_cache.shape[1], k_cache.shape[2]
    q = torch.empty(t, heads, d)
    rc = _LIB.cz_rope_append(
        qkv.data_ptr(),
        t,
        heads,
        kv_heads,
        d,
        cos.data_ptr(),
        sin.data_ptr(),
        pos,
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        max_len,
        q.data_ptr(),
    )
    if rc:
        raise ValueError(f"positions {pos}..{pos + t} do not fit the cache of {max_len}")
    return q
