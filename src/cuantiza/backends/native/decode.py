"""A decoder's per-token steps in C (``decode.c``, built into the ``_wo`` library): RMSNorm,
rotary embedding with the key/value cache append, and whole layers for one token
(``LayerSteps``). ``llm.runtime`` calls them when ``available()`` and otherwise runs its torch
code, which is their reference (the rotary step equals it bit for bit; RMSNorm and the layer are
within the tolerances ``decode.c`` states)."""

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
    lib.cz_decode_scratch.argtypes = [i64] * 6
    lib.cz_decode_scratch.restype = i64
    lib.cz_decode_layer.argtypes = [p, p, i64, p, p, p, p, i32]
    lib.cz_decode_layer.restype = i32
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


class _Layer(ctypes.Structure):
    """decode.c's cz_layer: one decoder layer's shape, weights and cache, for cz_decode_layer."""

    _fields_ = [
        ("hidden", ctypes.c_int64),
        ("heads", ctypes.c_int64),
        ("kv", ctypes.c_int64),
        ("d", ctypes.c_int64),
        ("inter", ctypes.c_int64),
        ("max_len", ctypes.c_int64),
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("attn_norm", ctypes.c_void_p),
        ("mlp_norm", ctypes.c_void_p),
        ("proj", ctypes.c_void_p * 4),
        ("int8", ctypes.c_int32 * 4),
        ("k_cache", ctypes.c_void_p),
        ("v_cache", ctypes.c_void_p),
    ]


class LayerSteps:
    """Whole decoder layers for one token in C (``cz_decode_layer``): RMSNorm, the fused q/k/v
    projection, rotary and the cache append, attention, the output projection, RMSNorm, the
    fused gate/up projection, SwiGLU, the down projection and both residual additions.

    ``projections``: per layer the four packed weights (``weight_only.WeightOnlyLinear``) of
    q+k+v, o, gate+up and down. The caller keeps ``norms``, ``projections``, ``cos`` and
    ``sin`` alive for as long as this object (their memory is read by C)."""

    def __init__(self, dims: dict, norms: list, projections: list, cos, sin):
        self.dims, self.cos, self.sin = dims, cos, sin
        self._keep = (norms, projections)
        self.layers = []
        for (attn_norm, mlp_norm), projs in zip(norms, projections, strict=True):
            lay = _Layer(**{k: dims[k] for k in ("hidden", "heads", "kv", "d", "inter")})
            lay.eps, lay.scale = dims["eps"], dims["scale"]
            lay.attn_norm, lay.mlp_norm = attn_norm.data_ptr(), mlp_norm.data_ptr()
            lay.proj = (ctypes.c_void_p * 4)(*(p.packed.data_ptr() for p in projs))
            lay.int8 = (ctypes.c_int32 * 4)(*(int(p.int8_decode) for p in projs))
            self.layers.append(lay)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._scratch = torch.empty(0)
        inter = dims["inter"]
        self._q8 = torch.empty(inter + inter // 4 + 64, dtype=torch.uint8)

    def bind(self, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
        """Point every layer at its slice of a cache (layers, kv, max_len, d)."""
        if self._cache is not None and self._cache[0] is k_cache and self._cache[1] is v_cache:
            return
        max_len = k_cache.shape[2]
        for i, lay in enumerate(self.layers):
            lay.k_cache, lay.v_cache = k_cache[i].data_ptr(), v_cache[i].data_ptr()
            lay.max_len = max_len
        d = self.dims
        n = _LIB.cz_decode_scratch(d["hidden"], d["heads"], d["kv"], d["d"], d["inter"], max_len)
        self._scratch = torch.empty(n)
        self._cache = (k_cache, v_cache)

    def step(self, i: int, x: torch.Tensor, pos: int) -> None:
        """x (1, hidden) float32, contiguous <- layer i applied to the token at pos."""
        rc = _LIB.cz_decode_layer(
            ctypes.addressof(self.layers[i]),
            x.data_ptr(),
            pos,
            self.cos.data_ptr(),
            self.sin.data_ptr(),
            self._scratch.data_ptr(),
            self._q8.data_ptr(),
            torch.get_num_threads(),
        )
        if rc:
            raise RuntimeError(f"cz_decode_layer failed ({rc}) in layer {i} at position {pos}")
