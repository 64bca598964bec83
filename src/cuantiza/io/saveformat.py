"""The save format, version 1: quantized modules <-> JSON entries + named tensors.

Pure translation, no files (``io`` reads and writes them). One entry per quantized module::

    "features.0": {
      "type": "QuantConv",           # QuantLinear | DynamicQuantLinear | QuantConv | QuantEmbedding
      "weight": {"scheme": SCHEME, "shape": [8, 9],          # logical (rows, reduction) shape
                 "data": "features.0.weight_q.data",         # uint8, packed codes
                 "scale": "features.0.weight_q.scale",       # in the scheme's scale_dtype
                 "zero_point": null},                        # null: symmetric, all zero
      "bias": "features.0.bias",                 # a state_dict key (see io), or null
      "act": {"scheme": SCHEME, "scale": "features.0.act.scale",
              "zero_point": "features.0.act.zero_point"},    # static layers; null: weight-only
      "kernel": "f32exact",
      "conv": {"kernel_shape": [8, 1, 3, 3], "stride": [1, 1], "padding": [1, 1],
               "dilation": [1, 1], "groups": 1, "dims": 2}}
    SCHEME = {"bits": 4, "symmetric": false, "scale_dtype": "float16",
              "granularity": {"kind": "per_group", "size": 32, "axis": -1}}

``DynamicQuantLinear`` has ``"dynamic": {"act_scheme": SCHEME, "per_token": bool}`` instead
of ``act``; ``QuantEmbedding`` has only ``type``, ``weight`` and ``padding_idx``. Zero points
are stored as uint8 (they lie in [0, 255] for 1..8 bits) and left out when symmetric, so the
file holds what ``QTensor.nbytes`` counts. Modules sharing one QTensor (tied weights) get the
same ``weight`` entry, so the tensors are stored once and ``modules_from_json`` shares them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.qparams import QParams
from ..core.qtensor import QTensor
from ..core.scheme import PerChannel, PerGroup, PerTensor, QScheme
from ..errors import PlanError, ShapeError
from ..nn import DynamicQuantLinear, QuantConv, QuantEmbedding, QuantLinear
from ..nn.fake import FakeQuantConv, FakeQuantEmbedding, FakeQuantLinear
from ..nn.layer_math import conv_args
from ..nn.plan import LayerPlan, Plan

FORMAT = "cuantiza"
FORMAT_VERSION = 1
TENSORS, MANIFEST = "model.safetensors", "cuantiza.json"  # the files of a save

# saved type -> (class, the float layer types it replaces)
MODULE_TYPES = {
    "QuantLinear": (QuantLinear, (nn.Linear,)),
    "DynamicQuantLinear": (DynamicQuantLinear, (nn.Linear,)),
    "QuantConv": (QuantConv, (nn.Conv1d, nn.Conv2d)),
    "QuantEmbedding": (QuantEmbedding, (nn.Embedding,)),
}


def module_tree(model: nn.Module) -> dict[str, str]:
    """The manifest's optional ``"tree"``: every module's name (the model itself is "") -> its
    class name, parameterless modules included, so that ``load`` can refuse a skeleton that
    differs even where the state_dict does not show it (an extra activation, FAULTS 40). A
    fake-quant module that convert left in float (``unobserved="float"``) computes as its float
    layer and loads as one: it is recorded as that layer."""
    return {name: _class_name(mod) for name, mod in model.named_modules()}


def _class_name(mod: nn.Module) -> str:
    if isinstance(mod, FakeQuantLinear):
        return "Linear"
    if isinstance(mod, FakeQuantEmbedding):
        return "Embedding"
    if isinstance(mod, FakeQuantConv):
        return f"Conv{mod.conv['dims']}d"
    return type(mod).__name__


def tree_differences(saved: dict, model: dict) -> list[str]:
    """What differs between two ``module_tree``s, as short phrases (empty when equal)."""
    out = [f"{n or '(the model)'} ({model[n]}) only in the model" for n in model if n not in saved]
    out += [f"{n or '(the model)'} ({saved[n]}) only in the save" for n in saved if n not in model]
    out += [
        f"{n or '(the model)'} is a {model[n]} in the model, a {saved[n]} in the save"
        for n in model
        if n in saved and saved[n] != model[n]
    ]
    return out


def scheme_to_json(s: QScheme) -> dict:
    g = s.granularity
    if isinstance(g, PerTensor):
        gran = {"kind": "per_tensor"}
    elif isinstance(g, PerChannel):
        gran = {"kind": "per_channel", "axis": g.axis}
    else:
        gran = {"kind": "per_group", "size": g.size, "axis": g.axis}
    d = {
        "bits": s.bits,
        "symmetric": s.symmetric,
        "granularity": gran,
        "scale_dtype": s.scale_dtype,
    }
    if not s.restricted:
        d["restricted"] = False  # written only when set: older files stay as they were
    return d


def scheme_from_json(d: dict) -> QScheme:
    """Raises ConfigError (invalid values) or KeyError (missing fields)."""
    g = d["granularity"]
    kinds = {
        "per_tensor": lambda: PerTensor(),
        "per_channel": lambda: PerChannel(g["axis"]),
        "per_group": lambda: PerGroup(g["size"], g["axis"]),
    }
    return QScheme(
        bits=d["bits"],
        symmetric=d["symmetric"],
        granularity=kinds[g["kind"]](),
        scale_dtype=d["scale_dtype"],
        restricted=d.get("restricted", True),
    )


def _stored_zero_point(qp: QParams) -> torch.Tensor | None:
    """None for symmetric all-zero zero points; uint8 when they fit (always for 1..8 bits)."""
    zp = qp.zero_point
    if qp.scheme.symmetric and zp.shape == qp.scale.shape and not bool(zp.any()):
        return None
    if zp.numel() == 0 or (int(zp.min()) >= 0 and int(zp.max()) <= 255):
        return zp.to(torch.uint8)
    return zp.to(torch.int32)


def _qparams_entry(qp: QParams, prefix: str, tensors: dict) -> dict:
    tensors[f"{prefix}.scale"] = qp.scale
    zp = _stored_zero_point(qp)
    if zp is not None:
        tensors[f"{prefix}.zero_point"] = zp
    return {
        "scheme": scheme_to_json(qp.scheme),
        "scale": f"{prefix}.scale",
        "zero_point": None if zp is None else f"{prefix}.zero_point",
    }


def _qparams_from_entry(e: dict, tensors: dict) -> QParams:
    scheme = scheme_from_json(e["scheme"])
    scale = tensors[e["scale"]]
    if scale.dtype != scheme.torch_scale_dtype:
        raise ValueError(f"{e['scale']} is {scale.dtype}, its scheme says {scheme.scale_dtype}")
    if e["zero_point"] is None:
        zp = torch.zeros(scale.shape, dtype=torch.int32)
    else:
        zp = tensors[e["zero_point"]].to(torch.int32)
    return QParams(scale, zp, scheme)


def weight_entry(qt: QTensor, module_name: str, tensors: dict) -> dict:
    """The ``weight`` entry of module ``module_name``'s QTensor; its tensors go into ``tensors``."""
    prefix = f"{module_name}.weight_q"
    tensors[f"{prefix}.data"] = qt.data
    e = _qparams_entry(qt.qparams, prefix, tensors)
    return {**e, "shape": list(qt.shape), "data": f"{prefix}.data"}


