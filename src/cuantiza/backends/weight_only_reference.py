"""The specification of the weight-only layers' int8-activation decode path (llama.cpp's Q8
blocks over cuantiza's codes). Slow and obvious; ``cz_wo_linear_q8a`` is tested against
``int8_activation_linear`` bit for bit.

Each row of x is cut into blocks of 32 and each block quantized symmetrically to int8::

    d = fl(max_t |x_t| / 127),   q_t = round_half_even(fl(x_t * fl(1 / d))) in [-127, 127]

(d = 0 gives q = 0; a block holding NaN or Inf gets d = NaN, so its row's outputs are NaN).
Against the weight's integers e = c + qmin - z (one group covers whole blocks) every block's dot
product is exact in integers, and the blocks are summed in order, one fused multiply-add each::

    dot_b = sum_t e_t q_t                      (exact: |dot_b| < 2^24)
    acc   = fma(fl(s_g d_b), dot_b, acc)       for b = 0, 1, ..., K / 32 - 1  (one rounding)
    y     = fl(acc + bias)

Against float activations, y carries x's quantization error: |y - x W^T| <= sum_b (d_b / 2)
sum_{t in b} |w_t| plus the float32 rounding of the K / 32 accumulations.
"""

from __future__ import annotations

import torch

BLOCK = 32  # activation values sharing one int8 scale


def quantize_activation_blocks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) float32 -> q (M, K / 32, 32) int8 values (as float32) and d (M, K / 32)."""
    m, k = x.shape
    xb = x.reshape(m, k // BLOCK, BLOCK)
    finite = torch.isfinite(xb).all(-1)
    amax = torch.where(finite, xb.abs().amax(-1), torch.zeros(()))
    d = amax / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros(()))
    q = torch.round(xb * inv[..., None]).clamp_(-127, 127)
    q = torch.where(finite[..., None], q, torch.zeros(()))
    return q, torch.where(finite, d, torch.full((), torch.nan))


def fma_float32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """fl(a b + c) for float32 tensors with a b exact in float64 (|a|, |b| of 24 significant
    bits at most): the float64 sum is made round-to-odd (TwoSum gives its exact error; an
    inexact sum with an even last bit moves one step toward the error), and rounding that to
    float32 is the correctly rounded result (Boldo and Melquiond, 2008). Normal results only."""
    p, acc = a.double() * b.double(), c.double()
    s = p + acc
    bp = s - acc
    err = (p - bp) + (acc - (s - bp))
    even = (s.view(torch.int64) & 1) == 0
    toward = torch.where(err > 0, torch.full((), torch.inf, dtype=torch.float64), -torch.inf)
    s = torch.where((err != 0) & even, torch.nextafter(s, toward), s)
    return s.float()


def int8_activation_linear(
    x: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    off: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y (M, N) by the rule above: x (M, K) float32, codes (N, K) uint8, scale (N, G) float32,
    off = qmin - z (N, G) int32, G = K / group."""
    m, k = x.shape
    n, g = scale.shape
    per_group = k // g // BLOCK
    q, d = quantize_activation_blocks(x.float())
    e = codes.double() + off.double().repeat_interleave(k // g, dim=1)  # (N, K) integers
    acc = torch.zeros(m, n)
    for b in range(k // BLOCK):
        dot = q[:, b].double() @ e[:, b * BLOCK : (b + 1) * BLOCK].T  # exact integers
        sd = scale[:, b // per_group][None, :] * d[:, b][:, None]  # fl(s d), float32
        acc = fma_float32(sd, dot.float(), acc)
    return acc if bias is None else acc + bias.float()
