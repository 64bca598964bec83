"""``cuantiza export MODEL_DIR --format gguf --type Q4_0 -o OUT.gguf``: a LLaMA-class decoder
folder (quantized by ``cuantiza quantize MODEL_DIR -o OUT``, or float) as a file other runtimes
load (``cuantiza.llm.export_gguf``).

Every matrix gets ``--type``: cuantiza's integers and scales are repacked into GGML blocks where
its grid fits the type exactly (symmetric 4-bit with float16 scales and groups of 32s is Q4_0,
symmetric 5-bit Q5_0, 8-bit Q8_0), other blocks are requantized with llama.cpp's rules; the
table lists, per tensor, the blocks repacked and the SQNR of the file against the folder (inf:
identical). The file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError


def add_parser(sub, quiet: argparse.ArgumentParser) -> None:
    from ..llm.gguf_export import TYPES

    e = sub.add_parser(
        "export",
        parents=[quiet],
        help="write a decoder folder as a GGUF file for llama.cpp",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument(
        "model", metavar="MODEL_DIR", help="a decoder folder (config.json + safetensors)"
    )
    e.add_argument("--format", choices=("gguf",), default="gguf", help="file format (gguf)")
    e.add_argument(
        "--type",
        type=str.upper,
        choices=TYPES,
        default="Q4_0",
        help="type of every matrix (default Q4_0); norms stay F32",
    )
    e.add_argument("-o", "--output", required=True, metavar="OUT", help="the file to write")
    e.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    e.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_export(args, quiet: bool) -> int:
    from ..llm.gguf_export import export_gguf

    if not Path(args.model).is_dir():
        raise ConfigError(f"{args.model}: not a folder (a decoder folder holds config.json)")
    result = export_gguf(args.model, args.output, args.type, overwrite=args.overwrite)
    if args.json:
        doc = {**result.__dict__, "tensors": [t.__dict__ for t in result.tensors]}
        print(json.dumps(doc, indent=2).replace("Infinity", '"inf"'))
    elif quiet:
        print(result.to_text().splitlines()[-1 - len(result.notes)])
    else:
        print(result.to_text())
    return 0
