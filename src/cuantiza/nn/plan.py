"""plan(model, config): which modules get which scheme, and why the others stay float.

Reads the model only. Everything that can be checked before long work is checked here:
unsupported dtypes and devices, NaN/Inf weights, group sizes that do not divide a layer.

>>> import torch.nn as nn
>>> model = nn.Sequential(nn.Linear(8, 4), nn.LayerNorm(4))
>>> print(plan(model, QuantConfig()))  # doctest: +NORMALIZE_WHITESPACE
Plan (static): 1 quantized, 1 float
  0  Linear     int8-sym-per-channel(axis=0) / act int8-asym-per-tensor
  1  LayerNorm  float: LayerNorm is not a supported layer type
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from ..core.quantize import check_finite
from ..core.scheme import PerChannel, PerGroup, QScheme
from ..errors import PlanError, UnsupportedDtypeError
from .config import QuantConfig

SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
WORKFLOWS = ("static", "dynamic", "weight_only", "qat")


@dataclass(frozen=True)
class LayerPlan:
    name: str
    kind: str  # the module's class name
    weight: QScheme | None  # None: stays float
    activation: QScheme | None  # None: weight-only (float activations)
    reason: str = ""  # why it stays float, or a note about a fallback
    config: QuantConfig | None = None

    @property
    def quantized(self) -> bool:
        return self.weight is not None


@dataclass(frozen=True)
class Plan:
    workflow: str
    layers: tuple

    def quantized(self) -> list[LayerPlan]:
        return [lp for lp in self.layers if lp.quantized]

    def skipped(self) -> list[LayerPlan]:
        return [lp for lp in self.layers if not lp.quantized]

    def __getitem__(self, name: str) -> LayerPlan:
        return next(lp for lp in self.layers if lp.name == name)

    def __str__(self) -> str:
        q, f = len(self.quantized()), len(self.skipped())
        lines = [f"Plan ({self.workflow}): {q} quantized, {f} float"]
        width = max((len(lp.name) for lp in self.layers), default=0)
        kw = max((len(lp.kind) for lp in self.layers), default=0)
        for lp in self.layers:
            if lp.quantized:
                act = f" / act {lp.activation.describe()}" if lp.activation else " / weight-only"
                what = lp.weight.describe() + act + (f" ({lp.reason})" if lp.reason else "")
            else:
                what = f"float: {lp.reason}"
            lines.append(f"  {lp.name:<{width}}  {lp.kind:<{kw}}  {what}")
        return "\n".join(lines)


def _reduction_len(mod: nn.Module) -> int:
    w = mod.weight
    return w.shape[1] if isinstance(mod, (nn.Linear, nn.Embedding)) else w[0].numel()


def _weight_scheme(name: str, mod: nn.Module, cfg: QuantConfig) -> tuple[QScheme, str]:
    """The weight scheme for a layer, with the group-remainder policy applied."""
    return weight_scheme(name, _reduction_len(mod), cfg)


def weight_scheme(name: str, k: int, cfg: QuantConfig) -> tuple[QScheme, str]:
    """The weight scheme for a layer whose rows reduce over ``k`` elements, with the
    group-remainder policy applied; (scheme, note). Also used for ONNX graphs."""
    s = cfg.weight
    g = s.granularity
    if isinstance(g, PerGroup):
        if g.size > k and cfg.group_remainder != "error":
            return dataclasses.replace(
                s, granularity=PerChannel(0)
            ), f"group {g.size} > {k} columns: per-channel"
        if k % g.size:
            if cfg.group_remainder == "error":
                raise PlanError(
                    f"{name}: {k} columns are not a multiple of group size {g.size}; set "
                    "group_remainder='pad' (a shorter last group) or "
                    "group_remainder='per_channel' (per-channel scales for it), or exclude it"
                )
            if cfg.group_remainder == "per_channel":
                return dataclasses.replace(
                    s, granularity=PerChannel(0)
                ), f"{k} % {g.size} != 0: per-channel"
            return s, f"{k} % {g.size} != 0: last group padded"
    if isinstance(g, PerChannel) and g.axis != 0:
        return dataclasses.replace(
            s, granularity=PerChannel(0)
        ), "weights use output channels (axis 0)"
    return s, ""


def _layer(name: str, mod: nn.Module, cfg: QuantConfig | None, workflow: str) -> LayerPlan:
    kind = type(mod).__name__
    float_plan = lambda why: LayerPlan(name, kind, None, None, why)  # noqa: E731
    if cfg is None:
        return float_plan("excluded by config")
    if not isinstance(mod, SUPPORTED) or isinstance(
        mod, nn.modules.linear.NonDynamicallyQuantizableLinear
    ):
        return float_plan(f"{kind} is not a supported layer type")
    if isinstance(mod, nn.Embedding) and not cfg.quantize_embeddings:
        return float_plan("embeddings kept in float by config")
    w = mod.weight
    if w.is_complex():
        return float_plan(f"complex weights ({w.dtype}) are not quantized")
    if w.device.type == "meta":
        raise UnsupportedDtypeError(
            f"{name}.weight is on the meta device; materialize the model first"
        )
    if not w.is_floating_point():
        return float_plan(f"integer weights ({w.dtype}) are already quantized or not weights")
    check_finite(w.detach(), f"{name}.weight")
    wscheme, note = _weight_scheme(name, mod, cfg)
    act = None if workflow == "weight_only" or isinstance(mod, nn.Embedding) else cfg.activation
    if workflow == "dynamic" and act is not None:
        act = cfg.dynamic_activation()[0]  # what the layer will run (``dynamic="auto"``)
    if act is not None and isinstance(wscheme.granularity, PerGroup):
        raise PlanError(
            f"{name}: integer activations need per-tensor or per-channel weight scales, "
            "not per-group; use quantize_weights for per-group weights"
        )
    return LayerPlan(name, kind, wscheme, act, note, cfg)


def plan(model: nn.Module, config: QuantConfig, workflow: str = "static") -> Plan:
    """Decide, for every leaf module with parameters, its weight and activation schemes."""
    if workflow not in WORKFLOWS:
        raise PlanError(f"workflow must be one of {WORKFLOWS}, got {workflow!r}")
    if workflow in ("static", "dynamic", "qat") and config.activation is None:
        raise PlanError(
            f"the {workflow} workflow needs an activation scheme; use quantize_weights for "
            "weight-only"
        )
    layers = []
    for name, mod in model.named_modules():
        if not name or next(mod.children(), None) is not None:
            continue
        done = _already_quantized(mod)
        if done:  # FAULTS 23: never quantize twice
            layers.append(LayerPlan(name, type(mod).__name__, None, None, done))
        elif any(True for _ in mod.parameters(recurse=False)):
            layers.append(_layer(name, mod, config.resolve(name), workflow))
    if not any(lp.quantized for lp in layers):
        if any(lp.reason.startswith("already quantized") for lp in layers):
            raise PlanError("this model is already quantized; start from the float model")
        raise PlanError("no layer can be quantized: check include/exclude globs and layer types")
    return Plan(workflow, tuple(layers))


def _already_quantized(mod: nn.Module) -> str:
    """A reason if ``mod`` holds quantized weights already (cuantiza's or torch.ao's), else ''."""
    if hasattr(mod, "weight_q") or hasattr(mod, "layer_plan"):
        return "already quantized by cuantiza: left as it is"
    if type(mod).__module__.startswith(
        ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")
    ):
        return f"already quantized ({type(mod).__module__}): left as it is"
    return ""
