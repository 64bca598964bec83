"""HQQ: half-quadratic quantization (Badri & Shaji 2023, "Half-Quadratic Quantization of Large
Machine Learning Models", mobiusml.github.io/hqq_blog). Data-free: per block (group, channel or
tensor) it optimises the scale and zero point against a sparsity-promoting l_p error, p < 1:

    min over s, z   sum |w - s (q(w; s, z) - z)|^p,     q(w; s, z) = clamp(round(w / s) + z)

Half-quadratic splitting adds the error e ~ w - dq(w) as a variable and alternates (``iters``
times, no early stop, ``beta`` growing by ``kappa`` each time; while z is real-valued the
levels are q = clamp(round(w / s + z))):

1. e <- shrink_p(w - dq(w), beta): the l_p proximal step sign(d) relu(|d| - |d|^(p-1) / beta),
   applied to d measured *in quantization steps* (d / s), so ``beta`` does not depend on the
   weights' magnitude (the paper's beta = 10 is for weights of LLM size; ours is unit-free);
   it keeps large (outlier) errors and zeroes small ones.
2. closed form, with q fixed: the least-squares fit of the target w - e by s (q - z): scale and
   zero for asymmetric schemes, the scale only for symmetric ones (z = 0; a signed full-range
   scale keeps its sign).

Our storage has integer zero points and scales in ``scheme.scale_dtype``, so the optimised
(real) zero is finished on the integer grid: both floor(z) and ceil(z) are tried, each with
``refit`` least-squares refits of the scale (z fixed, squared error), the scale is rounded to
its storage dtype, and per block the candidate of least squared error is kept -- including the
start (qparams from ``range``, MinMax by default), so HQQ is never worse than that RTN in
squared error, block by block. Binary (1-bit) schemes are returned as RTN (mean|w| is already
the optimal binary scale). All blocks are optimised at once, in cache-sized row chunks spread
over torch.get_num_threads() Python threads; the result does not depend on the thread count.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from ..backends.torch_rows import round_clamp, round_half_even_
from ..core.blocking import rows_to_scale, scale_to_rows, to_blocks
from ..core.qparams import QParams, finalize_scale
from ..core.qtensor import QTensor
from ..core.quantize import as_float, check_finite, quantize, tensor_qparams
from ..core.range_specs import MinMax, RangeSpec
from ..core.scheme import QScheme
from ..errors import ConfigError

# Elements per row chunk: all iterations run on one chunk, in cache; under torch's 32768-element
# grain, so every op runs inline on its thread (an OpenMP hand-off per small op stalls for a
# scheduler tick whenever the CPUs are busy); chunks go to a thread pool instead.
CHUNK_ELEMS = (1 << 15) - 1


def _rsum(t: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    return (t if m is None else t * m).sum(1, keepdim=True)


def _rdot(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    return torch.linalg.vecdot(a if m is None else a * m, b)[:, None]


def _rounded(x, s, z, scheme, out):
    """q = clamp(round(x / s) + z) into ``out``: cuantiza's rounding (true division, z added
    after rounding), the one ``quantize`` applies to the final, integer z."""
    return round_clamp(x, s, None if scheme.symmetric else z, scheme.qmin, scheme.qmax, out=out)


def _sq_error(x, s, z, scheme, buf):
    """Per row sum (x - s (q - z))^2 for stored s and integer z (float32, (R, 1))."""
    q = _rounded(x, s, z, scheme, buf)
    d = q.sub_(z).mul_(s).sub_(x)
    return torch.linalg.vecdot(d, d)[:, None]


def _ls_step(q, v, s, z, m, n, scheme):
    """Closed-form update: least-squares fit of the target t = s v (v in steps) by s' (q - z');
    keeps the old s, z where the fit degenerates (constant q, or a scale changing sign)."""
    qv, qq = _rdot(q, v, m), _rdot(q, q, m)
    if scheme.symmetric:
        new = s * qv / qq
        return torch.where((qq > 0) & (new * s > 0), new, s), z
    sq, sv = _rsum(q, m), _rsum(v, m)
    var = qq - sq * sq / n
    new = s * (qv - sq * sv / n) / var
    ok = (var > 0) & (new > 0)
    return torch.where(ok, new, s), torch.where(ok, (sq - s * sv / new) / n, z)


def _shrink_magnitude(d, p, beta, a, t):
    """|shrink_p(d)| = relu(|d| - |d|^(p-1) / beta) into ``a``; |d| = 0 gives inf, then 0."""
    torch.abs(d, out=a)
    if p == 1:
        return a.sub_(1.0 / beta).clamp_min_(0)
    return a.sub_(torch.pow(a, p - 1, out=t), alpha=1.0 / beta).clamp_min_(0)


def _half_quadratic(x, s, z, m, n, scheme, iters, p, beta, kappa):
    """The HQQ alternation over rows x (R, L) with a real-valued zero: q = clamp(round(x / s
    + z)), e = shrink_p(x / s - (q - z)) (in steps), then (s, z) <- LS fit of x - s e."""
    y, q, d, a, t = (torch.empty_like(x) for _ in range(5))
    for _ in range(iters):
        torch.div(x, s, out=y)
        round_half_even_(torch.add(y, z, out=q)).clamp_(scheme.qmin, scheme.qmax)
        torch.sub(y, q, out=d).add_(z)  # error in steps
        a = _shrink_magnitude(d, p, beta, a, t)
        v = y.sub_(torch.copysign(a, d, out=a))  # target / s
        s, z = _ls_step(q, v, s, z, m, n, scheme)
        beta *= kappa
    return s, z


def _integer_finish(x, s, z, m, scheme, refit, buf):
    """Integer zero (floor and ceil), ``refit`` squared-error refits of s with z fixed,
    storage rounding; per row the better candidate: (s stored, z integer-valued, error)."""
    cands = (
        [torch.zeros_like(s)]
        if scheme.symmetric
        else [
            torch.floor(z).clamp_(scheme.qmin, scheme.qmax),
            torch.ceil(z).clamp_(scheme.qmin, scheme.qmax),
        ]
    )
    best = None
    for zi in cands:
        si = s
        for _ in range(refit):
            q = _rounded(x, si, zi, scheme, buf).sub_(zi)
            num, den = _rdot(q, x, m), _rdot(q, q, m)
            new = num / den
            si = torch.where((den > 0) & (new * si > 0), new, si)
        fmax = torch.finfo(scheme.torch_scale_dtype).max  # never a ScaleOverflowError
        si = finalize_scale(si.to(torch.float64).clamp(-fmax, fmax), scheme).to(torch.float32)
        err = _sq_error(x, si, zi, scheme, buf)
        if best is None:
            best = (si, zi, err)
        else:
            w = err < best[2]
            best = (
                torch.where(w, si, best[0]),
                torch.where(w, zi, best[1]),
                torch.minimum(err, best[2]),
            )
    return best


def _fit_chunk(x, s0, z0, m, scheme, opts):
    """Optimise rows x (R, L) from stored (s0, z0) (R,); returns the kept (s, z) (R,)."""
    s0f, z0f = s0.to(torch.float32)[:, None], z0.to(torch.float32)[:, None]
    n = x.shape[1] if m is None else m.sum(1, keepdim=True).clamp_min(1)
    buf = torch.empty_like(x)
    s, z = _half_quadratic(
        x, s0f, z0f, m, n, scheme, opts["iters"], opts["p"], opts["beta"], opts["kappa"]
    )
    s, z, err = _integer_finish(x, s, z, m, scheme, opts["refit"], buf)
    won = (err < _sq_error(x, s0f, z0f, scheme, buf))[:, 0]
    s_out = torch.where(won, s[:, 0].to(s0.dtype), s0)
    return s_out, torch.where(won, z[:, 0].to(torch.int32), z0)


def _pad_mask(b, rows: slice, length: int) -> torch.Tensor | None:
    """1/0 weights of the real elements of block rows ``rows`` (ragged last groups only)."""
    if not b.pad:
        return None
    groups = b.scale_shape[b.scale_perm.index(len(b.scale_perm) - 1)]
    m = torch.ones(rows.stop - rows.start, length)
    last = (torch.arange(rows.start, rows.stop) % groups) == groups - 1
    m[last, length - b.pad :] = 0
    return m


def _map(fn, items: list) -> list:
    """``fn`` over independent chunks on torch.get_num_threads() Python threads (torch
    releases the GIL inside ops; each chunk's ops are small enough to run inline)."""
    workers = min(torch.get_num_threads(), len(items))
    if workers <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _row_slices(n: int, step: int):
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _check(iters, p, beta, kappa, refit, name):
    if not isinstance(iters, int) or iters < 0 or not isinstance(refit, int) or refit < 0:
        raise ConfigError(
            f"{name}: HQQ iters and refit must be integers >= 0, got {iters!r}, {refit!r}"
        )
    if not 0 < p <= 1:
        raise ConfigError(
            f"{name}: HQQ p must be in (0, 1] (p < 1 promotes sparse errors), got {p}"
        )
    if not beta > 0 or not kappa >= 1:
        raise ConfigError(
            f"{name}: HQQ needs beta > 0 and kappa >= 1, got beta={beta}, kappa={kappa}"
        )


def hqq(
    w: torch.Tensor,
    scheme: QScheme,
    *,
    iters: int = 20,
    p: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    refit: int = 3,
    range: RangeSpec = MinMax(),
    name: str = "weight",
) -> QTensor:
    """HQQ-optimised qparams for ``w`` (any shape, any granularity), started from ``range``'s
    RTN qparams and never worse than them in squared error per block. See the module docstring.

    >>> import cuantiza as cz
    >>> w = torch.randn(16, 128)
    >>> s = cz.QScheme(bits=3, symmetric=False, granularity=cz.PerGroup(64))
    >>> err = lambda t: float(((t.dequantize() - w) ** 2).sum())
    >>> err(hqq(w, s)) < err(cz.QTensor.from_float(w, s))
    True
    """
    _check(iters, p, beta, kappa, refit, name)
    wf = as_float(w, name)
    check_finite(wf, name)
    qp0 = tensor_qparams(wf, scheme, range, name)
    if scheme.binary or iters + refit == 0 or wf.numel() == 0:
        return QTensor.from_int(quantize(wf, qp0), qp0)
    xb, b = to_blocks(wf, scheme.granularity)
    s, z = scale_to_rows(qp0.scale, b).clone(), scale_to_rows(qp0.zero_point, b).clone()
    opts = dict(iters=iters, p=p, beta=beta, kappa=kappa, refit=refit)

    def run(rows: slice):
        return _fit_chunk(xb[rows], s[rows], z[rows], _pad_mask(b, rows, b.block_len), scheme, opts)

    slices = _row_slices(b.n_blocks, max(1, CHUNK_ELEMS // max(b.block_len, 1)))
    for rows, (s_rows, z_rows) in zip(slices, _map(run, slices), strict=False):
        s[rows], z[rows] = s_rows, z_rows
    qp = QParams(rows_to_scale(s, b), rows_to_scale(z, b), scheme)
    return QTensor.from_int(quantize(wf, qp), qp)
