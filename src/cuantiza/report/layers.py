"""The rows of a report: one ``LayerReport`` per module holding parameters (or a quantized
weight) in either model, matched by name, and the model totals. See ``report`` for the
definitions; the measurements are in ``report_stats``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..nn import DynamicQuantLinear
from ..nn.layer_math import weight_2d
from ..nn.surgery import fold_bn_into_conv
from .stats import (
    Once,
    Probe,
    cache_bytes,
    clip_range,
    histogram,
    quant_weight,
    static_act,
    stored_bytes,
    tensor_bytes,
    tensor_sqnr_db,
)

QUANTIZED_MODES = ("static", "dynamic", "weight-only")


@dataclass(frozen=True)
class LayerReport:
    name: str
    kind: str  # class in the float model ("" if absent there)
    quant_kind: str  # class in the quantized model ("" if absent there)
    mode: str  # static | dynamic | weight-only | float | folded | removed
    scheme: str
    reason: str  # why it stays float, or fallback / tie notes
    kernel: str | None
    n_weights: int
    float_bytes: int
    quant_bytes: int
    bits_per_weight: float | None
    weight_sqnr_db: float | None
    output_sqnr_db: float | None
    clipped_fraction: float | None
    n_nan: int | None  # values the activation observer excluded while calibrating
    n_inf: int | None
    histograms: dict  # "weight" / "activation" -> report_stats.histogram dict or None
    slow_kernel: str | None = None  # why the layer runs a slow reference kernel (None: fast)

    @property
    def quantized(self) -> bool:
        return self.mode in QUANTIZED_MODES


def db(v: float | None) -> float | None:
    """dB values rounded to 1e-4: reports compare equal across float summation orders."""
    return v if v is None or not math.isfinite(v) else round(v, 4)


class Context:
    """What the rows need to know about the two models."""

    def __init__(self, float_model: nn.Module, qmodel: nn.Module):
        self.float_model, self.qmodel = float_model, qmodel
        info = getattr(qmodel, "cuantiza_info", None)
        self.workflow = getattr(info, "workflow", "unknown")
        self.plan = getattr(info, "plan", None)
        self.notes = dict(getattr(info, "notes", {}) or {})
        self.observers = dict(getattr(info, "observers", {}) or {})
        self.folded = dict(getattr(info, "folded", []) or [])  # conv -> bn
        self.folded_into = {bn: conv for conv, bn in self.folded.items()}
        self.float_once, self.quant_once = Once(), Once()

    def layer_plan(self, name: str):
        return next((lp for lp in self.plan.layers if lp.name == name), None) if self.plan else None

    def plan_reason(self, name: str) -> str:
        lp = self.layer_plan(name)
        return lp.reason if lp is not None else ""

    def reference_weight(self, name: str, fmod: nn.Module | None) -> torch.Tensor | None:
        """The float weight the quantized one approximates (with its BatchNorm folded in)."""
        w = _float_weight(fmod)
        if w is None or name not in self.folded:
            return w
        conv = copy.deepcopy(fmod)
        fold_bn_into_conv(conv, copy.deepcopy(_get(self.float_model, self.folded[name])))
        return conv.weight.detach()


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _float_weight(mod: nn.Module | None) -> torch.Tensor | None:
    if mod is None:
        return None
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.Tensor):
        w = next((p for p in mod.parameters(recurse=False)), None)
    return w.detach() if w is not None and w.is_floating_point() else None


def _is_layer(mod: nn.Module) -> bool:
    return quant_weight(mod) is not None or next(mod.parameters(recurse=False), None) is not None


def layer_names(float_model: nn.Module, qmodel: nn.Module) -> list:
    names: dict = {}
    for model in (float_model, qmodel):
        for name, mod in model.named_modules():
            if _is_layer(mod):
                names.setdefault(name, None)
    return list(names)


def _mode(name: str, qmod: nn.Module | None, ctx: Context) -> str:
    if name in ctx.folded_into:
        return "folded"
    if qmod is None:
        return "removed"
    if quant_weight(qmod) is None:
        return "float"
    if isinstance(qmod, DynamicQuantLinear):
        return "dynamic"
    return "static" if static_act(qmod) is not None else "weight-only"


def _scheme(name: str, mode: str, qmod: nn.Module | None, ctx: Context) -> str:
    if mode == "folded":
        return f"folded into {ctx.folded_into[name]}"
    if mode not in QUANTIZED_MODES:
        return "float"
    w = f"w {quant_weight(qmod).scheme.describe()}"
    if mode == "static":
        return f"{w} / a {static_act(qmod).scheme.describe()}"
    if mode == "dynamic":
        a = qmod.act_scheme.describe()
        return f"{w} / a {a.replace('per-tensor', 'per-token') if qmod.per_token else a} dynamic"
    return f"{w} / a float"


def _reason(name: str, mode: str, ctx: Context) -> str:
    parts = [p for p in (ctx.plan_reason(name), ctx.notes.get(name, "")) if p]
    if mode == "folded":
        parts.insert(0, f"BatchNorm folded into {ctx.folded_into[name]}")
    elif mode == "removed":
        parts.append("not in the quantized model")
    elif mode == "float" and not parts:
        lp = ctx.layer_plan(name)
        planned = lp is not None and lp.quantized
        parts.append(
            "planned but not converted (run convert)" if planned else "not in the quantization plan"
        )
    return "; ".join(parts)


def _weight_stats(name: str, fmod, qmod, ctx: Context) -> tuple:
    """(n_weights, bits_per_weight, weight SQNR, weight histogram) of one row."""
    ref = ctx.reference_weight(name, fmod)
    qt = quant_weight(qmod) if qmod is not None else None
    if qt is not None:
        approx, clip, bits, n = (
            qt.dequantize(),
            clip_range(qt.qparams),
            qt.bits_per_weight,
            qt.numel,
        )
        ref_cmp = weight_2d(ref) if ref is not None else None
    else:
        approx, clip, ref_cmp = _float_weight(qmod), None, ref
        bits = None if approx is None else 8.0 * approx.element_size()
        n = approx.numel() if approx is not None else 0
    sq = None
    if ref_cmp is not None and approx is not None and ref_cmp.shape == approx.shape:
        sq = tensor_sqnr_db(ref_cmp, approx)
    hist = histogram(ref, clip) if ref is not None else None
    return n, bits, sq, hist


def row(name: str, ctx: Context, measured: Probe) -> LayerReport:
    fmod, qmod = _get(ctx.float_model, name), _get(ctx.qmodel, name)
    mode = _mode(name, qmod, ctx)
    n, bits, w_sq, w_hist = _weight_stats(name, fmod, qmod, ctx)
    counts = ctx.observers.get(name) or {}
    return LayerReport(
        name=name,
        kind=type(fmod).__name__ if fmod is not None else "",
        quant_kind=type(qmod).__name__ if qmod is not None else "",
        mode=mode,
        scheme=_scheme(name, mode, qmod, ctx),
        reason=_reason(name, mode, ctx),
        kernel=getattr(qmod, "kernel", None) if mode in QUANTIZED_MODES else None,
        n_weights=n,
        float_bytes=stored_bytes(fmod, ctx.float_once) if fmod is not None else 0,
        quant_bytes=stored_bytes(qmod, ctx.quant_once) if qmod is not None else 0,
        bits_per_weight=bits,
        weight_sqnr_db=db(w_sq),
        output_sqnr_db=db(measured.output_sqnr_db()),
        clipped_fraction=measured.clipped_fraction(),
        n_nan=counts.get("n_nan"),
        n_inf=counts.get("n_inf"),
        histograms={"weight": w_hist, "activation": measured.activation},
        slow_kernel=getattr(qmod, "fallback", None) if mode in QUANTIZED_MODES else None,
    )


def probe(name: str, ctx: Context) -> Probe:
    fmod, qmod = _get(ctx.float_model, name), _get(ctx.qmodel, name)
    compared = fmod is not None and qmod is not None and name not in ctx.folded_into
    act = static_act(qmod) if qmod is not None else None
    return Probe(
        float_name=name if fmod is not None else None,
        ref_name=ctx.folded.get(name, name) if compared else None,
        quant_name=name if compared else None,
        clip=clip_range(act) if act is not None else None,
    )


def totals(rows: list, ctx: Context, model_sqnr: float | None) -> dict:
    f_layers, q_layers = sum(r.float_bytes for r in rows), sum(r.quant_bytes for r in rows)
    f_other = sum(ctx.float_once.bytes(t, tensor_bytes(t)) for t in _tensors(ctx.float_model))
    q_other = sum(ctx.quant_once.bytes(t, tensor_bytes(t)) for t in _tensors(ctx.qmodel))
    n_params = sum(p.numel() for p in ctx.float_model.parameters())
    f_total, q_total = f_layers + f_other, q_layers + q_other
    return {
        "n_params": n_params,
        "float_bytes": f_total,
        "quant_bytes": q_total,
        "float_other_bytes": f_other,
        "quant_other_bytes": q_other,
        "ratio": f_total / q_total if q_total else None,
        "bits_per_weight": 8 * q_layers / n_params if n_params else None,
        "quant_cache_bytes": cache_bytes(ctx.qmodel),
        "n_quantized": sum(r.quantized for r in rows),
        "n_float": sum(not r.quantized for r in rows),
        "output_sqnr_db": db(model_sqnr),
    }


def _tensors(model: nn.Module) -> list:
    return list(model.parameters()) + list(model.buffers())
