"""``cuantiza eval-ppl``: perplexity and bytes of causal LM folders, side by side.

``cuantiza eval-ppl MODEL_DIR [MODEL_DIR ...] --text FILE`` evaluates each folder (a float
Hugging Face folder, or one written by ``cuantiza quantize MODEL_DIR -o OUT``) on the text, in
non-overlapping windows of ``--seq-len`` tokens, and prints one table: bytes of the weight
files, perplexity, and the change against the first folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

from ..errors import ConfigError, CuantizaError, WriteError
from .args import whole

DEFAULT_GROUP = 128  # folders: one scale per 128 weights unless --group-size / --per-channel


def add_eval_parser(sub, quiet: argparse.ArgumentParser) -> None:
    e = sub.add_parser(
        "eval-ppl",
        parents=[quiet],
        help="perplexity of causal LM folders on a text file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument(
        "models", nargs="+", metavar="MODEL_DIR", help="model folders; the first is the baseline"
    )
    e.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text to evaluate on")
    e.add_argument(
        "--seq-len", type=whole(2), default=256, help="tokens per window, >= 2 (default 256)"
    )
    e.add_argument(
        "--max-chars", type=whole(1), metavar="N", help="evaluate on the first N characters only"
    )
    e.add_argument("--json", action="store_true", help="machine-readable output")


def _read_text(path: str, max_chars: int | None) -> str:
    from ..llm.text import load_text

    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such text file")
    t = load_text(path)
    return t if max_chars is None else t[:max_chars]


def _table(results) -> list[str]:
    base = results[0]
    lines = [
        f"{'model':40s} {'weight bytes':>14s} {'tokens':>9s} {'perplexity':>11s} {'change':>9s}"
    ]
    for r in results:
        change = "-" if r is base else f"{100 * (r.perplexity / base.perplexity - 1):+.2f}%"
        name = r.model if len(r.model) <= 40 else "..." + r.model[-37:]
        lines.append(
            f"{name:40s} {r.bytes:>14,d} {r.tokens:>9,d} {r.perplexity:>11.4f} {change:>9s}"
        )
    return lines


def cmd_eval_ppl(args, quiet: bool) -> int:
    from .. import progress
    from ..llm.evaluate import eval_ppl

    if args.seq_len < 2:
        raise ConfigError("--seq-len must be at least 2")
    for d in args.models:
        if not Path(d).is_dir():
            raise ConfigError(
                f"{d}: not a folder (a model folder holds config.json and *.safetensors)"
            )
    text = _read_text(args.text, args.max_chars)
    if quiet:
        progress.set_quiet(True)
    results = [eval_ppl(d, text, seq_len=args.seq_len, progress=not quiet) for d in args.models]
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        print("\n".join(_table(results)))
    return 0


# ------------------------------------------------------------ cuantiza quantize MODEL_DIR


def add_folder_args(q: argparse.ArgumentParser) -> None:
    """The ``quantize`` options that apply to model folders only."""
    g = q.add_argument_group(
        "model folders (Hugging Face LLaMA-style: config.json + safetensors shards)"
    )
    g.add_argument(
        "--method",
        choices=("rtn", "hqq", "gptq", "awq"),
        default="rtn",
        help="rtn: round to nearest; hqq: data-free scale/zero optimisation; gptq, awq: "
        "calibrated on --calibration text, one layer at a time (default rtn)",
    )
    g.add_argument(
        "--symmetric",
        action="store_true",
        help="no zero point: full signed range, the scale carries the sign (gguf Q4_0 style); "
        "default for folders is asymmetric (a zero point per group)",
    )
    g.add_argument(
        "--mse",
        action="store_true",
        help="search each group's clipping range (least error) instead of min/max",
    )
    g.add_argument(
        "--scale-dtype",
        choices=("float16", "bfloat16", "float32"),
        default="float16",
        help="scale storage for folders (default float16)",
    )
    g.add_argument(
        "--keep-embeddings",
        action="store_true",
        help="leave the token embedding (and a tied head) in float",
    )
    g.add_argument(
        "--seq-len",
        type=whole(2),
        default=256,
        help="tokens per calibration (and --eval-text) window, >= 2 (default 256)",
    )
    g.add_argument(
        "--samples",
        type=whole(1),
        default=128,
        help="calibration windows at most, >= 1 (default 128)",
    )
    g.add_argument(
        "--eval-text",
        metavar="FILE",
        help="then print the perplexity of MODEL and OUT on this text",
    )


def folder_config(args):
    from ..core.range_specs import MSE, MinMax
    from ..core.scheme import PerChannel, PerGroup, QScheme
    from ..nn.config import QuantConfig

    if args.static or args.weight_only:
        raise ConfigError("model folders are quantized weight-only; drop --static / --weight-only")
    if args.asymmetric and args.symmetric:
        raise ConfigError("choose one of --symmetric and --asymmetric")
    gran = (
        PerChannel(0)
        if args.per_channel
        else PerGroup(DEFAULT_GROUP if args.group_size is None else args.group_size)
    )
    sym = bool(args.symmetric)
    w = QScheme(
        bits=args.bits,
        symmetric=sym,
        granularity=gran,
        scale_dtype=args.scale_dtype,
        **({"restricted": False} if sym else {}),
    )
    return QuantConfig(
        weight=w,
        weight_range=MSE() if args.mse else MinMax(),
        method=args.method,
        exclude=tuple(args.exclude),
        group_remainder=args.group_remainder,
        quantize_embeddings=not args.keep_embeddings,
    )


def _calibration(args, config):
    from ..llm.evaluate import tokenize

    if config.method not in ("gptq", "awq"):
        if args.calibration is not None:
            raise ConfigError(f"--calibration is used by --method gptq/awq, not {config.method}")
        return None
    if args.calibration is None:
        raise ConfigError(
            f"--method {config.method} needs --calibration FILE (UTF-8 text, not the evaluation "
            "text)"
        )
    return tokenize(args.model, _read_text(args.calibration, None))


@contextlib.contextmanager
def _resume_hint(out: str):
    """After Ctrl-C, SIGTERM or a failed write (disk full) the finished shards stay in the
    staging folder: the error names the output and its note says that rerunning resumes."""
    from ..io.atomic import is_write_failure, write_error
    from ..llm.writer import staging_folder

    try:
        yield
    except (KeyboardInterrupt, OSError) as e:
        named = isinstance(e, WriteError) and e.path == os.path.abspath(out)  # says it already
        err = write_error(Path(out), e, rename=True) if is_write_failure(e) and not named else None
        staging = staging_folder(out)
        kept = not isinstance(e, CuantizaError) or isinstance(e, WriteError)
        if kept and staging.is_dir():
            (err or e).add_note(
                f"the finished part is kept in {staging}: run the same command again to resume"
            )
        if err is None:
            raise
        raise err from e


def cmd_quantize_folder(args, quiet: bool) -> int:
    from .. import progress
    from ..llm.checkpoint import quantize_checkpoint
    from ..llm.evaluate import eval_ppl

    config = folder_config(args)
    calibration = _calibration(args, config)
    text = None if args.eval_text is None else _read_text(args.eval_text, None)
    if quiet:
        progress.set_quiet(True)
    kw = {"seq_len": args.seq_len, "n_samples": args.samples} if calibration is not None else {}
    with _resume_hint(args.output):
        summary = quantize_checkpoint(
            args.model,
            args.output,
            config,
            calibration=calibration,
            overwrite=args.overwrite,
            progress=not quiet,
            **kw,
        )
    print(summary)
    if text is not None:
        results = [
            eval_ppl(d, text, seq_len=args.seq_len, progress=not quiet)
            for d in (args.model, args.output)
        ]
        print("\n".join(_table(results)))
    return 0
