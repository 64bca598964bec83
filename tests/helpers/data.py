"""Test data with the cases quantizers get wrong planted in: ties, zeros of both signs,
extremes, all-zero slabs, denormals, rows spanning 70 decades."""

from __future__ import annotations

import numpy as np
import torch


def planted(shape, seed=0) -> np.ndarray:
    """Gaussian with a few planted extremes, zeros, exact ties of small half-integers, and
    an all-zero last slab (all-zero channels and groups)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x[-1] = 0.0
    flat = x.reshape(-1)
    flat[0], flat[1], flat[2] = 7.0, 0.0, -0.0
    flat[3:9] = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5]
    return x


def planted_with_denormals(shape, seed: int) -> torch.Tensor:
    """``planted`` (Gaussian, ties of small half-integers, zeros of both signs, a planted
    extreme, an all-zero last slab) plus denormals."""
    x = planted(shape, seed)
    x.reshape(-1)[9:12] = [1e-40, -3e-39, 1e-45]  # denormals
    return torch.from_numpy(x)


def activation_rows(seed: int) -> torch.Tensor:
    """37 x 160 (enough elements for the native kernels) at scales from 1e-40 to 1e30."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(37, 160, generator=g) * torch.logspace(-40, 30, 37)[:, None]
    x[0] = 0.0  # all-zero row: s = 1
    x[1] = -0.0
    x[2, :] = 1e-44  # denormal range: s clamps to tiny
    x[3, :5] = torch.tensor([3.5, -3.5, 2.5, 0.5, 63.0])  # exact ties of s = 1
    return x
