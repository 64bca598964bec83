"""quantize, dequantize, fake_quantize and quantize_tensor: the core maps, over tensors.

    q     = clamp(round(x / s) + z, qmin, qmax)      # round half to even (ONNX QuantizeLinear)
    x_hat = s (q - z)                                # float32: (q - z) is exact, one rounding

Binary (1-bit symmetric): q = +1 if x >= 0 else -1, x_hat = s q.
``x / s`` is a true IEEE division (not x * (1/s)), so any implementation of the formula in
float32 gets the same integers; ``tests/reference.py`` is one, in NumPy.

fake_quantize(x) = dequantize(quantize(x)) in the forward pass; its gradient is the
straight-through estimator: 1 where round(x / s) + z lies inside [qmin, qmax], else 0
(binary: where |x| <= s, as BinaryConnect's hard-tanh).

>>> q, qp = quantize_tensor(torch.tensor([-1.0, 0.0, 0.5, 2.0]), QScheme(bits=4))
>>> q.tolist()                 # s = 2/7 in float32; -1 / s = -3.4999998 rounds to -3
[-3, 0, 2, 7]
"""

from __future__ import annotations

import math

import torch

from .. import backends
from ..backends.torch_rows import round_shift
from ..errors import ConfigError, NonFiniteError, UnsupportedDtypeError
from . import onepass
from .blocking import Blocking, from_blocks, rows_to_scale, scale_to_rows, to_blocks
from .onepass import Form
from .qparams import QParams, choose_qparams
from .range_specs import MinMax, RangeSpec
from .scheme import QScheme


def as_float(x: torch.Tensor, name: str = "tensor") -> torch.Tensor:
    """float32 view/copy of a real floating tensor (bf16/fp16 upcast); typed error otherwise."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.is_complex():
        raise UnsupportedDtypeError(
            f"{name} is complex ({x.dtype}); quantize its real and imaginary parts separately"
        )
    if not x.is_floating_point():
        raise UnsupportedDtypeError(
            f"{name} has dtype {x.dtype}; only floating tensors are quantized"
        )
    if x.device.type == "meta":
        raise UnsupportedDtypeError(
            f"{name} is on the meta device (no data); load or materialize it first"
        )
    return x.detach().to(torch.float32)


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN or +-Inf in t, from amin and amax (NaN propagates through both): two reductions
    without the tensor-sized temporary of ``isfinite``."""
    return t.numel() == 0 or (math.isfinite(float(t.amin())) and math.isfinite(float(t.amax())))


def check_finite(x: torch.Tensor, name: str = "tensor") -> None:
    """NonFiniteError naming the tensor and counting NaN and ±Inf values. NaN propagates
    through min/max and ±Inf shows there, so ``_all_finite`` decides, without ``isfinite``'s
    tensor-sized temporaries; the counts only run when something is wrong."""
    if x.numel() == 0 or not (x.is_floating_point() or x.is_complex()):
        return
    if not x.is_complex() and _all_finite(x):
        return
    if bool(torch.isfinite(x).all()):
        return
    n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    raise NonFiniteError(
        f"{name} has {n_nan} NaN and {n_inf} Inf values out of {x.numel()}; "
        "fix the checkpoint (or exclude this tensor) before quantizing"
    )


def _rows_params(qp: QParams, b: Blocking) -> tuple[torch.Tensor, torch.Tensor]:
    s = scale_to_rows(qp.scale, b).to(torch.float32)[:, None]
    z = scale_to_rows(qp.zero_point, b).to(torch.float32)[:, None]
    return s, z


def _quantize_blocks(
    xb: torch.Tensor, s: torch.Tensor, z: torch.Tensor, scheme: QScheme
) -> torch.Tensor:
    """q = clamp(round(x / s) + z, qmin, qmax) for rows xb (n, L) with s, z of shape (n, 1),
    by the row kernel ``backends`` chooses; binary: q = +1 where x >= 0, else -1."""
    if scheme.binary:
        return (xb >= 0).to(torch.int8).mul_(2).sub_(1)
    xb = xb.detach()  # integers carry no gradient
    return backends.row_kernels(xb).quantize_rows(
        xb, s, z, scheme.qmin, scheme.qmax, scheme.symmetric, scheme.q_dtype
    )