def embedding_entry(weight: dict, padding_idx: int | None) -> dict:
    """The entry of a ``QuantEmbedding`` holding the weight entry ``weight``."""
    return {"type": "QuantEmbedding", "weight": weight, "padding_idx": padding_idx}


def weight_only_linear_entry(weight: dict, bias: str | None) -> dict:
    """The entry of a weight-only ``QuantLinear`` (``bias``: the state key of its bias, or None)."""
    return {
        "type": "QuantLinear",
        "weight": weight,
        "bias": bias,
        "kernel": "dequantize",
        "act": None,
    }


def module_to_json(name: str, mod: nn.Module, tensors: dict, shared: dict) -> dict:
    """The entry of one quantized module; its tensors go into ``tensors``. ``shared`` maps
    id(QTensor) -> weight entry, so a QTensor used by several modules is stored once."""
    qt = mod.weight_q
    if id(qt) not in shared:
        shared[id(qt)] = weight_entry(qt, name, tensors)
    if isinstance(mod, QuantEmbedding):
        return embedding_entry(shared[id(qt)], mod.padding_idx)
    bias = None if mod.bias is None else f"{name}.bias"
    if isinstance(mod, QuantLinear) and mod.act is None:
        return weight_only_linear_entry(shared[id(qt)], bias)
    e = {"type": type(mod).__name__, "weight": shared[id(qt)], "bias": bias, "kernel": mod.kernel}
    if isinstance(mod, DynamicQuantLinear):
        e["dynamic"] = {"act_scheme": scheme_to_json(mod.act_scheme), "per_token": mod.per_token}
    else:
        e["act"] = None if mod.act is None else _qparams_entry(mod.act, f"{name}.act", tensors)
    if isinstance(mod, QuantConv):
        e["conv"] = {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in mod.conv.items()},
            "kernel_shape": list(mod.weight_shape),
        }
    return e


