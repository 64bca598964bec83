"""Tiny LLaMA models and Hugging Face style folders of them, for the checkpoint tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

transformers = pytest.importorskip("transformers")


def tiny_llama(tie=False, seed=0):
    """A 2-layer LLaMA (hidden 64, vocabulary 96), random weights from ``seed``, in eval mode."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def write_hf(folder: Path, tensors: dict, config: dict, n_shards: int = 3) -> Path:
    """A Hugging Face style folder: config.json, ``n_shards`` safetensors shards and the index."""
    folder.mkdir(parents=True)
    names = list(tensors)
    per = -(-len(names) // n_shards)
    wm = {}
    for i in range(n_shards):
        shard = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: tensors[n].detach().clone().contiguous() for n in names[i * per : (i + 1) * per]}
        safetensors.torch.save_file(part, folder / shard, metadata={"format": "pt"})
        wm.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": wm})
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def hf_llama(path: Path, model, drop_tied=True) -> Path:
    """``model`` written as a Hugging Face folder (a tied head dropped, as save_pretrained does)."""
    sd = model.state_dict()
    if model.config.tie_word_embeddings and drop_tied:
        sd.pop("lm_head.weight")
    return write_hf(path, sd, model.config.to_dict())


def folder_bytes(d: Path) -> dict:
    """name -> bytes of every file in ``d``."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}
