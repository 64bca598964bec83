"""GPTQ and AWQ over a whole decoder, one layer at a time (``quantize_model``).

GPTQ ("true sequential", as in the reference implementation): within each layer the groups of
linears that share an input (q/k/v, o, gate/up, down) are taken in execution order; each
group's Hessian is gathered from inputs computed with the earlier groups already quantized,
so every layer corrects the error of everything before it. The layer's quantized outputs are
the next layer's inputs. The head is quantized last, on the final norm's outputs.

AWQ: per group, a per-input-channel scale s is searched on the calibration inputs
(``algorithms.awq``) and folded into the op in front (RMSNorm weight, or the rows of the
previous linear) while the group's weights take s; the float function is unchanged, the
rounding error moves away from the channels the activations make large. The scaled model is
then rounded to nearest with ``config.weight_range`` (``MSE()`` adds the clipping search).
"""

from __future__ import annotations

import dataclasses
import numbers
import time

import torch
from torch import nn

from ..errors import CalibrationError, ConfigError
from ..nn.config import CALIBRATED_METHODS, QuantConfig
from ..nn.plan import plan
from ..nn.surgery import copy_model
from ..progress import bar
from .blocks import Decoder, decoder_parts, feed, first_layer_inputs, layer_groups, run_layer

AWQ_ROWS = 8192  # calibration rows (tokens) the AWQ search uses per group


def calibration_batches(
    tokens: torch.Tensor, seq_len: int = 256, n_samples: int = 128, batch_size: int = 8
) -> list[torch.Tensor]:
    """Batches of ``seq_len``-token windows cut from a 1-D token stream (or rows of a 2-D
    one), at most ``n_samples`` windows, in order (deterministic). Checked first (FAULTS 37):
    whole numbers ``seq_len >= 2``, ``n_samples >= 1``, ``batch_size >= 1``; integer ids."""
    for name, v, lo in (
        ("seq_len", seq_len, 2),
        ("n_samples", n_samples, 1),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise ConfigError(f"{name} must be a whole number >= {lo}, got {v!r}")
    t = torch.as_tensor(tokens)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.dim() not in (1, 2):
        raise CalibrationError(
            "calibration must be integer token ids, 1-D (a stream) or 2-D (windows, tokens); "
            f"got {t.dtype} of shape {tuple(t.shape)}"
        )
    if t.dim() == 1:
        n = t.numel() // seq_len
        t = t[: n * seq_len].reshape(n, seq_len)
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] < 2:
        raise CalibrationError(
            f"calibration text is too short: need at least one window of {seq_len} "
            f"tokens, got {tuple(torch.as_tensor(tokens).shape)}; give more text or a smaller "
            "seq_len"
        )
    t = t[:n_samples].long()
    if t.shape[0] <= batch_size:
        return [t]
    n = t.shape[0] - t.shape[0] % batch_size  # equal shapes: one set of layer kwargs
    return [t[i : i + batch_size] for i in range(0, n, batch_size)]


def _set_weight(mod: nn.Linear, w: torch.Tensor) -> None:
    mod.weight.data = w.to(mod.weight.dtype).reshape(mod.weight.shape).contiguous()


def gptq_group(layer, names, hidden, kwargs, plans: dict, prefix: str, options: dict) -> dict:
    from ..algorithms.gptq import gptq
    from ..algorithms.hessian import Hessian

    mods = {n: layer.get_submodule(n) for n in names if plans.get(f"{prefix}.{n}") is not None}
    if not mods:
        return {}
    hs = {n: Hessian(m.in_features) for n, m in mods.items()}
    feed(layer, mods, hidden, kwargs, lambda n, x: hs[n].add(x))
    out = {}
    for n, m in mods.items():
        full = f"{prefix}.{n}"
        lp = plans[full]
        qt = gptq(
            m.weight.detach().float(),
            hs[n],
            lp.weight,
            name=full,
            range=lp.config.weight_range,
            **options,
        )
        out[full] = qt
        _set_weight(m, qt.dequantize())
    return out


def head_gptq(dec: Decoder, hidden, plans: dict, options: dict) -> dict:
    from ..algorithms.gptq import gptq
    from ..algorithms.hessian import Hessian

    lp = plans.get("lm_head")
    if lp is None or dec.lm_head.weight is dec.embed.weight:
        return {}
    h = Hessian(dec.lm_head.in_features)
    with torch.no_grad():
        for x in hidden:
            y = dec.norm(x)
            h.add(y.reshape(-1, y.shape[-1]))
    qt = gptq(
        dec.lm_head.weight.detach().float(),
        h,
        lp.weight,
        name="lm_head",
        range=lp.config.weight_range,
        **options,
    )
    return {"lm_head": qt}


def _rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """At most ``n`` rows of ``x``, evenly spaced (deterministic)."""
    if x.shape[0] <= n:
        return x
    return x[torch.linspace(0, x.shape[0] - 1, n).long()]


