"""QuantConfig: what to quantize and how, for a whole model, with per-module control.

>>> cfg = QuantConfig(exclude=("classifier*",),
...                   overrides={"features.0": {"weight": QScheme(bits=8)}})
>>> cfg.resolve("classifier.1") is None, cfg.resolve("features.0").weight.bits
(True, 8)

* ``weight``: the weight scheme (default int8 symmetric per output channel).
* ``activation``: the activation scheme for static PTQ, QAT and dynamic quantization (default
  uint8 asymmetric per tensor, for static and QAT; see ``dynamic`` for what dynamic layers take
  when it is left out); ``quantize_weights`` ignores it.
* ``observer``: the range spec for activations; ``weight_range`` the one for weights.
* ``dynamic``: activation ranges at run time: ``"per_tensor"`` or ``"per_token"`` run
  ``activation`` as written; ``"auto"`` (default) runs the scheme that measures best when
  ``activation`` is left out, ``FAST_DYNAMIC_ACTIVATION`` per token (symmetric 7-bit codes: the
  native u8 x s8 GEMM's exact input on AVX2, more accurate on MiniLM than torch.ao's per-tensor
  8-bit and faster, benchmarks/RESULTS.md), and ``activation`` per tensor when it is given.
* ``include`` / ``exclude``: fnmatch globs over module names; ``overrides``: glob -> dict of
  fields to change for matching modules (later globs win), or ``None`` to keep them in float.
* ``group_remainder``: what to do when a layer's reduction length is not a multiple of the
  group size: ``"error"`` (default, caught at plan time), ``"pad"`` (a shorter last group) or
  ``"per_channel"`` (fall back to per-channel scales for that layer; the plan lists it).
* ``fold_bn``: fold BatchNorm into the preceding convolution before quantizing.
* ``method``: how weights are rounded: ``"rtn"`` (round to nearest over the ``weight_range``
  clipping), ``"hqq"`` (data-free optimisation of scale and zero point per group), ``"gptq"``
  (Hessian-based error compensation) or ``"awq"`` (activation-aware scaling, then rounding);
  the last two need calibration data (``cuantiza.llm``). ``method_options`` passes settings to
  the method (e.g. ``{"damp": 0.01, "act_order": True}`` for GPTQ).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from ..core.range_specs import MinMax, RangeSpec
from ..core.scheme import PerChannel, PerTensor, QScheme
from ..errors import ConfigError

DYNAMIC_MODES = ("auto", "per_tensor", "per_token")
DEFAULT_ACTIVATION = QScheme(bits=8, symmetric=False, granularity=PerTensor())
# codes |q| <= 63 (+ 64 as u8): vpmaddubsw's int16 pair sums cannot saturate, so the native GEMM is
# exact without VNNI; per-token ranges win back the bit (bench_minilm.py: cosine above torch.ao's)
FAST_DYNAMIC_ACTIVATION = QScheme(bits=7, symmetric=True)
REMAINDER_MODES = ("error", "pad", "per_channel")
METHODS = ("rtn", "hqq", "gptq", "awq")
CALIBRATED_METHODS = ("gptq", "awq")


@dataclass(frozen=True)
class QuantConfig:
    weight: QScheme = QScheme(bits=8, symmetric=True, granularity=PerChannel(0))
    activation: QScheme | None = DEFAULT_ACTIVATION
    observer: RangeSpec = MinMax()
    weight_range: RangeSpec = MinMax()
    dynamic: str = "auto"
    include: tuple = ("*",)
    exclude: tuple = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    group_remainder: str = "error"
    fold_bn: bool = True
    quantize_embeddings: bool = True
    method: str = "rtn"
    method_options: Mapping[str, Any] = field(default_factory=dict)
    # whether ``activation`` was left out (the default object itself), decided once when built:
    # a copy keeps it, and ``dataclasses.replace`` passes the same object on, so it survives both
    # (compared: two configs that run different schemes are not equal)
    activation_left_out: bool = field(init=False, repr=False, default=False)

    def __post_init__(self):
        object.__setattr__(self, "activation_left_out", self.activation is DEFAULT_ACTIVATION)
        if not isinstance(self.weight, QScheme):
            raise ConfigError(f"weight must be a QScheme, got {self.weight!r}")
        if self.activation is not None and not isinstance(self.activation, QScheme):
            raise ConfigError(f"activation must be a QScheme or None, got {self.activation!r}")
        if self.activation is not None and not isinstance(self.activation.granularity, PerTensor):
            raise ConfigError(
                "activation schemes are per-tensor (dynamic='per_token' for per-row ranges)"
            )
        if self.activation is not None and self.activation.binary:
            raise ConfigError("1-bit activations are not supported; use 2..8 bits")
        if self.dynamic not in DYNAMIC_MODES:
            raise ConfigError(f"dynamic must be one of {DYNAMIC_MODES}, got {self.dynamic!r}")
        if self.group_remainder not in REMAINDER_MODES:
            raise ConfigError(
                f"group_remainder must be one of {REMAINDER_MODES}, got {self.group_remainder!r}"
            )
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("include", "exclude"):
            v = getattr(self, name)
            object.__setattr__(self, name, (v,) if isinstance(v, str) else tuple(v))
        fields = {f.name for f in dataclasses.fields(self) if f.init} - {
            "include",
            "exclude",
            "overrides",
        }
        for glob, change in dict(self.overrides).items():
            if change is not None and not set(change) <= fields:
                raise ConfigError(
                    f"override {glob!r} sets unknown fields {sorted(set(change) - fields)}"
                )

    def dynamic_activation(self) -> tuple[QScheme | None, bool]:
        """(scheme, per_token) that dynamic layers run: ``activation`` as written under
        ``"per_tensor"`` / ``"per_token"``; under ``"auto"`` the fast per-token scheme if
        ``activation`` was left out, else ``activation`` per tensor."""
        if self.dynamic == "auto":
            if self.activation_left_out:
                return FAST_DYNAMIC_ACTIVATION, True
            return self.activation, False
        return self.activation, self.dynamic == "per_token"

    def resolve(self, name: str) -> QuantConfig | None:
        """The config that applies to module ``name``, or None to keep it in float."""
        if not any(fnmatchcase(name, g) for g in self.include):
            return None
        if any(fnmatchcase(name, g) for g in self.exclude):
            return None
        cfg = self
        for glob, change in dict(self.overrides).items():
            if fnmatchcase(name, glob):
                if change is None:
                    return None
                cfg = dataclasses.replace(cfg, **change)
        return cfg


def check_excludes(config: QuantConfig, names, what: str = "layer") -> None:
    """ConfigError naming each ``exclude`` pattern that matches none of ``names`` (the layers a
    plan considers): a pattern that excludes nothing is a typo (FAULTS 37). Used by the file
    workflows (checkpoint folders, ONNX graphs), whose layer names the user cannot list."""
    names = list(names)
    unused = [g for g in config.exclude if not any(fnmatchcase(n, g) for n in names)]
    if unused:
        shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
        raise ConfigError(
            f"the exclude pattern {unused[0]!r} matches no {what}"
            + (f" (nor do {unused[1:]})" if len(unused) > 1 else "")
            + f"; {what} names look like {shown or 'nothing: there are none'} (fnmatch globs "
            "over the whole name: * stands for any characters)"
        )
