"""Block-by-block access to LLaMA-style decoders, for the calibrated weight methods.

GPTQ and AWQ never run the whole model on the calibration data at once: the inputs of the
first decoder layer are captured once (embedding, rotary position embeddings, causal mask:
whatever the model passes its layers), then each layer is run on them, its linear layers
calibrated and quantized, and its outputs become the next layer's inputs. Memory holds one
layer's weights and the calibration hidden states, never the whole model's activations.

A decoder here is what transformers' ``LlamaForCausalLM`` (and Mistral, Qwen2, ... of the same
shape) looks like: ``model.model.embed_tokens``, ``model.model.layers`` (each with
``self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj`` linears and two RMSNorms),
``model.model.norm`` and ``model.lm_head``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import PlanError

# the linears of a LLaMA layer in execution order, grouped by shared input, each with the op
# in front of it that a per-input-channel scale can be folded into (AWQ)
LLAMA_GROUPS = (
    (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "input_layernorm"),
    (("self_attn.o_proj",), "self_attn.v_proj"),
    (("mlp.gate_proj", "mlp.up_proj"), "post_attention_layernorm"),
    (("mlp.down_proj",), "mlp.up_proj"),
)


@dataclass
class Decoder:
    """The parts of a decoder the block-by-block methods need."""

    model: nn.Module
    embed: nn.Embedding
    layers: nn.ModuleList
    norm: nn.Module
    lm_head: nn.Linear
    prefix: str  # name of the layer list, e.g. "model.layers"


def decoder_parts(model: nn.Module) -> Decoder:
    """The embedding, layers, final norm and head of a LLaMA-style causal LM, or a PlanError."""
    inner = getattr(model, "model", None)
    parts = [getattr(inner, a, None) for a in ("embed_tokens", "layers", "norm")]
    head = getattr(model, "lm_head", None)
    if (
        not isinstance(parts[0], nn.Embedding)
        or not isinstance(parts[1], nn.ModuleList)
        or parts[2] is None
        or not isinstance(head, nn.Linear)
    ):
        raise PlanError(
            f"{type(model).__name__} is not a LLaMA-style decoder (model.embed_tokens, "
            "model.layers, model.norm, lm_head); the calibrated methods (gptq, awq) "
            "need one: use method='rtn' or 'hqq' for other models"
        )
    return Decoder(model, parts[0], parts[1], parts[2], head, "model.layers")


def layer_groups(layer: nn.Module) -> list[tuple[tuple[str, ...], str | None]]:
    """(linear names sharing one input, the op before them) for one decoder layer, in
    execution order. LLaMA layers get ``LLAMA_GROUPS``; others each linear alone, no fold."""
    names = {n for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
    llama = {n for g, _ in LLAMA_GROUPS for n in g}
    if names == llama:
        return [(g, prev) for g, prev in LLAMA_GROUPS]
    return [((n,), None) for n in sorted(names)]


class _Stop(Exception):
    """Raised by the capture hook to end the forward pass at the first layer."""


@torch.no_grad()
def first_layer_inputs(
    dec: Decoder, batches: list[torch.Tensor]
) -> tuple[list[torch.Tensor], dict]:
    """The hidden states entering the first decoder layer for each batch of token ids, and the
    keyword arguments (position embeddings, mask) the model passes its layers. All batches must
    have one shape, so one set of keyword arguments serves them all."""
    if not batches:
        raise PlanError("no calibration batches: the calibrated methods need token ids")
    if len({tuple(b.shape) for b in batches}) != 1:
        raise PlanError("calibration batches must all have one shape (batch, seq_len)")
    seen: list = []
    kwargs: dict = {}

    def hook(_mod, args, kw):
        seen.append(args[0] if args else kw["hidden_states"])
        kwargs.update({k: v for k, v in kw.items() if k != "hidden_states"})
        raise _Stop

    handle = dec.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for ids in batches:
            try:
                dec.model(input_ids=ids, use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    kwargs.pop("cache", None)
    kwargs.pop("past_key_values", None)
    kwargs["use_cache"] = False
    return seen, kwargs


def _out(y):
    return y[0] if isinstance(y, tuple) else y


@torch.no_grad()
def run_layer(layer: nn.Module, hidden: list[torch.Tensor], kwargs: dict) -> list[torch.Tensor]:
    """The layer's outputs for each batch of hidden states."""
    return [_out(layer(h, **kwargs)) for h in hidden]


@torch.no_grad()
def feed(
    layer: nn.Module,
    targets: dict[str, nn.Module],
    hidden: list[torch.Tensor],
    kwargs: dict,
    fn: Callable[[str, torch.Tensor], None],
) -> None:
    """Run ``layer`` on every batch, calling ``fn(name, x)`` with the input of each target
    module (x flattened to rows of in_features)."""
    handles = []
    for name, mod in targets.items():

        def hook(_m, args, name=name):
            x = args[0]
            fn(name, x.reshape(-1, x.shape[-1]))

        handles.append(mod.register_forward_pre_hook(hook))
    try:
        for h in hidden:
            layer(h, **kwargs)
    finally:
        for hd in handles:
            hd.remove()
