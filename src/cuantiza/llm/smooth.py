"""SmoothQuant for W8A8 decoders: move activation outliers into the weights, then quantize.

Per group of linears sharing an input (q/k/v, o, gate/up, down, and the head), the per-channel
max |x| over the calibration windows gives s_j = max|x_j|^alpha / max|W_:j|^(1-alpha)
(``algorithms.smoothquant``); x is divided by s (folded into the RMSNorm or the previous
linear's rows) and the weights' columns multiplied by it. The float function is unchanged;
per-tensor int8 activations then lose far less to the few channels that dwarf the rest.
The layers run in float, so statistics are gathered layer by layer in one pass.

>>> # smoothed = smooth_model(model, tokens); qm = cz.quantize_dynamic(smoothed, w8a8_config)
"""

from __future__ import annotations

import torch
from torch import nn

from ..algorithms.smoothquant import ActAbsMax, smooth_scales
from ..nn.surgery import copy_model
from ..progress import bar
from .blocks import decoder_parts, feed, first_layer_inputs, layer_groups, run_layer
from .calibrated import calibration_batches, fold_scales


def _smooth_group(layer, names, prev_name, hidden, kwargs, alpha: float, where: str) -> None:
    if prev_name is None:
        return
    mods = [layer.get_submodule(n) for n in names]
    prev = layer.get_submodule(prev_name)
    if isinstance(prev, nn.Linear) and prev.out_features != mods[0].in_features:
        return  # grouped-query attention: v rows != o columns
    stats = ActAbsMax(mods[0].in_features, name=f"{where}.{names[0]}")
    feed(layer, {names[0]: mods[0]}, hidden, kwargs, lambda _n, x: stats.add(x))
    s = smooth_scales(
        stats, [m.weight.detach().float() for m in mods], alpha, name=f"{where}.{names[0]}"
    )
    fold_scales(prev, mods, s)


@torch.no_grad()
def smooth_model(
    model: nn.Module,
    calibration,
    alpha: float = 0.5,
    *,
    seq_len: int = 256,
    n_samples: int = 128,
    batch_size: int = 8,
) -> nn.Module:
    """A float copy of the LLaMA-style ``model`` with SmoothQuant scales folded in (the same
    function, easier activations); quantize it with ``cz.quantize_dynamic`` for W8A8."""
    batches = calibration_batches(calibration, seq_len, n_samples, batch_size)
    m = copy_model(model).float().eval()
    dec = decoder_parts(m)
    hidden, kwargs = first_layer_inputs(dec, batches)
    for i, layer in enumerate(bar(dec.layers, desc="smoothquant layers", unit="layer")):
        for names, prev in layer_groups(layer):
            _smooth_group(layer, names, prev, hidden, kwargs, alpha, f"{dec.prefix}.{i}")
        hidden = run_layer(layer, hidden, kwargs)
    if hasattr(dec.norm, "weight") and dec.lm_head.weight is not dec.embed.weight:
        stats = ActAbsMax(dec.lm_head.in_features, name="lm_head")
        for h in hidden:
            stats.add(dec.norm(h))
        fold_scales(
            dec.norm,
            [dec.lm_head],
            smooth_scales(stats, [dec.lm_head.weight.float()], alpha, name="lm_head"),
        )
    return m
