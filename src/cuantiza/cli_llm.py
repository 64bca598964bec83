"""``cuantiza eval-ppl``: perplexity and bytes of causal LM folders, side by side.

``cuantiza eval-ppl MODEL_DIR [MODEL_DIR ...] --text FILE`` evaluates each folder (a float
Hugging Face folder, or one written by ``cuantiza quantize MODEL_DIR -o OUT``) on the text, in
non-overlapping windows of ``--seq-len`` tokens, and prints one table: bytes of the weight
files, perplexity, and the change against the first folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .errors import ConfigError


def add_eval_parser(sub, quiet: argparse.ArgumentParser) -> None:
    e = sub.add_parser("eval-ppl", parents=[quiet], help="perplexity of causal LM folders on a text file",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("models", nargs="+", metavar="MODEL_DIR", help="model folders; the first is the baseline")
    e.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text to evaluate on")
    e.add_argument("--seq-len", type=int, default=256, help="tokens per window (default 256)")
    e.add_argument("--max-chars", type=int, metavar="N", help="evaluate on the first N characters only")
    e.add_argument("--json", action="store_true", help="machine-readable output")


def _read_text(path: str, max_chars: int | None) -> str:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such text file")
    try:
        t = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e})") from e
    return t if max_chars is None else t[:max_chars]


def _table(results) -> list[str]:
    base = results[0]
    lines = [f"{'model':40s} {'weight bytes':>14s} {'tokens':>9s} {'perplexity':>11s} {'change':>9s}"]
    for r in results:
        change = "-" if r is base else f"{100 * (r.perplexity / base.perplexity - 1):+.2f}%"
        name = r.model if len(r.model) <= 40 else "..." + r.model[-37:]
        lines.append(f"{name:40s} {r.bytes:>14,d} {r.tokens:>9,d} {r.perplexity:>11.4f} {change:>9s}")
    return lines


def cmd_eval_ppl(args, quiet: bool) -> int:
    from . import progress
    from .llm.evaluate import eval_ppl
    if args.seq_len < 2:
        raise ConfigError("--seq-len must be at least 2")
    for d in args.models:
        if not Path(d).is_dir():
            raise ConfigError(f"{d}: not a folder (a model folder holds config.json and *.safetensors)")
    text = _read_text(args.text, args.max_chars)
    if quiet:
        progress.set_quiet(True)
    results = [eval_ppl(d, text, seq_len=args.seq_len, progress=not quiet) for d in args.models]
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        print("\n".join(_table(results)))
    return 0
