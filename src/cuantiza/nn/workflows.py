"""The workflows: weight-only, dynamic, static PTQ (prepare -> calibrate -> convert) and QAT.

Each returns a new model; the user's model is never modified. The root of every model made
here carries ``cuantiza_info`` (a ``QuantInfo``): the plan and a note per layer, which
``report`` reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.qtensor import QTensor
from ..errors import CalibrationError, PlanError
from ..progress import bar
from . import (
    DynamicQuantLinear,
    FakeQuantConv,
    FakeQuantEmbedding,
    FakeQuantLinear,
    QuantConv,
    QuantEmbedding,
    QuantLinear,
)
from .config import CALIBRATED_METHODS, QuantConfig
from .layer_math import conv_args, weight_2d
from .plan import LayerPlan, Plan, plan
from .surgery import copy_model, fold_batchnorm, get_module, set_module

FAKE = (FakeQuantLinear, FakeQuantConv, FakeQuantEmbedding)


@dataclass
class QuantInfo:
    workflow: str
    plan: Plan
    notes: dict = field(default_factory=dict)  # layer name -> note (fallbacks, ties, kernels)
    folded: list = field(default_factory=list)  # (conv, bn) pairs folded
    observers: dict = field(default_factory=dict)  # layer -> {n_seen, n_nan, n_inf} of its observer


def _prepared_copy(
    model: nn.Module, config: QuantConfig, workflow: str
) -> tuple[nn.Module, Plan, list]:
    m = copy_model(model)
    folded = fold_batchnorm(m) if config.fold_bn and workflow in ("static", "qat") else []
    return m, plan(m, config, workflow), folded


class _WeightCache:
    """Quantizes each weight tensor once: tied weights (embedding <-> lm_head) share a QTensor."""

    def __init__(self):
        self.done: dict = {}

    def get(self, param: torch.Tensor, lp: LayerPlan, notes: dict) -> QTensor:
        key = (id(param), lp.weight, lp.config.weight_range, lp.config.method)
        if key in self.done:
            first, qt = self.done[key]
            notes[lp.name] = f"tied with {first}: quantized once"
            return qt
        if any(k[0] == id(param) for k in self.done):
            notes[lp.name] = "shares a weight quantized with another scheme: untied"
        qt = quantize_layer_weight(weight_2d(param.detach()), lp)
        self.done[key] = (lp.name, qt)
        return qt


def quantize_layer_weight(w: torch.Tensor, lp: LayerPlan) -> QTensor:
    """One weight by the layer's data-free method (``algorithms.quantize_weight``): round to
    nearest over ``weight_range``, or HQQ started from that range's rounding."""
    cfg = lp.config
    if cfg.method in CALIBRATED_METHODS:
        raise PlanError(
            f"{lp.name}: method {cfg.method!r} needs calibration data; use "
            "cuantiza.llm.quantize_model(model, config, calibration_tokens)"
        )
    from ..algorithms import quantize_weight

    return quantize_weight(
        w, lp.weight, cfg.method, cfg.weight_range, f"{lp.name}.weight", **dict(cfg.method_options)
    )


def _bias(mod):
    return None if getattr(mod, "bias", None) is None else mod.bias.detach()


def _quant_module(mod: nn.Module, lp: LayerPlan, qt: QTensor, act, dynamic: str | None):
    """The quantized replacement of one (float or fake-quant) layer."""
    if isinstance(mod, (nn.Embedding, FakeQuantEmbedding)):
        return QuantEmbedding(qt, mod.padding_idx)
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, FakeQuantConv)):
        geo = mod.conv if isinstance(mod, FakeQuantConv) else conv_args(mod)
        return QuantConv(qt, tuple(mod.weight.shape), geo, _bias(mod), act)
    if dynamic is not None:
        return DynamicQuantLinear(qt, _bias(mod), lp.activation, per_token=dynamic == "per_token")
    return QuantLinear(qt, _bias(mod), act)


def _convert_plain(
    model: nn.Module, config: QuantConfig, workflow: str, weights: dict | None = None
) -> nn.Module:
    m, p, folded = _prepared_copy(model, config, workflow)
    info, cache = QuantInfo(workflow, p, folded=folded), _WeightCache()
    for lp in bar(p.quantized(), desc=f"quantize ({workflow})", unit="layer"):
        mod = get_module(m, lp.name)
        qt = (
            weights[lp.name]
            if weights and lp.name in weights
            else cache.get(mod.weight, lp, info.notes)
        )
        dyn = _dynamic_mode(lp, config) if workflow == "dynamic" else None
        if dyn and isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            info.notes.setdefault(lp.name, "dynamic: convolutions run weight-only")
        set_module(m, lp.name, _quant_module(mod, lp, qt, None, dyn))
    m.cuantiza_info = info
    return m.eval()


def _dynamic_mode(lp: LayerPlan, config: QuantConfig) -> str:
    """``"per_token"`` or ``"per_tensor"`` for a dynamic layer, from its own config (overrides
    included), ``dynamic="auto"`` resolved."""
    per_token = (lp.config or config).dynamic_activation()[1]
    return "per_token" if per_token else "per_tensor"


def quantize_weights(model: nn.Module, config: QuantConfig = QuantConfig()) -> nn.Module:
    """Weight-only quantization at any bits 1..8; activations stay float. ``config.method``
    "rtn" or "hqq" (GPTQ and AWQ need calibration data: ``cuantiza.llm.quantize_model``)."""
    _data_free(config)
    return _convert_plain(model, config, "weight_only")


