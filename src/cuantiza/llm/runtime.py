"""A LLaMA-class decoder that generates: its layers' weights, a key/value cache, and one forward
pass over new tokens at a time.

It computes what transformers' ``LlamaForCausalLM`` computes (RMSNorm in float32, rotary
position embeddings, grouped-query attention with ``scaled_dot_product_attention``, SwiGLU)
with the fewest calls per token: q/k/v are one projection, gate/up another (``Projection``:
one fused weight where the parts share a scheme, else one call each), and the key/value cache is
preallocated. RMSNorm and the rotary step with the cache append run in C where the native
library is built (``backends.native.decode``; the torch code here is their reference), so a
decode step of a layer is about ten torch ops, three C calls and four linear kernels. The
linear kernels are cuantiza's (``backends.weight_only`` for quantized weights, ``F.linear``
for float ones), chosen once when the decoder is built (``runtime_load``).

Shapes: a forward takes T new token ids at positions [pos, pos + T) of one sequence (batch 1);
hidden states are (T, hidden).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backends.native import decode as native_steps
from ..errors import ConfigError, PlanError
from ..nn.weight_only import WeightOnlyKernel


@dataclass(frozen=True)
class DecoderShape:
    """The numbers of a LLaMA-class ``config.json`` that the forward pass needs."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float
    rope_theta: float
    max_positions: int
    eos_token_id: int | None = None

    @classmethod
    def from_config(cls, cfg: dict, where: str = "config.json") -> DecoderShape:
        """From a transformers config dict; PlanError for what this decoder does not run."""
        kind = cfg.get("model_type")
        if kind not in ("llama", "mistral"):
            raise PlanError(
                f"{where}: model_type {kind!r} is not a LLaMA-class decoder "
                "(generate runs model_type 'llama' or 'mistral')"
            )
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise PlanError(f"{where}: rope type {rope.get('rope_type')!r} is not supported")
        if (
            cfg.get("hidden_act", "silu") != "silu"
            or cfg.get("attention_bias")
            or cfg.get("mlp_bias")
        ):
            raise PlanError(f"{where}: only SiLU MLPs without biases are supported")
        heads = int(cfg["num_attention_heads"])
        eos = cfg.get("eos_token_id")
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
            rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            max_positions=int(cfg.get("max_position_embeddings", 2048)),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
        )


Linear = Callable[[torch.Tensor], torch.Tensor]  # (T, in) -> (T, out), float32


class Projection:
    """Linear maps of one input: one fused call whose output is split, or one call per part."""

    def __init__(self, parts: list[Linear], sizes: list[int], fused: bool):
        self.parts, self.sizes, self.fused = parts, sizes, fused

    def __call__(self, h: torch.Tensor) -> list[torch.Tensor]:
        if self.fused:
            return list(self.parts[0](h).split(self.sizes, dim=-1))
        return [p(h) for p in self.parts]


class KernelLinear:
    """A weight-only projection (``nn.weight_only.WeightOnlyKernel``) as a callable; its packed
    weight can also be handed to the native layer steps."""

    def __init__(self, kernel: WeightOnlyKernel):
        self.kernel = kernel

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return self.kernel(h, None)


@dataclass
class Layer:
    attn_norm: torch.Tensor  # (hidden,) float32
    qkv: Projection
    o: Linear
    mlp_norm: torch.Tensor
    gate_up: Projection
    down: Linear


