"""``cuantiza generate MODEL_DIR --prompt TEXT -n 128``: continue a prompt with a decoder folder.

The folder is a LLaMA-class decoder: float Hugging Face safetensors, or quantized by
``cuantiza quantize MODEL_DIR -o OUT`` (every linear then runs on cuantiza's weight-only
kernels). Greedy by default; ``--temperature`` samples (with ``--top-k`` / ``--top-p``), and
``--seed`` makes a sample repeatable. The text goes to stdout; the prompt and generation speeds
(tokens/s) and the kernels used go to stderr unless ``--quiet``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from .args import real, whole


def add_parser(sub, quiet: argparse.ArgumentParser) -> None:
    g = sub.add_parser(
        "generate",
        parents=[quiet],
        help="generate text with a decoder folder (float or quantized)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument(
        "model", metavar="MODEL_DIR", help="a decoder folder (config.json + safetensors)"
    )
    g.add_argument("--prompt", required=True, help="the text to continue")
    g.add_argument(
        "-n", "--max-new-tokens", type=whole(1), default=128, help="tokens to generate (128)"
    )
    g.add_argument("--temperature", type=real(0.0), default=0.0, help="0 (default): greedy")
    g.add_argument("--top-k", type=whole(0), default=0, help="sample from the k likeliest (0: all)")
    g.add_argument(
        "--top-p",
        type=real(0.0, 1.0, open_lo=True),
        default=1.0,
        help="sample from the top-p mass, in (0, 1] (1: all)",
    )
    g.add_argument(
        "--seed", type=whole(0, 2**63 - 1), default=0, help="random seed of the sampling (0)"
    )
    g.add_argument(
        "--float-activations",
        action="store_true",
        help="4- and 8-bit layers decode with float activations (default: int8 per block of 32, as "
        "llama.cpp does; faster, adds the activations' rounding)",
    )
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence")
    g.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_generate(args, quiet: bool) -> int:
    from ..llm.generation import generate

    if not Path(args.model).is_dir():
        raise ConfigError(f"{args.model}: not a folder (a decoder folder holds config.json)")
    g = generate(
        args.model,
        args.prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_at_eos=not args.ignore_eos,
        int8_activations=not args.float_activations,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "prompt_ids": g.prompt_ids,
                    "new_ids": g.new_ids,
                    "text": g.text,
                    "prefill_tokens_per_s": g.prefill_tokens_per_s,
                    "decode_tokens_per_s": g.decode_tokens_per_s,
                }
            )
        )
        return 0
    print(g.text if g.text is not None else " ".join(map(str, g.new_ids)))
    if not quiet:
        print(g.stats(), file=sys.stderr)
    return 0