def _data_free(config: QuantConfig) -> None:
    if config.method in CALIBRATED_METHODS:
        raise PlanError(
            f"method {config.method!r} needs calibration data; use "
            "cuantiza.llm.quantize_model(model, config, calibration_tokens)"
        )


def convert_with_weights(model: nn.Module, config: QuantConfig, weights: dict) -> nn.Module:
    """Weight-only conversion where some layers' QTensors were made already (GPTQ, by name);
    the other planned layers are quantized by ``config.method``."""
    return _convert_plain(model, config, "weight_only", weights)


def quantize_dynamic(model: nn.Module, config: QuantConfig = QuantConfig()) -> nn.Module:
    """Weights quantized now; Linear activations quantized per batch at run time."""
    _data_free(config)
    return _convert_plain(model, config, "dynamic")


def _fake_module(mod: nn.Module, lp: LayerPlan) -> nn.Module:
    if isinstance(mod, nn.Embedding):
        return FakeQuantEmbedding(mod, lp)
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        return FakeQuantConv(mod, lp)
    return FakeQuantLinear(mod, lp)


def _prepare(model, config, workflow):
    m, p, folded = _prepared_copy(model, config, workflow)
    for lp in p.quantized():
        set_module(m, lp.name, _fake_module(get_module(m, lp.name), lp))
    m.cuantiza_info = QuantInfo(workflow, p, folded=folded)
    return m


def prepare(model: nn.Module, config: QuantConfig = QuantConfig()) -> nn.Module:
    """Static PTQ, step 1: a copy with observers on each quantized layer's input."""
    return _prepare(model, config, "static").eval()


def prepare_qat(model: nn.Module, config: QuantConfig = QuantConfig()) -> nn.Module:
    """QAT: a copy whose layers simulate quantization (straight-through gradients) while their
    observers follow the activations in training mode. Train it, then ``convert``."""
    m = _prepare(model, config, "qat")
    for mod in fake_modules(m):
        mod.fake_quant = True
    return m.train(model.training)


def fake_modules(model: nn.Module) -> list:
    return [mod for mod in model.modules() if isinstance(mod, FAKE)]


def _require_prepared(model: nn.Module) -> list:
    mods = fake_modules(model)
    if not mods:
        raise PlanError("this model was not made by prepare() or prepare_qat()")
    return mods


def _run(model: nn.Module, batch) -> None:
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


def calibrate(prepared: nn.Module, batches: Iterable, max_batches: int | None = None) -> nn.Module:
    """Static PTQ, step 2: run calibration batches (tensors, tuples of args, or dicts of
    kwargs) through the prepared model; observers keep bounded streaming statistics."""
    mods = _require_prepared(prepared)
    if batches is None or (hasattr(batches, "__len__") and len(batches) == 0):
        raise CalibrationError("no calibration data: pass a non-empty iterable of batches")
    total = len(batches) if hasattr(batches, "__len__") else None
    n = 0
    for mod in mods:
        mod.calibrating = True
    try:
        with torch.no_grad():
            for batch in bar(batches, desc="calibrate", total=total, unit="batch"):
                _run(prepared, batch)
                n += 1
                if max_batches is not None and n >= max_batches:
                    break
    finally:
        for mod in mods:
            mod.calibrating = False
    if n == 0:
        raise CalibrationError("the calibration iterable yielded no batches")
    return prepared


def simulate(prepared: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch a prepared model to its fake-quant forward (observers off): what convert() gives."""
    for mod in _require_prepared(prepared):
        mod.fake_quant = enabled
        mod.observing = not enabled and mod.ascheme is not None
    return prepared


def freeze_observers(model: nn.Module) -> nn.Module:
    """QAT: stop moving activation ranges (they stay as observed so far)."""
    for mod in _require_prepared(model):
        mod.observing = False
    return model


def _unfed(mods: list) -> list:
    return [
        m.layer_plan.name for m in mods if m.act_observer is not None and m.act_observer.n_seen == 0
    ]


def convert(prepared: nn.Module, unobserved: str = "error") -> nn.Module:
    """Static PTQ step 3 / end of QAT: integer modules with the observed activation ranges.
    Layers whose observer saw no data raise CalibrationError listing them, or stay float with
    ``unobserved="float"`` (listed in the report)."""
    mods = _require_prepared(prepared)
    unfed = _unfed(mods)
    if unfed and unobserved != "float":
        raise CalibrationError(
            f"{len(unfed)} layer(s) saw no calibration data: {', '.join(unfed)}; feed batches that "
            "reach them, exclude them, or convert(..., unobserved='float')"
        )
    m = copy_model(prepared)
    old = prepared.cuantiza_info
    info, cache = (
        QuantInfo(old.workflow, old.plan, dict(old.notes), list(old.folded)),
        _WeightCache(),
    )
    for fm in fake_modules(m):
        lp = fm.layer_plan
        name = lp.name
        if name in unfed:
            set_module(m, name, _float_module(fm))
            info.notes[name] = "no calibration data reached it: kept in float"
            continue
        if fm.act_observer is not None:
            info.observers[name] = {
                k: getattr(fm.act_observer, k) for k in ("n_seen", "n_nan", "n_inf")
            }
        act = fm.act_qparams() if fm.ascheme is not None else None
        set_module(m, name, _quant_module(fm, lp, cache.get(fm.weight, lp, info.notes), act, None))
    m.cuantiza_info = info
    return m.eval()


def _float_module(fm) -> nn.Module:
    """A fake-quant wrapper with both switches off computes exactly its float layer."""
    fm.fake_quant = fm.observing = False
    return fm
