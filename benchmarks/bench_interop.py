"""cuantiza's GGUF in llama.cpp, side by side with cuantiza itself and with llama.cpp's own Q4_0.

On the committed decoder (models/shakespeare-llama, byte-level) and its held-out text:

1. ``cuantiza quantize`` symmetric 4-bit, groups of 32, float16 scales (Q4_0's grid), then
   ``cuantiza export --type Q4_0``: every block repacked, no requantization;
2. llama-perplexity on that file, and cuantiza's perplexity of the same folder computed with
   llama-perplexity's protocol (windows of CTX tokens, only the second half of each scored,
   no BOS): the two must agree within 0.5 % (same weights, two runtimes);
3. llama.cpp's own Q4_0 of the float model: cuantiza's F16 export of the float folder (exact:
   the weights are stored float16) quantized by ``llama-quantize --pure``, through
   llama-perplexity too.

Needs the llama.cpp tools (``_llamacpp.find_tools``; ``_llamacpp.build()`` makes them). Writes
its section of RESULTS.md. ``python benchmarks/bench_interop.py [--chunks N]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _llamacpp  # noqa: E402
from _results import machine, write_section  # noqa: E402

MODEL = ROOT / "models" / "shakespeare-llama"
TEXT = MODEL / "heldout.txt"
CTX = 256


def cuantiza_ppl_llama_protocol(folder: Path, ids: torch.Tensor, ctx: int, chunks: int) -> float:
    """Perplexity as llama-perplexity computes it: chunk i is ids[i ctx : (i + 1) ctx]; the
    logits at positions ctx/2 .. ctx-2 score the next token."""
    from cuantiza.llm.evaluate import load_causal_lm

    model = load_causal_lm(folder)
    first, nll, count = ctx // 2, 0.0, 0
    with torch.inference_mode():
        for i in range(chunks):
            window = ids[i * ctx : (i + 1) * ctx].unsqueeze(0)
            logp = torch.log_softmax(model(window).logits[0].double(), dim=-1)
            target = window[0, first + 1 :]
            nll -= float(logp[first : ctx - 1].gather(1, target[:, None]).sum())
            count += target.numel()
    return math.exp(nll / count)


def _quantize_and_export(tmp: Path) -> tuple[Path, Path, Path, object]:
    from cuantiza.cli.main import main
    from cuantiza.llm.gguf_export import export_gguf

    q = tmp / "q4"
    argv = ["-q", "quantize", str(MODEL), "-o", str(q), "--bits", "4", "--group-size", "32"]
    assert main([*argv, "--symmetric"]) == 0
    res = export_gguf(q, tmp / "cuantiza-q4_0.gguf", "Q4_0")
    f16 = export_gguf(MODEL, tmp / "float-f16.gguf", "F16").path
    return q, Path(res.path), Path(f16), res


def run(chunks: int | None) -> str:
    from cuantiza.llm.text import encode, load_text

    tools = _llamacpp.find_tools()
    if tools is None:
        raise SystemExit("llama.cpp tools not found; build them with benchmarks/_llamacpp.py")
    ids = torch.as_tensor(encode(load_text(TEXT)), dtype=torch.long)
    n_chunks = min(len(ids) // CTX, chunks or len(ids))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        q, ours, f16, res = _quantize_and_export(tmp)
        t_export = time.perf_counter() - t0
        theirs = tmp / "llama-quantize-q4_0.gguf"
        _llamacpp._check([str(tools["llama-quantize"]), "--pure", str(f16), str(theirs), "Q4_0"])
        ppl = {
            "cuantiza Q4_0 GGUF in llama.cpp": _llamacpp.perplexity(ours, TEXT, CTX, 2, n_chunks),
            "same folder in cuantiza": cuantiza_ppl_llama_protocol(q, ids, CTX, n_chunks),
            "llama-quantize --pure Q4_0 in llama.cpp": _llamacpp.perplexity(
                theirs, TEXT, CTX, 2, n_chunks
            ),
            "float F16 GGUF in llama.cpp": _llamacpp.perplexity(f16, TEXT, CTX, 2, n_chunks),
        }
        sizes = {"ours": ours.stat().st_size, "theirs": theirs.stat().st_size}
    exact = sum(t.exact_blocks for t in res.tensors)
    total = sum(t.blocks for t in res.tensors)
    gap = 100 * (ppl["cuantiza Q4_0 GGUF in llama.cpp"] / ppl["same folder in cuantiza"] - 1)
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in ppl.items())
    return (
        f"{machine()}. models/shakespeare-llama, heldout.txt, llama-perplexity protocol: "
        f"{n_chunks} windows of {CTX} tokens, second half of each scored, no BOS. cuantiza: "
        f"`quantize --bits 4 --group-size 32 --symmetric` (float16 scales), `export --type "
        f"Q4_0`: {exact}/{total} blocks repacked exactly, {sizes['ours']:,} bytes "
        f"(llama-quantize's: {sizes['theirs']:,}); quantize + export {t_export:.1f} s.\n\n"
        f"| model | perplexity |\n|---|---|\n{rows}\n\n"
        f"llama.cpp on cuantiza's file vs cuantiza on the same weights: {gap:+.3f} % "
        f"(target: within 0.5 %)."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=None, help="windows at most (default: all)")
    ap.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = ap.parse_args()
    body = run(args.chunks)
    print(body)
    if not args.no_write:
        write_section(
            "bench_interop", f"## cuantiza's GGUF in llama.cpp (`bench_interop.py`)\n\n{body}"
        )


if __name__ == "__main__":
    main()
