"""The measurements behind ``report``: stored bytes, SQNR, clipping, histograms, forward hooks.

Definitions (used by ``report.py`` and its tests):

* stored bytes of a module = what a file must hold for it: its own parameters and buffers, its
  ``QTensor`` weight (packed codes + scales + zero points, ``QTensor.nbytes``) and its static
  activation qparams. Each tensor / QTensor is counted once per model (tied weights).
* SQNR (dB) = 20 log10(||x|| / ||x - x_hat||), norms in float64 (torchao's ``compute_error``);
  +inf when x_hat == x, -inf when x == 0 != x_hat.
* clipping range of qparams = [s (qmin - z), s (qmax - z)]: values outside it saturate.

>>> sqnr_db(100.0, 1.0)            # ||x||^2 = 100, ||x - x_hat||^2 = 1: 20 log10(10 / 1)
20.0
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.qparams import QParams
from ..core.qtensor import QTensor

BINS = 64  # histogram bins kept per tensor in a report: enough to see clipping, small in JSON


def sqnr_db(ref_sq: float, err_sq: float) -> float:
    """SQNR from the squared norms of the reference and of the error."""
    if err_sq == 0:
        return math.inf
    if ref_sq == 0:
        return -math.inf
    return 10.0 * math.log10(ref_sq / err_sq)


def tensor_sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    ref64, approx64 = ref.detach().to(torch.float64), approx.detach().to(torch.float64)
    return sqnr_db(float(ref64.square().sum()), float((ref64 - approx64).square().sum()))


class Once:
    """Counts each tensor (or QTensor) once: tied weights cost their bytes one time."""

    def __init__(self):
        self.seen: set = set()
        self.keep: list = []  # references, so ids stay unique while counting

    def bytes(self, obj, n: int) -> int:
        if id(obj) in self.seen:
            return 0
        self.seen.add(id(obj))
        self.keep.append(obj)
        return n


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def quant_weight(mod: nn.Module) -> QTensor | None:
    qt = getattr(mod, "weight_q", None)
    return qt if isinstance(qt, QTensor) else None


def static_act(mod: nn.Module) -> QParams | None:
    """The fixed activation qparams of a static layer (None: dynamic, weight-only or float)."""
    act = getattr(mod, "act", None)
    return act if isinstance(act, QParams) else None


def stored_bytes(mod: nn.Module, once: Once) -> int:
    """Bytes a file holds for this module (direct parameters and buffers, QTensor, act qparams)."""
    n = sum(once.bytes(p, tensor_bytes(p)) for p in mod._parameters.values() if p is not None)
    n += sum(once.bytes(b, tensor_bytes(b)) for b in mod._buffers.values() if b is not None)
    qt = quant_weight(mod)
    if qt is not None:
        n += once.bytes(qt, qt.nbytes)
    act = static_act(mod)
    return n + (act.nbytes if act is not None else 0)


def cache_bytes(model: nn.Module) -> int:
    """Bytes of tensors held as plain module attributes (integer weight copies, kernel caches):
    in memory while the model runs, never saved."""
    stored = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    for mod in model.modules():
        qt, act = quant_weight(mod), static_act(mod)
        for qp in ([qt.qparams] if qt is not None else []) + ([act] if act is not None else []):
            stored |= {qp.scale.data_ptr(), qp.zero_point.data_ptr()}
        if qt is not None:
            stored.add(qt.data.data_ptr())
    seen, n = stored, 0
    for mod in model.modules():
        for v in vars(mod).values():
            if isinstance(v, torch.Tensor) and v.numel() and v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                n += tensor_bytes(v)
        n += getattr(getattr(mod, "weight_only", None), "cache_bytes", 0)  # kernel's packed copy
    return n


def clip_range(qp: QParams) -> tuple[float, float]:
    """The widest [s (qmin - z), s (qmax - z)] over all blocks of the qparams."""
    s, z = qp.scale.to(torch.float64), qp.zero_point.to(torch.float64)
    lo, hi = s * (qp.scheme.qmin - z), s * (qp.scheme.qmax - z)
    return float(lo.min()), float(hi.max())


def histogram(x: torch.Tensor, clip: tuple | None, bins: int = BINS) -> dict:
    """Counts of the finite values of ``x`` over [lo, hi] = data range widened to the clip."""
    h = {"lo": 0.0, "hi": 0.0, "counts": [0] * bins, "clip": None if clip is None else list(clip)}
    return add_to_histogram(h, x)


def add_to_histogram(h: dict, x: torch.Tensor) -> dict:
    """Add ``x`` to ``h``; the first nonempty call fixes the bin range, later values outside it
    fall in the end bins."""
    x = x.detach().to(torch.float64).flatten()
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        return h
    bins = len(h["counts"])
    if not any(h["counts"]):
        lo, hi = float(x.min()), float(x.max())
        if h["clip"] is not None:
            lo, hi = min(lo, h["clip"][0]), max(hi, h["clip"][1])
        h["lo"], h["hi"] = lo, (hi if hi > lo else lo + 1.0)
    width = (h["hi"] - h["lo"]) / bins
    idx = torch.floor((x - h["lo"]) / width).clamp(0, bins - 1).to(torch.int64)
    counts = torch.bincount(idx, minlength=bins) + torch.tensor(h["counts"], dtype=torch.int64)
    h["counts"] = counts.tolist()
    return h


def float_leaves(out) -> list:
    """The floating tensors of a model output (tensor, tuple/list, dict / ModelOutput), in order."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in float_leaves(o)]
    return []


