"""The ``cuantiza`` command line: ``size``, ``explain``, ``demo``, ``report``, ``quantize``,
``eval-ppl`` and ``generate``, each with ``--help``.

    cuantiza size --params 70e9 [--bits 32,16,8,5,4,3,2,1] [--group-size 128] [--json]
    cuantiza explain VALUE [--bits 8] [--asymmetric] [--range MIN MAX]
    cuantiza demo [--quick] [--out DIR] [--core]
    cuantiza report DIR
    cuantiza quantize MODEL.onnx -o OUT.onnx [--bits 8]
                      [--static --calibration data.npz | --weight-only]
             [--per-channel | --group-size N] [--asymmetric] [--exclude GLOB ...] [--overwrite]
    cuantiza quantize MODEL_DIR -o OUT_DIR [--bits 4] [--group-size 128] [--method rtn|hqq|gptq|awq]
             [--calibration text.txt] [--symmetric] [--mse] [--eval-text text.txt]
    cuantiza eval-ppl MODEL_DIR [MODEL_DIR ...] --text FILE [--seq-len 256] [--json]
    cuantiza export MODEL_DIR --format gguf [--type Q4_0] -o OUT.gguf [--overwrite]

``--quiet`` (before or after the command) prints results only, without notes. Errors from
cuantiza (``cuantiza.errors``) and from the operating system (read-only folder, disk full) print
one line, ``cuantiza: error: ...``, and exit with status 2, as malformed arguments do; Ctrl-C
exits with 130 and SIGTERM with 143, also after one line (``failures``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import ConfigError, CuantizaError
from . import demo_core, explain, failures, sizes
from . import export as cli_export
from . import generate as cli_generate
from . import llm as cli_llm
from . import quantize as cli_quantize
from .args import Parser, number_text, option_strings, protect_negative_numbers, whole


def _parser() -> argparse.ArgumentParser:
    quiet = Parser(add_help=False)
    quiet.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print results only, no notes",
    )
    p = Parser(
        prog="cuantiza",
        parents=[quiet],
        description="Quantize neural networks to 1-8-bit integers.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_size(sub, quiet)
    _add_explain(sub, quiet)
    _add_demo(sub, quiet)
    r = sub.add_parser("report", parents=[quiet], help="print a saved report (report.json in DIR)")
    r.add_argument(
        "dir", metavar="DIR", help="a folder written by Report.save() or `cuantiza demo`"
    )
    cli_quantize.add_parser(sub, quiet)
    cli_llm.add_eval_parser(sub, quiet)
    cli_generate.add_parser(sub, quiet)
    cli_export.add_parser(sub, quiet)
    return p


def _add_size(sub, quiet: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "size",
        parents=[quiet],
        help="memory of N weights per format, every byte counted",
        description=sizes.__doc__.split("\n\n>>>")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--params", required=True, help="number of weights: 70e9, 7000000000, 70B, 1.5M")
    s.add_argument(
        "--bits",
        default="32,16,8,5,4,3,2,1",
        help="comma-separated: 32, 16 (float) or 1..8 (integer)",
    )
    s.add_argument(
        "--group-size", type=whole(1), default=128, help="weights sharing one scale (default 128)"
    )
    s.add_argument(
        "--scheme",
        choices=("both", "sym", "asym"),
        default="both",
        help="integer rows: symmetric (no zero point), asymmetric (uint8 zero point per group), "
        "or both",
    )
    s.add_argument(
        "--scale-dtype",
        choices=sorted(sizes.SCALE_BYTES),
        default="float16",
        help="scale storage (default float16)",
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")


def _add_explain(sub, quiet: argparse.ArgumentParser) -> None:
    e = sub.add_parser(
        "explain",
        parents=[quiet],
        help="a float32 value's bits and its quantization",
        description=explain.__doc__.split("\n\n>>>")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument(
        "value",
        type=number_text,
        metavar="VALUE",
        help="the number (a leading '-' is fine: -2.5, -1e-3)",
    )
    e.add_argument("--bits", type=whole(1, 8), default=8, help="bit width 1..8 (default 8)")
    e.add_argument(
        "--asymmetric", action="store_true", help="affine: q in [0, 2^n - 1] with a zero point"
    )
    e.add_argument(
        "--range",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        help="range to quantize over (default: [v, v], widened to contain 0)",
    )


def _add_demo(sub, quiet: argparse.ArgumentParser) -> None:
    d = sub.add_parser(
        "demo",
        parents=[quiet],
        help="every workflow on a CNN trained on real digits, in one table",
        description=demo_doc(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--quick", action="store_true", help="fewer epochs: under a minute")
    d.add_argument(
        "--out",
        metavar="DIR",
        default="cuantiza-demo",
        help="where the report goes (default ./cuantiza-demo); with --core, demo_core.md/.json",
    )
    d.add_argument(
        "--core",
        action="store_true",
        help="instead: the numeric core on a weight matrix at every bit width "
        "(bits/weight, bytes, SQNR)",
    )


def demo_doc() -> str:
    from . import demo

    return demo.__doc__


def _bits_list(text: str) -> list[int]:
    try:
        bits = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(
            f"--bits must be comma-separated integers such as 32,16,8,4, got {text!r}"
        ) from None
    if not bits:
        raise ConfigError("--bits is empty; give e.g. 32,16,8,4")
    return bits


def _num(x: float) -> str:
    """280 -> '280', 71.09375 -> '71.09': two decimals at most, no trailing zeros."""
    return f"{x:,.2f}".rstrip("0").rstrip(".")


def cmd_size(args, quiet: bool) -> int:
    schemes = {"both": (True, False), "sym": (True,), "asym": (False,)}[args.scheme]
    rows = sizes.size_table(
        args.params, _bits_list(args.bits), args.group_size, schemes, args.scale_dtype
    )
    if args.json:
        print(
            json.dumps(
                {
                    "params": rows[0].params,
                    "group_size": args.group_size,
                    "scale_dtype": args.scale_dtype,
                    "formats": [r.to_dict() for r in rows],
                },
                indent=2,
            )
        )
        return 0
    if not quiet:
        print(
            f"{rows[0].params:,} weights. Integer formats: codes densely packed, plus one "
            f"{args.scale_dtype} "
            f"scale per group of {args.group_size} weights; asymmetric adds a uint8 zero point per "
            "group; "
            f"int1 binary is {{-s, +s}}. GB = 10^9 bytes, GiB = 2^30 bytes.\n"
        )
    print(f"{'format':<12}{'bits/weight':>12}{'bytes':>22}{'GB':>14}{'GiB':>14}")
    for r in rows:
        print(
            f"{r.name:<12}{r.bits_per_weight:>12.3f}{r.nbytes:>22,}{_num(r.gigabytes) + ' GB':>14}"
            f"{_num(r.gibibytes) + ' GiB':>14}"
        )
    return 0


def cmd_explain(args, quiet: bool) -> int:
    lo, hi = args.range if args.range else (None, None)
    if args.range:
        explain.check_range(lo, hi)  # before printing anything
    if not quiet:  # the value's bits, even for inf or nan, whose quantization is refused next
        print(explain.describe_float32(args.value) + "\n")
    st = explain.quantize_value(float(args.value), args.bits, not args.asymmetric, lo, hi)
    if quiet:
        print(
            f"q = {st.q} ({explain.binary_repr(st.q, st.scheme).split()[0]}), x_hat = "
            f"{st.x_hat!r}, "
            f"error = {st.error:.6g}"
        )
    else:
        print(explain.describe_quantization(st))
    return 0


def cmd_demo(args, quiet: bool) -> int:
    from ..io.atomic import check_writable

    if not args.core or args.out != "cuantiza-demo":  # before minutes of training
        check_writable(Path(args.out) / "report.md")
    if args.core:
        out = args.out if args.out != "cuantiza-demo" else None
        demo_core.run(quick=args.quick, out=out, echo=print, notes=not quiet)
        return 0
    from .. import progress
    from . import demo

    if quiet:
        progress.set_quiet(True)
    demo.run(quick=args.quick, out=args.out)
    return 0


def cmd_report(args, quiet: bool) -> int:
    from ..report.build import Report

    print(Report.load(args.dir))
    return 0


COMMANDS = {
    "eval-ppl": cli_llm.cmd_eval_ppl,
    "size": cmd_size,
    "explain": cmd_explain,
    "demo": cmd_demo,
    "report": cmd_report,
    "quantize": cli_quantize.cmd_quantize,
    "generate": cli_generate.cmd_generate,
    "export": cli_export.cmd_export,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    try:
        args = parser.parse_args(protect_negative_numbers(argv))
    except SystemExit as e:  # --help (0) or bad arguments (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        with failures.signals_as_interrupts():
            return COMMANDS[args.command](args, getattr(args, "quiet", False))
    except BrokenPipeError:  # `cuantiza ... | head`: not an error (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CuantizaError, OSError, KeyboardInterrupt) as e:  # one line, no traceback
        line, code = failures.describe(e, option_strings(parser, args.command))
        print(line, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