def _quantize_codes(
    xb: torch.Tensor, s: torch.Tensor, z: torch.Tensor, scheme: QScheme
) -> torch.Tensor:
    """The stored codes q - qmin of an 8-bit scheme, uint8, in the quantize pass itself:
    clamp(round(x / s) + z, qmin, qmax) - qmin = clamp(round(x / s) + (z - qmin), 0, qmax - qmin),
    every step exact for these small integers in float32."""
    xb = xb.detach()
    return backends.row_kernels(xb).quantize_rows(
        xb, s, z - scheme.qmin, 0, scheme.qmax - scheme.qmin, False, torch.uint8
    )


def quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Integers q in x's shape: int8 for symmetric schemes, uint8 for asymmetric."""
    xb, b = to_blocks(as_float(x), qp.scheme.granularity)
    s, z = _rows_params(qp, b)
    return from_blocks(_quantize_blocks(xb, s, z, qp.scheme), b)


def quantize_2d(x2: torch.Tensor, qp: QParams) -> torch.Tensor:
    """``quantize`` for a 2-D float32 tensor with per-tensor or per-row (PerChannel(0)) qparams,
    without the layout machinery: the hot path of dynamic activations. Same integers."""
    s = qp.scale.to(torch.float32).reshape(-1, 1)
    z = qp.zero_point.to(torch.float32).reshape(-1, 1)
    if s.shape[0] == 1:
        return _quantize_blocks(x2.reshape(1, -1), s, z, qp.scheme).reshape(x2.shape)
    return _quantize_blocks(x2, s, z, qp.scheme)


def dequantize(q: torch.Tensor, qp: QParams, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x_hat = s (q - z), computed in float32, in q's shape."""
    qb, b = to_blocks(q, qp.scheme.granularity)
    s, z = _rows_params(qp, b)
    return from_blocks(qb.to(torch.float32).sub_(z).mul_(s), b).to(dtype)


def _ste_forward(x, scale, zero_point, scheme):
    """Shared by both STE functions: blocks, row params, the pass-through mask and q.
    The mask is 1 where round(x / s) + z lies in [qmin, qmax] (binary: |x| <= s)."""
    xb, b = to_blocks(x.detach().to(torch.float32), scheme.granularity)
    s, z = _rows_params(QParams(scale, zero_point, scheme), b)
    if scheme.binary:
        inside = xb.abs() <= s
    else:
        t = round_shift(xb, s, z)
        inside = (t >= scheme.qmin) & (t <= scheme.qmax)
    return xb, b, s, z, inside, _quantize_blocks(xb, s, z, scheme)


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, scheme):
        _, b, s, z, inside, q = _ste_forward(x, scale, zero_point, scheme)
        ctx.save_for_backward(from_blocks(inside, b))
        return from_blocks(q.to(torch.float32).sub_(z).mul_(s), b).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """dequantize(quantize(x)) with a straight-through gradient (see module docstring)."""
    return _FakeQuantSTE.apply(x, qp.scale, qp.zero_point, qp.scheme)


def _binary_scale(xb: torch.Tensor, b: Blocking) -> torch.Tensor:
    """mean|x| per row over the real (unpadded) elements."""
    sums = xb.abs().sum(dim=1, dtype=torch.float64)
    counts = torch.full_like(sums, xb.shape[1])
    if b.pad:  # the last group of each original row holds block_len - pad real elements
        groups = b.scale_shape[b.scale_perm.index(len(b.scale_perm) - 1)]
        counts.view(-1, groups)[:, -1] -= b.pad
    return sums / counts


def quantize_tensor_params(
    xf: torch.Tensor, scheme: QScheme, range: RangeSpec, name: str
) -> QParams:
    xb, b = to_blocks(xf, scheme.granularity)
    if scheme.binary:
        check_finite(xb, name)
        m = _binary_scale(xb, b)
        # an all-zero block has no useful binary scale (s = 1 would dequantize it to +1):
        # the smallest normal of the storage dtype dequantizes it to about 0 (docs/FAULTS.md 5)
        m = torch.where(m > 0, m, torch.finfo(scheme.torch_scale_dtype).tiny)
        return choose_qparams(rows_to_scale(-m, b), rows_to_scale(m, b), scheme)
    if not isinstance(range, MinMax):
        # searches fail on NaN/Inf without naming x, or (histograms) silently drop them;
        # MinMax's min/max propagate them, so the check after it costs nothing
        check_finite(xf, name)
    lo, hi = range.rows_range(xb, scheme)
    if not (_all_finite(lo) and _all_finite(hi)):
        check_finite(xf, name)
    return choose_qparams(rows_to_scale(lo, b), rows_to_scale(hi, b), scheme)


