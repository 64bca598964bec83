"""Text generation with a LLaMA-class decoder: prefill the prompt, then one token at a time from
the key/value cache, greedy or sampled (temperature, top-k, top-p) with a seeded generator.

>>> import cuantiza as cz  # doctest: +SKIP
>>> g = cz.llm.generate("models/shakespeare-llama", "ROMEO:", max_new_tokens=32)  # doctest: +SKIP
>>> print(g.text, g.decode_tokens_per_s)  # doctest: +SKIP

Timing: ``prefill_tokens_per_s`` is the prompt length over the prompt's forward pass;
``decode_tokens_per_s`` the number of single-token forward passes over their time (the first new
token comes from the prompt's pass, as llama.cpp's ``llama-bench`` counts ``tg``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from .runtime import DecoderRuntime
from .runtime_load import load_runtime


@dataclass(frozen=True)
class Generation:
    """What ``generate`` produced and how fast."""

    prompt_ids: list[int]
    new_ids: list[int]
    text: str | None  # the new tokens decoded, when a tokenizer is known
    prefill_seconds: float
    decode_seconds: float
    decode_steps: int

    @property
    def prefill_tokens_per_s(self) -> float:
        return len(self.prompt_ids) / max(self.prefill_seconds, 1e-9)

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_steps / max(self.decode_seconds, 1e-9)

    def stats(self) -> str:
        return (
            f"prompt {len(self.prompt_ids)} tokens: {self.prefill_tokens_per_s:.1f} tokens/s; "
            f"generated {len(self.new_ids)}: {self.decode_tokens_per_s:.1f} tokens/s"
        )


def _check(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if top_k < 0:
        raise ConfigError(f"top_k must be >= 0 (0: no limit), got {top_k}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")


def next_token(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, gen: torch.Generator
) -> int:
    """The next token id from the last position's logits (vocab,): argmax at temperature 0,
    else a draw from softmax(logits / temperature) cut to the top k and the top-p mass."""
    if temperature == 0:
        return int(logits.argmax())
    z = logits.to(torch.float64) / temperature
    if top_k:
        z[z < torch.topk(z, min(top_k, z.numel())).values[-1]] = -torch.inf
    p = torch.softmax(z, dim=-1)
    if top_p < 1:
        sp, idx = torch.sort(p, descending=True)
        drop = torch.cumsum(sp, 0) - sp >= top_p  # keep the smallest prefix reaching top_p
        p[idx[drop]] = 0
    return int(torch.multinomial(p / p.sum(), 1, generator=gen))


def generate(
    model_or_dir,
    prompt,
    max_new_tokens: int = 128,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_at_eos: bool = True,
    runtime: DecoderRuntime | None = None,
    int8_activations: bool = True,
) -> Generation:
    """Continue ``prompt`` (text, or token ids) with up to ``max_new_tokens`` tokens.

    ``model_or_dir``: a decoder folder (float, or quantized by ``cuantiza quantize``) or a
    LLaMA-class model in memory; text is tokenized with the folder's tokenizer, or as UTF-8
    bytes (``llm.encode``) without one. ``runtime``: a decoder already built (``load_runtime``)
    to reuse across calls. Generation stops at the end-of-sequence token unless
    ``stop_at_eos`` is False. ``int8_activations``: 4- and 8-bit layers decode with int8 activations
    as llama.cpp does (faster); False keeps float activations (``load_runtime``)."""
    _check(max_new_tokens, temperature, top_k, top_p)
    rt = runtime or load_runtime(model_or_dir, int8_activations)
    ids = _prompt_ids(model_or_dir, prompt)
    limit = rt.shape.max_positions
    if not ids:
        raise ConfigError("the prompt is empty: give at least one token")
    if len(ids) + max_new_tokens > limit:
        raise ConfigError(
            f"the prompt ({len(ids)} tokens) plus {max_new_tokens} new tokens exceed the "
            f"model's context of {limit} positions; shorten the prompt or lower -n"
        )
    if max(ids) >= rt.shape.vocab_size or min(ids) < 0:
        raise ConfigError(f"token ids must lie in [0, {rt.shape.vocab_size}), got {max(ids)}")
    gen = torch.Generator().manual_seed(seed)
    cache = rt.new_cache(len(ids) + max_new_tokens)
    t0 = time.perf_counter()
    logits = rt.forward(torch.tensor(ids), cache, 0)
    t1 = time.perf_counter()
    out = [next_token(logits[-1], temperature, top_k, top_p, gen)]
    steps = 0
    while len(out) < max_new_tokens and not (stop_at_eos and out[-1] == rt.shape.eos_token_id):
        logits = rt.forward(torch.tensor(out[-1:]), cache, len(ids) + len(out) - 1)
        steps += 1
        out.append(next_token(logits[-1], temperature, top_k, top_p, gen))
    t2 = time.perf_counter()
    return Generation(ids, out, _decode(model_or_dir, out), t1 - t0, t2 - t1, steps)


def _prompt_ids(model_or_dir, prompt) -> list[int]:
    if isinstance(prompt, str):
        if isinstance(model_or_dir, (str, Path)):
            from .evaluate import tokenize

            return tokenize(model_or_dir, prompt).reshape(-1).tolist()
        from .text import encode

        return encode(prompt).tolist()
    return [int(t) for t in torch.as_tensor(prompt).reshape(-1).tolist()]


def _decode(model_or_dir, ids: list[int]) -> str | None:
    """The text of ``ids`` with the folder's tokenizer, or as UTF-8 bytes for a byte-level
    model (vocabulary 256); None when neither applies."""
    tok = Path(model_or_dir) / "tokenizer.json" if isinstance(model_or_dir, (str, Path)) else None
    if tok is not None and tok.is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(tok)).decode(ids)
    if all(0 <= i < 256 for i in ids):
        from .text import decode

        return decode(ids)
    return None
