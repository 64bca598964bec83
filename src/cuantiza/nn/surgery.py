"""The only code that changes a model's structure: replacing submodules, folding BatchNorm.

Callers pass a copy (``copy_model``); the user's model is never modified.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn


def copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(get_module(model, parent_name), child, new)


def fold_bn_into_conv(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """W' = W * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta, in place
    on ``conv`` (float64 math, one rounding back to the weight's dtype)."""
    w = conv.weight.detach().to(torch.float64)
    mean, var = bn.running_mean.to(torch.float64), bn.running_var.to(torch.float64)
    gamma = bn.weight.detach().to(torch.float64) if bn.affine else torch.ones_like(mean)
    beta = bn.bias.detach().to(torch.float64) if bn.affine else torch.zeros_like(mean)
    k = gamma / torch.sqrt(var + bn.eps)
    b = conv.bias.detach().to(torch.float64) if conv.bias is not None else torch.zeros_like(mean)
    shape = (-1,) + (1,) * (w.ndim - 1)
    conv.weight = nn.Parameter((w * k.reshape(shape)).to(conv.weight.dtype))
    conv.bias = nn.Parameter(((b - mean) * k + beta).to(conv.weight.dtype))


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where a BatchNorm directly follows a conv whose output feeds
    nothing else. Uses torch.fx when the model traces, else adjacent children of Sequentials."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001  (models with data-dependent control flow don't trace)
        return _sequential_pairs(model)
    mods = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(
            mods.get(node.target), nn.modules.batchnorm._BatchNorm
        ):
            continue
        src = node.args[0]
        if (
            getattr(src, "op", None) == "call_module"
            and isinstance(mods.get(src.target), (nn.Conv1d, nn.Conv2d))
            and len(src.users) == 1
        ):
            pairs.append((src.target, node.target))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Sequential):
            kids = list(mod.named_children())
            for (a, ma), (b, mb) in itertools.pairwise(kids):
                if isinstance(ma, (nn.Conv1d, nn.Conv2d)) and isinstance(
                    mb, nn.modules.batchnorm._BatchNorm
                ):
                    pre = f"{name}." if name else ""
                    pairs.append((pre + a, pre + b))
    return pairs


def fold_batchnorm(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every conv -> BatchNorm pair in ``model`` (in place; pass a copy). Returns the pairs."""
    pairs = conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        fold_bn_into_conv(get_module(model, conv_name), get_module(model, bn_name))
        set_module(model, bn_name, nn.Identity())
    return pairs
