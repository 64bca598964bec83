"""Which tensors of a checkpoint become which outputs: decided from the shard headers alone.

``plan_checkpoint(ckpt, config)`` maps every tensor name to its ``Job`` list before any work,
so every configuration problem (unknown model family, a calibrated method, a group size that
does not divide a layer, hqq missing) stops the run before anything is read or written.

The layer types come from the model family (LLaMA-style decoders, ``LLAMA_STYLE``): 2-D
``*.weight`` of ``*_proj`` / ``lm_head`` / MoE ``gate``, ``w1..w3`` modules are Linear layers,
``*.embed_tokens.weight`` is the Embedding, everything else (norms, 1-D tensors, buffers) is
kept as it is. Biases of quantized Linear layers are stored as float32 (what ``QuantLinear``
holds). Ties between the embedding and ``lm_head`` are resolved in ``_tie`` (see
``checkpoint``'s docstring).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import ConfigError, PlanError
from ..nn.config import CALIBRATED_METHODS, QuantConfig, check_excludes
from ..nn.plan import weight_scheme
from .shards import CONFIG, Checkpoint

LLAMA_STYLE = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "phi3",
    "olmo",
    "olmo2",
    "granite",
    "stablelm",
    "smollm3",
)
LINEAR_LEAVES = ("lm_head", "gate", "w1", "w2", "w3", "shared_expert_gate")
EMBED_LEAVES = ("embed_tokens",)
HEAD = "lm_head"


@dataclass(frozen=True)
class Job:
    """One output made from one input tensor."""

    role: str  # "linear" | "embedding" (quantized), "float", "bias" (float32), "alias"
    key: str  # module name (quantized roles) or state_dict key (the others)
    layer: str | None = None  # "Linear" / "Embedding" when the tensor is a layer's weight
    scheme: object = None
    cfg: QuantConfig | None = None
    note: str = ""
    share: str | None = None  # quantized roles: reuse this module's weight entry
    target: str | None = None  # alias: the stored tensor it points to
    bias: str | None = None  # linear: its bias' state key
    pad: int | None = None  # embedding: padding_idx


def _check_family(ckpt: Checkpoint) -> None:
    if (ckpt.dir / "cuantiza.json").is_file():  # FAULTS 23: never quantize twice
        raise PlanError(
            f"{ckpt.dir} is a cuantiza output (it has cuantiza.json): already quantized; start "
            "from the float model"
        )
    qc = ckpt.config.get("quantization_config")
    if qc is not None:
        how = qc.get("producer") or qc.get("quant_method") if isinstance(qc, dict) else None
        raise PlanError(
            f"{ckpt.dir / CONFIG} has a quantization_config ({how or 'unnamed'}): the model is "
            "already quantized; start from the float model"
        )
    mt = str(ckpt.config.get("model_type", "")).lower()
    archs = [str(a).lower() for a in ckpt.config.get("architectures") or []]
    if mt in LLAMA_STYLE or (not mt and any(a.startswith(f) for a in archs for f in LLAMA_STYLE)):
        return
    raise PlanError(
        f"{ckpt.dir / CONFIG}: model type {mt or archs!r} is not one quantize_checkpoint "
        f"knows the layers of (LLaMA-style: {', '.join(LLAMA_STYLE)}); load the model and "
        "use cz.quantize_weights instead"
    )


def _layer_of(name: str, shape: tuple) -> str | None:
    mod, _, leaf = name.rpartition(".")
    last = mod.rpartition(".")[2]
    if leaf != "weight" or len(shape) != 2:
        return None
    if last in EMBED_LEAVES:
        return "Embedding"
    return "Linear" if last.endswith("_proj") or last in LINEAR_LEAVES else None


def _weight_job(
    layer: str, mod: str, dtype: torch.dtype, k: int, config: QuantConfig, pad=None
) -> Job:
    """The job of one Linear / Embedding weight: quantized with its scheme, or float and why."""
    key = f"{mod}.weight"
    if not dtype.is_floating_point:
        return Job(
            "float",
            key,
            layer,
            note=f"integer weights ({dtype}) are already quantized or not weights",
        )
    cfg = config.resolve(mod)
    if cfg is None:
        return Job("float", key, layer, note="excluded by config")
    if layer == "Embedding" and not cfg.quantize_embeddings:
        return Job("float", key, layer, note="embeddings kept in float by config")
    if cfg.method in CALIBRATED_METHODS:
        raise ConfigError(
            f"{mod}: method {cfg.method!r} needs calibration data, which quantize_checkpoint "
            "does not take; use method 'rtn' or 'hqq' here"
        )
    scheme, note = weight_scheme(mod, k, cfg)
    return Job(
        "linear" if layer == "Linear" else "embedding", mod, layer, scheme, cfg, note, pad=pad
    )


def plan_checkpoint(ckpt: Checkpoint, config: QuantConfig) -> dict:
    """tensor name -> its jobs, decided from the headers before any work (errors raised here:
    unknown family, calibrated methods, group sizes that do not divide a layer)."""
    _check_family(ckpt)
    names, jobs = ckpt.names(), {}
    pad = ckpt.config.get("pad_token_id")
    for name in names:
        info = ckpt.info(name)
        layer = _layer_of(name, info.shape)
        if layer is not None:
            mod = name.rpartition(".")[0]
            p = (
                pad
                if layer == "Embedding" and isinstance(pad, int) and not isinstance(pad, bool)
                else None
            )
            jobs[name] = [
                _weight_job(
                    layer,
                    mod,
                    info.dtype,
                    info.shape[1],
                    config,
                    None if p is None else p % info.shape[0],
                )
            ]
    tied = [HEAD] if ckpt.config.get("tie_word_embeddings") else []  # lm_head without a tensor
    check_excludes(config, [n.rpartition(".")[0] for n in jobs] + tied)
    for name in names:  # the rest, once every layer's fate is known
        mod = name.rpartition(".")[0]
        weight = jobs.get(f"{mod}.weight", [None])[0]
        if name in jobs:
            if jobs[name][0].role == "linear" and f"{mod}.bias" in names:
                jobs[name] = [dataclasses.replace(jobs[name][0], bias=f"{mod}.bias")]
        elif name.endswith(".bias") and weight is not None and weight.role == "linear":
            jobs[name] = [Job("bias", name, note="bias of a quantized layer: stored as float32")]
        else:
            jobs[name] = [
                Job("float", name, note="not a Linear or Embedding weight: kept as it is")
            ]
    _tie(ckpt, config, jobs)
    return {n: jobs[n] for n in names}


def _same_scheme(a: Job, b: Job) -> bool:
    return (a.scheme, a.cfg.weight_range, a.cfg.method) == (
        b.scheme,
        b.cfg.weight_range,
        b.cfg.method,
    )


def _tie(ckpt: Checkpoint, config: QuantConfig, jobs: dict) -> None:
    """Tied embedding and lm_head: one weight entry for both, or lm_head aliasing a float one."""
    names = ckpt.names()
    emb = next((n for n in names if jobs[n][0].layer == "Embedding"), None)
    head = f"{HEAD}.weight"
    if not ckpt.config.get("tie_word_embeddings", False) or emb is None:
        return
    present = head in jobs
    if present and not torch.equal(ckpt.read(emb), ckpt.read(head)):
        return  # two different weights: nothing tied
    e = jobs[emb][0]
    info = ckpt.info(emb)
    h = _weight_job("Linear", HEAD, info.dtype, info.shape[1], config)
    if e.role == "float":
        h = Job(
            "alias",
            head,
            "Linear",
            target=emb,
            note=f"tied to {emb}, which stays float: kept float",
        )
    elif h.role != "float" and _same_scheme(e, h):
        first, second = (
            (head, emb) if present and names.index(head) < names.index(emb) else (emb, head)
        )
        owner = first.rpartition(".")[0]
        other = jobs[second][0] if second in jobs else h
        shared = dataclasses.replace(other, share=owner, note=f"tied with {owner}: quantized once")
        if second in jobs:
            jobs[second] = [shared]
            return
        h = shared
    elif h.role != "float":
        h = dataclasses.replace(h, note="shares a weight quantized with another scheme: untied")
    if present:
        jobs[head] = [h]
    else:
        jobs[emb].append(h)
