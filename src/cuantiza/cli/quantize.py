"""``cuantiza quantize MODEL.onnx -o OUT.onnx``: the command behind ``cuantiza.quantize_onnx``;
``cuantiza quantize MODEL_DIR -o OUT_DIR``: a Hugging Face LLaMA-style folder, weight-only,
streamed (``cuantiza.llm.quantize_checkpoint``; see ``cli_llm``).

Flags map onto a ``QuantConfig``: ``--bits`` (weights, 1..8), ``--per-channel`` or
``--group-size N`` (default one scale per tensor), ``--group-remainder`` (a layer whose
reduction length is not a multiple of N: refuse, pad the last group, or per-channel scales for
that layer), ``--asymmetric`` (weights with a zero point), ``--exclude GLOB`` (ONNX node names;
a pattern that matches nothing is refused). The mode is dynamic (int8 activations quantized
at run time) unless ``--static --calibration data.npz`` (activation ranges from the
calibration set, with a progress bar) or ``--weight-only``. The summary gives the bytes in and
out, their ratio, and every layer quantized or kept in float with the reason.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from ..core.scheme import PerChannel, PerGroup, PerTensor, QScheme
from ..errors import ConfigError, OutputExistsError
from ..nn.config import REMAINDER_MODES, QuantConfig
from .args import whole


def add_parser(sub, quiet: argparse.ArgumentParser) -> None:
    q = sub.add_parser(
        "quantize",
        parents=[quiet],
        help="quantize a float ONNX model (dynamic, static or weight-only) or a Hugging Face "
        "model folder (weight-only)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument(
        "model",
        metavar="MODEL",
        help="the float ONNX model, or a Hugging Face model folder (never modified)",
    )
    q.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="where the quantized model goes"
    )
    _add_scheme_args(q)
    from .llm import add_folder_args

    add_folder_args(q)


def _add_scheme_args(q: argparse.ArgumentParser) -> None:
    """What to quantize and how: widths, mode, calibration, granularity, exclusions."""
    q.add_argument("--bits", type=whole(1, 8), default=8, help="weight bit width 1..8 (default 8)")
    mode = q.add_mutually_exclusive_group()
    mode.add_argument(
        "--static", action="store_true", help="static activations, calibrated on --calibration"
    )
    mode.add_argument(
        "--weight-only", action="store_true", help="quantize weights only; activations stay float"
    )
    q.add_argument(
        "--calibration",
        metavar="FILE",
        help="ONNX: .npz of arrays named after the model's inputs "
        "(with --static); model folder: UTF-8 text for --method gptq/awq",
    )
    gran = q.add_mutually_exclusive_group()
    gran.add_argument(
        "--per-channel", action="store_true", help="one weight scale per output channel"
    )
    gran.add_argument(
        "--group-size",
        type=whole(1),
        metavar="N",
        help="one weight scale per N weights along the reduction axis (folders: default 128)",
    )
    q.add_argument(
        "--group-remainder",
        choices=REMAINDER_MODES,
        default="error",
        help="a layer whose reduction length is not a multiple of N: error (default), pad (a "
        "shorter last group) or per_channel (per-channel scales for that layer)",
    )
    q.add_argument(
        "--asymmetric",
        action="store_true",
        help="weights with a zero point (default: symmetric for ONNX, asymmetric for folders)",
    )
    q.add_argument(
        "--exclude",
        nargs="+",
        action="extend",
        default=[],
        metavar="GLOB",
        help="ONNX node names, or module names in a folder (lm_head), to keep in float",
    )
    q.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def config_from(args) -> QuantConfig:
    gran = (
        PerGroup(args.group_size)
        if args.group_size is not None
        else PerChannel(0)
        if args.per_channel
        else PerTensor()
    )
    weight = QScheme(bits=args.bits, symmetric=not args.asymmetric, granularity=gran)
    return QuantConfig(
        weight=weight, exclude=tuple(args.exclude), group_remainder=args.group_remainder
    )


def mode_from(args) -> str:
    if args.calibration is not None and not args.static:
        raise ConfigError(
            "--calibration is used by --static only; add --static (or drop --calibration)"
        )
    if args.static and args.calibration is None:
        raise ConfigError(
            "--static needs --calibration data.npz (arrays named after the model's inputs)"
        )
    return "static" if args.static else "weight_only" if args.weight_only else "dynamic"


def _check_paths(args) -> None:
    if not Path(args.model).is_file():
        raise ConfigError(f"{args.model}: no such file")
    out = Path(args.output)
    if out.is_file() and not args.overwrite and out.resolve() != Path(args.model).resolve():
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")


def _counts(layers) -> str:
    by_op = Counter(r.op for r in layers)
    return ", ".join(f"{n} {op}" for op, n in sorted(by_op.items()))


def _layers(n: int) -> str:
    return f"{n} layer" + ("" if n == 1 else "s")


def _grouped(skipped, shown: int = 3) -> list[str]:
    """One line per reason: how many layers, and the first few names."""
    by_reason: dict = {}
    for name, why in skipped:
        by_reason.setdefault(why, []).append(name)
    return [
        f"    {len(names)} x {why}: "
        f"{', '.join(names[:shown])}{', ...' if len(names) > shown else ''}"
        for why, names in by_reason.items()
    ]


def summary_lines(summary, bytes_in: int, quiet: bool) -> list[str]:
    ratio = summary.file_bytes / bytes_in if bytes_in else float("nan")
    head = (
        f"{summary.path}: {bytes_in:,} B -> {summary.file_bytes:,} B ({ratio:.1%}, "
        f"{bytes_in / max(summary.file_bytes, 1):.2f}x smaller); {_layers(len(summary.layers))} "
        "quantized, "
        f"{len(summary.skipped)} kept float"
    )
    if quiet:
        return [head]
    lines = [head, f"  mode {summary.workflow}, opset {summary.opset}"]
    if summary.layers:
        schemes = Counter((r.weight, r.storage, r.activation) for r in summary.layers)
        lines.append(f"  quantized: {_counts(summary.layers)}")
        lines += [
            f"    {n} x weights {w} stored as {s}, activations {a}"
            for (w, s, a), n in sorted(schemes.items())
        ]
    if summary.skipped:
        lines.append("  kept float:")
        lines += _grouped(summary.skipped)
    lines += [f"  note: {n}" for n in summary.notes]
    return lines


def cmd_quantize(args, quiet: bool) -> int:
    from .. import progress

    if Path(args.model).is_dir():
        from .llm import cmd_quantize_folder

        return cmd_quantize_folder(args, quiet)
    from ..onnx import quantize_onnx

    if args.method != "rtn" or args.symmetric or args.mse or args.eval_text or args.keep_embeddings:
        raise ConfigError(
            "--method, --symmetric, --mse, --keep-embeddings and --eval-text apply to model "
            "folders; ONNX files take --bits, --per-channel / --group-size, --asymmetric"
        )

    mode = mode_from(args)
    config = config_from(args)
    _check_paths(args)
    if quiet:
        progress.set_quiet(True)
    bytes_in = Path(args.model).stat().st_size
    summary = quantize_onnx(
        args.model, args.output, config, args.calibration, mode=mode, overwrite=args.overwrite
    )
    print("\n".join(summary_lines(summary, bytes_in, quiet)))
    return 0