def first_float(args: tuple, kwargs: dict) -> torch.Tensor | None:
    found = float_leaves(list(args) + list(kwargs.values()))
    return found[0] if found else None


def call(model: nn.Module, sample):
    """model(sample), model(*sample) for a tuple/list, model(**sample) for a dict."""
    if isinstance(sample, dict):
        return model(**sample)
    if isinstance(sample, (tuple, list)):
        return model(*sample)
    return model(sample)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Evaluation mode inside; every module's training flag restored after (the models are
    only read: no BatchNorm statistics or dropout draws change)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def hooks(model: nn.Module, fns: list):
    """Forward hooks ``fn(args, kwargs, out)`` on named submodules ((name, fn) pairs), removed
    on exit."""
    handles = []
    try:
        for name, fn in fns:
            mod = model.get_submodule(name)
            handles.append(
                mod.register_forward_hook(lambda m, a, k, o, fn=fn: fn(a, k, o), with_kwargs=True)
            )
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class Probe:
    """What one report row measures on the sample. ``ref_name``: the float-model module whose
    output the quantized layer's output is compared with (the BatchNorm of a folded pair)."""

    float_name: str | None
    ref_name: str | None
    quant_name: str | None
    clip: tuple | None  # static layers: the activation clipping range
    refs: list = field(default_factory=list)
    used: int = 0
    ref_sq: float = 0.0
    err_sq: float = 0.0
    mismatch: bool = False
    n_values: int = 0
    n_clipped: int = 0
    activation: dict | None = None

    def see_input(self, args, kwargs, out) -> None:
        x = first_float(args, kwargs)
        if x is None:
            return
        x = x.detach().to(torch.float64)
        finite = x[torch.isfinite(x)]
        self.n_values += finite.numel()
        if self.clip is not None:
            self.n_clipped += int(((finite < self.clip[0]) | (finite > self.clip[1])).sum())
        if self.activation is None:
            self.activation = histogram(finite, self.clip)
        else:
            add_to_histogram(self.activation, finite)

    def see_reference(self, args, kwargs, out) -> None:
        found = float_leaves(out)
        if found:
            self.refs.append(found[0].detach().clone())  # clone: in-place ops may follow

    def see_output(self, args, kwargs, out) -> None:
        found = float_leaves(out)
        if not found or self.used >= len(self.refs) or found[0].shape != self.refs[self.used].shape:
            self.mismatch = True
            return
        ref, y = self.refs[self.used].to(torch.float64), found[0].detach().to(torch.float64)
        self.used += 1
        self.ref_sq += float(ref.square().sum())
        self.err_sq += float((ref - y).square().sum())

    def output_sqnr_db(self) -> float | None:
        if self.mismatch or self.used == 0 or self.used != len(self.refs):
            return None
        return sqnr_db(self.ref_sq, self.err_sq)

    def clipped_fraction(self) -> float | None:
        if self.clip is None or self.n_values == 0:
            return None
        return self.n_clipped / self.n_values


def _outputs_sqnr(ref: list, out: list) -> float | None:
    if (
        len(ref) != len(out)
        or any(a.shape != b.shape for a, b in zip(ref, out, strict=False))
        or not ref
    ):
        return None
    ref_sq = sum(float(a.to(torch.float64).square().sum()) for a in ref)
    err_sq = sum(
        float((a.to(torch.float64) - b.to(torch.float64)).square().sum())
        for a, b in zip(ref, out, strict=False)
    )
    return sqnr_db(ref_sq, err_sq)


def measure(float_model: nn.Module, qmodel: nn.Module, sample, probes: list) -> float | None:
    """Run both models once on ``sample`` with the probes' hooks; returns the model output SQNR.
    Each layer's output SQNR includes the error accumulated by the layers before it."""
    f_fns = [(p.float_name, p.see_input) for p in probes if p.float_name is not None]
    f_fns += [(p.ref_name, p.see_reference) for p in probes if p.ref_name and p.quant_name]
    q_fns = [(p.quant_name, p.see_output) for p in probes if p.ref_name and p.quant_name]
    with torch.no_grad(), eval_mode(float_model), eval_mode(qmodel):
        with hooks(float_model, f_fns):
            ref = float_leaves(call(float_model, sample))
        with hooks(qmodel, q_fns):
            out = float_leaves(call(qmodel, sample))
    return _outputs_sqnr(ref, out)
