"""How a granularity cuts a tensor into blocks that share one scale and zero point.

Every granularity maps a tensor to a 2-D *blocked* view ``(n_blocks, block_len)``, one row per
scale, and back. The math in ``qparams`` and ``ops`` works on rows; shapes of user-visible
scales follow the tensor:

* PerTensor:        scale shape ``()``
* PerChannel(a):    scale shape ``(x.shape[a],)``
* PerGroup(g, a):   scale shape ``x.shape`` with dimension ``a`` replaced by
                    ``ceil(x.shape[a] / g)``

>>> import torch
>>> xb, b = to_blocks(torch.arange(10.).reshape(2, 5), PerGroup(2))
>>> xb.shape, b.scale_shape      # (2 rows x 3 groups, group of 2), last group zero padded
(torch.Size([6, 2]), (2, 3))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError, ShapeError
from .scheme import Granularity, PerChannel, PerGroup, PerTensor


@dataclass(frozen=True)
class Blocking:
    shape: tuple  # the tensor's logical shape
    perm: tuple  # permutation applied before reshaping into rows
    n_blocks: int
    block_len: int  # elements per row, padding included
    pad: int  # zeros appended to the last group of each row (PerGroup only)
    scale_shape: tuple  # user-visible shape of scales / zero points
    scale_perm: tuple  # permutation from row-major block order to scale_shape


def _axis(axis: int, ndim: int, what: str) -> int:
    if ndim == 0:
        raise ShapeError(f"{what} needs a tensor with at least one dimension, got a scalar")
    if not -ndim <= axis < ndim:
        raise ConfigError(f"{what} axis {axis} is out of range for a {ndim}-d tensor")
    return axis % ndim


def plan_blocks(shape: tuple, gran: Granularity) -> Blocking:
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    numel = 1
    for s in shape:
        numel *= s
    if isinstance(gran, PerTensor):
        ident = tuple(range(ndim))
        return Blocking(shape, ident, 1, numel, 0, (), ())
    if isinstance(gran, PerChannel):
        a = _axis(gran.axis, ndim, "PerChannel")
        perm = (a,) + tuple(i for i in range(ndim) if i != a)
        c = shape[a]
        return Blocking(shape, perm, c, numel // c if c else 0, 0, (c,), (0,))
    if isinstance(gran, PerGroup):
        a = _axis(gran.axis, ndim, "PerGroup")
        n = shape[a]
        if gran.size > n:
            raise ConfigError(
                f"group size {gran.size} is larger than the {n} elements along axis {gran.axis} "
                f"of shape {shape}; use a smaller group or PerChannel"
            )
        perm = tuple(i for i in range(ndim) if i != a) + (a,)
        groups = -(-n // gran.size)
        pad = groups * gran.size - n
        lead = [shape[i] for i in perm[:-1]]
        rows = 1
        for s in lead:
            rows *= s
        # scales live in the moved order (*lead, groups); put the groups dim back at axis a
        moved_rank = ndim
        scale_perm = tuple(range(a)) + (moved_rank - 1,) + tuple(range(a, moved_rank - 1))
        scale_shape = tuple(shape[i] if i != a else groups for i in range(ndim))
        return Blocking(shape, perm, rows * groups, gran.size, pad, scale_shape, scale_perm)
    raise ConfigError(f"unknown granularity {gran!r}")


def to_blocks(x: torch.Tensor, gran: Granularity) -> tuple[torch.Tensor, Blocking]:
    """View (or copy) ``x`` as ``(n_blocks, block_len)`` rows; zero pads ragged groups."""
    b = plan_blocks(tuple(x.shape), gran)
    if isinstance(gran, PerTensor):
        return x.reshape(1, -1), b
    xm = x.permute(b.perm) if b.perm != tuple(range(x.ndim)) else x
    if isinstance(gran, PerChannel):
        return xm.reshape(b.n_blocks, b.block_len), b
    if b.pad:
        xm = torch.nn.functional.pad(xm, (0, b.pad))  # (*lead, groups * size)
    return xm.reshape(b.n_blocks, b.block_len), b


def from_blocks(xb: torch.Tensor, b: Blocking) -> torch.Tensor:
    """Inverse of :func:`to_blocks`: rows back to the logical shape (padding trimmed)."""
    moved = [b.shape[i] for i in b.perm]
    if b.pad:
        lead = moved[:-1]
        xm = xb.reshape(*lead, moved[-1] + b.pad)[..., : moved[-1]]
    else:
        xm = xb.reshape(moved)
    if b.perm == tuple(range(len(b.shape))):
        return xm
    inv = [0] * len(b.perm)
    for i, p in enumerate(b.perm):
        inv[p] = i
    return xm.permute(inv)


def scale_to_rows(t: torch.Tensor, b: Blocking) -> torch.Tensor:
    """User-visible scale/zero-point layout -> one value per block row, shape (n_blocks,)."""
    if tuple(t.shape) != b.scale_shape:
        raise ShapeError(f"expected scale/zero-point shape {b.scale_shape}, got {tuple(t.shape)}")
    if b.scale_perm and b.scale_perm != tuple(range(len(b.scale_perm))):
        inv = [0] * len(b.scale_perm)
        for i, p in enumerate(b.scale_perm):
            inv[p] = i
        t = t.permute(inv)
    return t.reshape(b.n_blocks)


def rows_to_scale(t: torch.Tensor, b: Blocking) -> torch.Tensor:
    """One value per block row -> the user-visible scale layout."""
    if not b.scale_shape:
        return t.reshape(())
    if len(b.scale_shape) == 1 and b.scale_perm == (0,):
        return t.reshape(b.scale_shape)
    moved = [b.scale_shape[i] for i in range(len(b.scale_shape))]
    # moved order is (*lead, groups): lead dims are shape minus axis, groups last
    a = b.scale_perm.index(len(b.scale_perm) - 1) if b.scale_perm else 0
    lead = [s for i, s in enumerate(moved) if i != a]
    t = t.reshape(*lead, moved[a])
    return t.permute(b.scale_perm).contiguous() if b.scale_perm != tuple(range(len(moved))) else t