def weight_from_entry(w: dict, tensors: dict, cache: dict) -> QTensor:
    """The QTensor of a weight entry; entries naming the same data share one QTensor."""
    if w["data"] not in cache:
        cache[w["data"]] = QTensor(
            tensors[w["data"]], _qparams_from_entry(w, tensors), tuple(w["shape"])
        )
    return cache[w["data"]]


def module_from_json(e: dict, tensors: dict, bias: torch.Tensor | None, cache: dict) -> nn.Module:
    """Rebuild one quantized module. Malformed entries raise KeyError / TypeError /
    ValueError (or a CuantizaError from the constructors); ``io`` reports them as corrupt."""
    cls = MODULE_TYPES[e["type"]][0]
    qt = weight_from_entry(e["weight"], tensors, cache)
    if cls is QuantEmbedding:
        return QuantEmbedding(qt, e["padding_idx"])
    kernel = None if e["kernel"] == "dequantize" else e["kernel"]
    if cls is DynamicQuantLinear:
        d = e["dynamic"]
        return DynamicQuantLinear(
            qt, bias, scheme_from_json(d["act_scheme"]), bool(d["per_token"]), kernel
        )
    act = None if e["act"] is None else _qparams_from_entry(e["act"], tensors)
    if cls is QuantLinear:
        return QuantLinear(qt, bias, act, kernel)
    conv = {k: tuple(v) if isinstance(v, list) else v for k, v in e["conv"].items()}
    weight_shape = conv.pop("kernel_shape")  # the conv weight's shape
    return QuantConv(qt, weight_shape, conv, bias, act, kernel)


def check_replaces(name: str, float_mod: nn.Module, qmod: nn.Module) -> None:
    """Raise PlanError / ShapeError unless ``qmod`` can stand in for the user's ``float_mod``."""
    saved = type(qmod).__name__
    want = MODULE_TYPES[saved][1]
    if not isinstance(float_mod, want):
        raise PlanError(
            f"{name}: the save holds a {saved}, which replaces "
            f"{' or '.join(t.__name__ for t in want)}, but the model has a "
            f"{type(float_mod).__name__}; pass an instance of the saved architecture"
        )
    shape = qmod.weight_shape if isinstance(qmod, QuantConv) else qmod.weight_q.shape
    if tuple(float_mod.weight.shape) != tuple(shape):
        raise ShapeError(
            f"{name}: the model's weight is {tuple(float_mod.weight.shape)}, the "
            f"saved one {tuple(shape)}; pass an instance of the saved architecture"
        )
    if isinstance(qmod, QuantEmbedding):
        return
    if (float_mod.bias is None) != (qmod.bias is None):
        has = "has no" if float_mod.bias is None else "has a"
        raise PlanError(f"{name}: the model {has} bias, the save does not agree")
    if isinstance(qmod, QuantConv):
        try:
            geo = conv_args(float_mod)
        except ValueError as e:
            raise PlanError(f"{name}: {e}") from e
        if geo != qmod.conv:
            raise PlanError(f"{name}: the model's convolution is {geo}, the saved one {qmod.conv}")


def plan_to_json(p: Plan | None) -> dict | None:
    if p is None:
        return None
    sch = lambda s: None if s is None else scheme_to_json(s)  # noqa: E731
    return {
        "workflow": p.workflow,
        "layers": [
            {
                "name": lp.name,
                "kind": lp.kind,
                "weight": sch(lp.weight),
                "activation": sch(lp.activation),
                "reason": lp.reason,
            }
            for lp in p.layers
        ],
    }


def plan_from_json(d: dict | None) -> Plan | None:
    """A lightweight Plan: schemes and reasons, without the per-layer QuantConfig."""
    if d is None:
        return None
    sch = lambda s: None if s is None else scheme_from_json(s)  # noqa: E731
    return Plan(
        d["workflow"],
        tuple(
            LayerPlan(
                lp["name"], lp["kind"], sch(lp["weight"]), sch(lp["activation"]), lp["reason"]
            )
            for lp in d["layers"]
        ),
    )
