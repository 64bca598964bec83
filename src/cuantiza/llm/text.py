"""Byte-level text for small causal language models: tokenizer, text files, perplexity.

Why bytes: a vocabulary of the 256 byte values needs no tokenizer files, encodes every string
exactly and makes perplexities of different models comparable per byte. The models are Hugging
Face causal LMs (``model(input_ids).logits``); nothing here imports transformers (an optional
dependency: ``require_transformers`` imports it on demand, with an install hint).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError, CorruptFileError
from ..progress import bar

VOCAB_SIZE = 256


def encode(text: str) -> torch.LongTensor:
    """The UTF-8 bytes of ``text`` as a 1-D int64 tensor (ids 0..255, one per byte).

    >>> encode("hé").tolist()
    [104, 195, 169]
    """
    if not isinstance(text, str):
        raise ConfigError(f"encode takes a str, got {type(text).__name__}; decode bytes first")
    data = text.encode("utf-8")
    if not data:
        return torch.zeros(0, dtype=torch.long)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def decode(ids) -> str:
    """The text whose UTF-8 bytes are ``ids`` (a 1-D tensor or a sequence of ints in 0..255).

    Sequences that are not valid UTF-8 (a model's sample cut mid-character) decode with U+FFFD
    in place of the broken bytes instead of failing; ``decode(encode(s)) == s`` for every str.

    >>> decode(encode("Hamlet, Prince of Denmark"))
    'Hamlet, Prince of Denmark'
    """
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex():
            raise ConfigError(f"decode takes a 1-D integer tensor, got {ids.dim()}-D {ids.dtype}")
        values = ids.tolist()
    else:
        values = list(ids)
    bad = [v for v in values if not isinstance(v, int) or not 0 <= v < VOCAB_SIZE]
    if bad:
        raise ConfigError(f"decode: byte ids must be ints in 0..255, got {bad[0]!r}")
    return bytes(values).decode("utf-8", errors="replace")


def load_text(path) -> str:
    """The contents of the UTF-8 text file ``path`` (newlines kept exactly as stored)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no text file at {p}") from None
    except IsADirectoryError:
        raise ConfigError(f"{p} is a folder; give the path of a UTF-8 text file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"{p} is not UTF-8 text ({e}); re-encode it as UTF-8") from e


def require_transformers():
    """The ``transformers`` module, or a ConfigError that says how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise ConfigError(
            "this needs Hugging Face transformers, an optional dependency: "
            "pip install transformers (or pip install 'cuantiza[examples]')"
        ) from e
    return transformers


def _windows(tokens, seq_len: int, batch_size: int, config) -> torch.Tensor:
    """``tokens`` cut into non-overlapping (n, seq_len) windows; the partial tail is dropped.
    Everything is checked before the first forward pass (an id past the embedding would fail
    there with a bare IndexError)."""
    max_positions = getattr(config, "max_position_embeddings", None)
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
        raise ConfigError("perplexity takes a 1-D tensor of token ids (e.g. encode(text))")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ConfigError(f"token ids must be integers, got {tokens.dtype}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ConfigError(
            f"seq_len must be an int >= 2 (one context token and one target), got {seq_len!r}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if max_positions is not None and seq_len > max_positions:
        raise ConfigError(
            f"seq_len {seq_len} exceeds the model's max_position_embeddings "
            f"{max_positions}; use a shorter seq_len"
        )
    n = tokens.numel() // seq_len
    if n == 0:
        raise ConfigError(
            f"the text is too short: {tokens.numel()} tokens make no full window of "
            f"seq_len={seq_len}; give at least {seq_len} tokens or a smaller seq_len"
        )
    if tokens.min() < 0:
        raise ConfigError(f"token ids must be >= 0, got {int(tokens.min())}")
    if vocab is not None and tokens.max() >= vocab:
        raise ConfigError(
            f"token id {int(tokens.max())} is outside the model's vocabulary "
            f"(size {vocab}); encode the text with the model's tokenizer"
        )
    return tokens[: n * seq_len].long().reshape(n, seq_len)


def _batch_nll(model, batch: torch.Tensor) -> torch.Tensor:
    """Sum (float64) of the NLL of tokens 1.. of each row, predicted from the row's prefix."""
    out = model(batch)
    logits = getattr(out, "logits", out)
    vocab = logits.shape[-1]
    if int(batch.max()) >= vocab:
        raise ConfigError(
            f"token id {int(batch.max())} is outside the model's vocabulary "
            f"(size {vocab}); encode the text with the model's tokenizer"
        )
    pred = logits[:, :-1].float().reshape(-1, vocab)
    nll = F.cross_entropy(pred, batch[:, 1:].reshape(-1), reduction="none")
    return nll.double().sum().cpu()


def perplexity(
    model, tokens: torch.LongTensor, seq_len: int = 256, batch_size: int = 8, progress: bool = True
) -> float:
    """exp(mean negative log-likelihood) of ``tokens`` under the causal LM ``model``.

    The tokens are cut into non-overlapping windows of ``seq_len`` (a trailing partial window
    is dropped); in each window tokens 1..seq_len-1 are predicted from the window's own
    context, so every window costs one forward pass and the result does not depend on
    ``batch_size`` beyond float rounding. Runs in ``torch.no_grad()`` and eval mode (the
    model's mode is restored afterwards), sums NLLs in float64 and is deterministic. Lower is
    better; 256 is a uniform guess over bytes. Returns inf if the mean NLL overflows exp and
    nan if the model outputs NaN, so sweeps over aggressive quantization keep going.
    """
    windows = _windows(tokens, seq_len, batch_size, getattr(model, "config", None))
    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = params.device if params is not None else torch.device("cpu")
    starts = range(0, windows.shape[0], batch_size)
    if progress:
        starts = bar(starts, desc="perplexity", unit="batch")
    modes = [(m, m.training) for m in model.modules()] if hasattr(model, "modules") else []
    total = torch.zeros((), dtype=torch.float64)
    try:
        if hasattr(model, "eval"):
            model.eval()
        with torch.no_grad():
            for s in starts:
                total += _batch_nll(model, windows[s : s + batch_size].to(device))
    finally:
        for m, training in modes:  # every submodule back in the mode it was in
            m.training = training
    mean = total.item() / (windows.shape[0] * (seq_len - 1))
    return math.exp(mean) if mean < 709.0 or math.isnan(mean) else math.inf