@torch.no_grad()
def fold_scales(prev: nn.Module, mods: list[nn.Linear], s: torch.Tensor) -> None:
    """Scale the group's input channels by s, and the op in front by 1/s (in place)."""
    from ..algorithms.awq import apply_scales

    bias = prev.bias if isinstance(prev, nn.Linear) else None
    f = apply_scales(
        prev.weight.data, [m.weight.data for m in mods], s, None if bias is None else bias.data
    )
    prev.weight.data = f.prev
    if bias is not None:
        prev.bias.data = f.prev_bias
    for m, w in zip(mods, f.weights, strict=False):
        m.weight.data = w


def awq_group(layer, names, prev_name, hidden, kwargs, plans, prefix, options) -> str | None:
    from ..algorithms.awq import awq_scales

    mods = [layer.get_submodule(n) for n in names]
    lps = [plans.get(f"{prefix}.{n}") for n in names]
    if prev_name is None or all(lp is None for lp in lps):
        return None
    prev = layer.get_submodule(prev_name) if prefix else prev_name
    width = mods[0].in_features
    if isinstance(prev, nn.Linear) and prev.out_features != width:
        return (
            f"{prefix}.{names[0]}: no AWQ scaling (the previous linear has "
            f"{prev.out_features} outputs)"
        )
    xs: list = []
    feed(layer, {names[0]: mods[0]}, hidden, kwargs, lambda _n, x: xs.append(x.float()))
    x = _rows(torch.cat(xs), AWQ_ROWS)
    lp = next(lp for lp in lps if lp is not None)
    s = awq_scales(
        x,
        [m.weight.detach().float() for m in mods],
        lp.weight,
        name=f"{prefix}.{names[0]}",
        range=lp.config.weight_range,
        **options,
    )
    fold_scales(prev, mods, s)
    return None


def head_awq(dec: Decoder, hidden, plans: dict, options: dict) -> None:
    from ..algorithms.awq import awq_scales

    lp = plans.get("lm_head")
    if lp is None or dec.lm_head.weight is dec.embed.weight or not hasattr(dec.norm, "weight"):
        return
    with torch.no_grad():
        x = _rows(
            torch.cat([dec.norm(h).reshape(-1, h.shape[-1]) for h in hidden]).float(), AWQ_ROWS
        )
    s = awq_scales(
        x,
        [dec.lm_head.weight.detach().float()],
        lp.weight,
        name="lm_head",
        range=lp.config.weight_range,
        **options,
    )
    fold_scales(dec.norm, [dec.lm_head], s)


def _layers(dec: Decoder, m_cfg: QuantConfig, hidden, kwargs, plans: dict) -> tuple[dict, list]:
    """Run the method over every layer, then the head; (QTensors by module name, notes)."""
    method, options = m_cfg.method, dict(m_cfg.method_options)
    qts, notes = {}, []
    for i, layer in enumerate(bar(dec.layers, desc=f"{method} layers", unit="layer")):
        prefix = f"{dec.prefix}.{i}"
        for names, prev in layer_groups(layer):
            if method == "gptq":
                qts.update(gptq_group(layer, names, hidden, kwargs, plans, prefix, options))
            else:
                note = awq_group(layer, names, prev, hidden, kwargs, plans, prefix, options)
                notes += [note] if note else []
        hidden = run_layer(layer, hidden, kwargs)
    if method == "gptq":
        qts.update(head_gptq(dec, hidden, plans, options))
    else:
        head_awq(dec, hidden, plans, options)
    return qts, notes


def quantize_model(
    model: nn.Module,
    config: QuantConfig,
    calibration,
    *,
    seq_len: int = 256,
    n_samples: int = 128,
    batch_size: int = 8,
) -> nn.Module:
    """Weight-only quantization of a LLaMA-style decoder with GPTQ or AWQ (``config.method``),
    calibrated on ``calibration`` token ids (a 1-D stream or (n, seq_len) rows). Returns a new
    model of cuantiza ``QuantLinear`` / ``QuantEmbedding`` layers; ``model`` is untouched.
    The embedding (if quantized) is rounded to nearest: it has no input to calibrate on."""
    from ..nn.workflows import convert_with_weights

    if config.method not in CALIBRATED_METHODS:
        raise ConfigError(
            f"quantize_model runs {CALIBRATED_METHODS}; for method={config.method!r} "
            "use cz.quantize_weights (no calibration needed)"
        )
    start = time.perf_counter()
    batches = calibration_batches(calibration, seq_len, n_samples, batch_size)
    m = copy_model(model).float().eval()
    dec = decoder_parts(m)
    p = plan(m, config, "weight_only")  # group sizes etc. checked before any work
    plans = {lp.name: lp for lp in p.quantized()}
    hidden, kwargs = first_layer_inputs(dec, batches)
    qts, notes = _layers(dec, config, hidden, kwargs, plans)
    rtn = dataclasses.replace(config, method="rtn")
    q = convert_with_weights(m, rtn, qts)
    info = q.cuantiza_info
    took = f"{time.perf_counter() - start:.1f} s for the model"
    for name in plans:
        info.notes.setdefault(
            name,
            f"{config.method}, calibrated on {sum(b.shape[0] for b in batches)} "
            f"windows of {batches[0].shape[1]} tokens ({took})",
        )
    for n in notes:
        info.notes[n.split(":")[0]] = n
    return q