def _quantize_tensor(
    x: torch.Tensor, scheme: QScheme, range: RangeSpec, name: str, form: Form
) -> tuple[torch.Tensor, QParams]:
    # Two passes over x: min/max, then quantize. Both per L3-sized chunk of rows (the second
    # read from cache) measured slower on the 2-core VM (int8 per-channel 44 vs 39 ms): the
    # quantize pass runs at ~10 GB/s of input from cache or memory alike, reuse showed only for
    # chunks up to ~4 MiB, and choose_qparams costs 0.1-0.3 ms a chunk. Its cost is not the
    # division either (multiplying by 1/s with a tie check: 29 vs 28 ms, 2 threads; one
    # thread 35) but the fresh output's first-touch page faults (filling a new 45 MB tensor
    # took 20 ms on that VM). With a MinMax range the one-pass kernel (``onepass``) does all
    # in one pass where it applies: min/max, qparams and q of each row while it is in cache.
    xf = as_float(x, name)
    got = onepass.quantize(xf, scheme, range, form)
    if got is not None:
        return got
    qp = quantize_tensor_params(xf, scheme, range, name)
    xb, b = to_blocks(xf, scheme.granularity)
    s, z = _rows_params(qp, b)
    rows = _quantize_codes if form is Form.CODES else _quantize_blocks
    return from_blocks(rows(xb, s, z, scheme), b), qp


def quantize_tensor(
    x: torch.Tensor, scheme: QScheme, range: RangeSpec = MinMax(), name: str = "tensor"
) -> tuple[torch.Tensor, QParams]:
    """Choose qparams for ``x`` with the range spec, then quantize. Returns (q, qparams) with
    q in x's shape. NaN/Inf raise NonFiniteError naming ``name``; x is never modified.
    Binary (1-bit symmetric) schemes ignore ``range``: s = mean|x| per block."""
    return _quantize_tensor(x, scheme, range, name, Form.INTEGERS)


def quantize_tensor_codes(
    x: torch.Tensor, scheme: QScheme, range: RangeSpec = MinMax(), name: str = "tensor"
) -> tuple[torch.Tensor, QParams]:
    """``quantize_tensor`` for an 8-bit scheme, with the codes q - qmin (uint8, x's shape) that
    ``QTensor`` stores instead of q: the bytes of ``pack(q, 8, -qmin)`` without that extra pass."""
    if scheme.bits != 8:
        raise ConfigError(
            f"quantize_tensor_codes needs an 8-bit scheme (one byte per code), got {scheme.bits} "
            "bits"
        )
    return _quantize_tensor(x, scheme, range, name, Form.CODES)


class _IntSTE(torch.autograd.Function):
    """x -> (q - z) as float64 integers; gradient 1/s inside the clamp range, 0 outside."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, scheme):
        _, b, s, z, inside, q = _ste_forward(x, scale, zero_point, scheme)
        ctx.save_for_backward(from_blocks(inside / s, b))
        return from_blocks(q.to(torch.float64) - z.to(torch.float64), b)

    @staticmethod
    def backward(ctx, grad):
        (gain,) = ctx.saved_tensors
        return (grad * gain).to(torch.float32), None, None, None


def int_ste(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """The integers q - z that an integer kernel sees, as float64 (exact), with a
    straight-through gradient: simulation in the integer domain (see modules.fake)."""
    return _IntSTE.apply(x, qp.scale, qp.zero_point, qp.scheme)


def tensor_qparams(
    x: torch.Tensor, scheme: QScheme, range: RangeSpec = MinMax(), name: str = "tensor"
) -> QParams:
    """The qparams ``quantize_tensor`` would choose, without quantizing."""
    return quantize_tensor_params(as_float(x, name), scheme, range, name)