class KVCache:
    """Keys and values of every layer for one sequence of up to ``max_len`` tokens."""

    def __init__(self, shape: DecoderShape, max_len: int):
        size = (shape.num_layers, shape.num_kv_heads, max_len, shape.head_dim)
        self.k = torch.zeros(size, dtype=torch.float32)
        self.v = torch.zeros(size, dtype=torch.float32)
        self.max_len = max_len

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm in float32: w * (x * rsqrt(mean(x^2) + eps))."""
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


class DecoderRuntime:
    """The decoder's weights and its forward pass (see the module docstring)."""

    def __init__(
        self,
        shape: DecoderShape,
        embed: Callable,
        layers: list[Layer],
        norm: torch.Tensor,
        head: Linear,
        kernels: dict[str, str],
    ):
        self.shape, self.embed, self.layers, self.norm, self.head = shape, embed, layers, norm, head
        self.kernels = kernels  # linear name -> kernel, for reports and ``repr``
        d = shape.head_dim
        inv_freq = 1.0 / (
            shape.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)
        )
        freqs = torch.arange(shape.max_positions).float()[:, None] * inv_freq  # (P, d / 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()  # (P, d), as transformers computes them
        self.native_layers = self._native_layers()

    def _native_layers(self) -> native_steps.LayerSteps | None:
        """Whole layers in C for one token, where every projection is fused and on the native
        weight-only kernel (else None: the torch steps run)."""
        if not native_steps.available():
            return None
        packed = []
        for layer in self.layers:
            linears = [layer.qkv.parts[0], layer.o, layer.gate_up.parts[0], layer.down]
            if not (layer.qkv.fused and layer.gate_up.fused):
                return None
            kernels = [lin.kernel if isinstance(lin, KernelLinear) else None for lin in linears]
            natives = [k.native_layer() if k is not None else None for k in kernels]
            if any(n is None for n in natives):
                return None
            packed.append(natives)
        s = self.shape
        dims = {"hidden": s.hidden_size, "heads": s.num_heads, "kv": s.num_kv_heads,
                "d": s.head_dim, "inter": s.intermediate_size, "eps": s.rms_eps,
                "scale": 1.0 / math.sqrt(s.head_dim)}  # fmt: skip
        norms = [
            (layer.attn_norm.contiguous(), layer.mlp_norm.contiguous()) for layer in self.layers
        ]
        return native_steps.LayerSteps(dims, norms, packed, self.cos, self.sin)

    def new_cache(self, max_len: int | None = None) -> KVCache:
        return KVCache(self.shape, max_len or self.shape.max_positions)

    @torch.no_grad()
    def forward(
        self, tokens: torch.Tensor, cache: KVCache, pos: int, all_logits: bool = False
    ) -> torch.Tensor:
        """Logits (T, vocab) for the T token ids at positions [pos, pos + T), or (1, vocab) for
        the last one only; the cache gets their keys and values."""
        t = tokens.numel()
        if pos + t > cache.max_len:
            raise ConfigError(f"{pos + t} tokens do not fit the cache of {cache.max_len}")
        x = self.embed(tokens.reshape(-1)).to(torch.float32)  # (T, hidden)
        cos, sin = self.cos[pos : pos + t, None, :], self.sin[pos : pos + t, None, :]
        if t == 1 and self.native_layers is not None and native_steps.available():
            x = x.contiguous()
            self.native_layers.bind(cache.k, cache.v)
            for i in range(len(self.layers)):
                self.native_layers.step(i, x, pos)  # in place
        else:
            for i, layer in enumerate(self.layers):
                x = self._layer(i, layer, x, cache, pos, cos, sin)
        h = x if all_logits else x[-1:]
        return self.head(rms_norm(h, self.norm, self.shape.rms_eps))

    def _layer(self, i: int, layer: Layer, x, cache: KVCache, pos: int, cos, sin) -> torch.Tensor:
        s = self.shape
        t = x.shape[0]
        native = native_steps.available()
        norm = native_steps.rms_norm if native else rms_norm
        h = norm(x, layer.attn_norm, s.rms_eps)
        if native and layer.qkv.fused:  # rotary and the cache append in one C call
            q = native_steps.rope_append(
                layer.qkv.parts[0](h), s.num_heads, s.num_kv_heads, self.cos, self.sin, pos,
                cache.k[i], cache.v[i],
            )  # fmt: skip
        else:
            q = self._rope_append(i, layer.qkv(h), cache, pos, cos, sin)
        keys, values = cache.k[i, :, : pos + t], cache.v[i, :, : pos + t]  # (kv heads, S, d)
        attn = _attention(q, keys, values, pos, 1.0 / math.sqrt(s.head_dim))  # (T, heads * d)
        x = x + layer.o(attn)
        gate, up = layer.gate_up(norm(x, layer.mlp_norm, s.rms_eps))
        return x + layer.down(F.silu(gate).mul_(up))

    def _rope_append(self, i: int, qkv: list, cache: KVCache, pos: int, cos, sin):
        """The reference of ``native_steps.rope_append``: queries (T, heads, d) rotated, keys
        rotated and values stored into layer i's cache."""
        s = self.shape
        q, k, v = qkv
        t = q.shape[0]
        q = _rotate(q.view(t, s.num_heads, s.head_dim), cos, sin)  # (T, heads, d)
        k = _rotate(k.view(t, s.num_kv_heads, s.head_dim), cos, sin)
        cache.k[i, :, pos : pos + t] = k.transpose(0, 1)
        cache.v[i, :, pos : pos + t] = v.view(t, s.num_kv_heads, s.head_dim).transpose(0, 1)
        return q


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as transformers applies it: x cos + rotate_half(x) sin."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pos: int, scale: float
) -> torch.Tensor:
    """Causal grouped-query attention of q (T, heads, d) at positions [pos, pos + T) over the
    cached keys and values (kv heads, S = pos + T, d); (T, heads * d). Written out (two batched
    matmuls and a softmax) rather than ``scaled_dot_product_attention``, which copies strided
    cache slices and took 8 ms instead of 60 us for one token here."""
    t, heads, d = q.shape
    kv = keys.shape[0]
    qg = q.transpose(0, 1).reshape(kv, heads // kv * t, d)  # (kv, group * T, d)
    scores = torch.matmul(qg, keys.transpose(-1, -2)).mul_(scale)  # (kv, group * T, S)
    if t > 1:  # query i sees keys up to pos + i
        seen = torch.arange(pos + t)[None, :] <= (pos + torch.arange(t))[:, None]  # (T, S)
        scores = scores.view(kv, heads // kv, t, -1).masked_fill_(~seen, -torch.inf).view_as(scores)
    out = torch.matmul(torch.softmax(scores, dim=-1), values)  # (kv, group * T, d)
    return out.view(heads, t, d).transpose(0, 1).reshape(t, heads * d)
