"""Large language models: LLaMA-style decoders, their checkpoints and their perplexity.

* ``quantize_model(model, config, calibration_tokens)``: GPTQ or AWQ over a decoder in memory,
  one layer at a time (``calibrated``); ``smooth_model`` folds SmoothQuant scales for W8A8.
* ``quantize_checkpoint(src, dst, config, calibration=None)``: a Hugging Face folder of any
  size into a sharded cuantiza save, streamed tensor by tensor (rtn, hqq) or layer by layer
  (gptq, awq), resumable and atomically published (``shards`` reads, ``writer`` writes).
* ``generate(model_or_dir, prompt, max_new_tokens)``: text generation with a key/value cache
  on cuantiza's kernels (``runtime``, ``runtime_load``; greedy or sampled, seeded).
* ``eval_ppl(dir, text)`` / ``load_causal_lm(dir)`` (``evaluate``); byte-level text and
  ``perplexity`` (``text``).

transformers is optional: importing this package imports neither it nor the heavier
submodules, which load on first use.
"""

from .text import VOCAB_SIZE, decode, encode, load_text, perplexity, require_transformers

_LAZY = {
    "quantize_model": "calibrated",
    "smooth_model": "smooth",
    "quantize_checkpoint": "checkpoint",
    "eval_ppl": "evaluate",
    "load_causal_lm": "evaluate",
    "generate": "generation",
    "load_runtime": "runtime_load",
    "export_gguf": "gguf_export",
    "load_gguf": "gguf_read",
}

__all__ = [
    "VOCAB_SIZE",
    "encode",
    "decode",
    "load_text",
    "perplexity",
    "require_transformers",
    *_LAZY,
]


def __getattr__(name: str):
    """The heavier entry points, imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
