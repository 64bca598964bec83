"""LLaMA-class decoder: perplexity and bytes per method and bit width, against gguf.

The committed decoder ``models/shakespeare-llama`` (LLaMA architecture, byte-level, trained
here on Shakespeare; fp16 checkpoint evaluated in float32) is quantized weight-only, every
linear layer, the head and the embedding, at 8, 5, 4, 3 and 2 bits with groups of 128 and 32
(asymmetric, fp16 scales and uint8 zero points: bits + 24/group bits per weight) by each
method: round to nearest with min/max ranges (``rtn``) and with the MSE clipping search
(``rtn+mse``), HQQ (data-free, started from the MSE rounding), GPTQ with min/max or MSE group
ranges, and AWQ (scales, then RTN with MSE); GPTQ and AWQ are calibrated on
``calibration.txt``, never on the held-out text. Also dynamic W8A8, with and without
SmoothQuant. The llama.cpp anchor is the ``gguf`` package's reference quantizers (Q8_0, Q5_1,
Q5_0, Q4_1, Q4_0: quantize, then dequantize into the same tensors). Perplexity is per
byte on ``heldout.txt`` (non-overlapping 256-byte windows).

Targets (issue 5): 8-bit dPPL < 0.5 %; 4-bit g128 GPTQ or AWQ dPPL at most half of RTN's;
for each gguf format, cuantiza's best at equal or fewer bits per weight has lower perplexity;
3-bit GPTQ clearly better than 3-bit RTN. Quantization speed in seconds per million parameters.

Run: ``.venv/bin/python benchmarks/bench_llm.py [--quick]`` (writes its RESULTS.md section).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

import cuantiza as cz
from cuantiza.llm import calibrated, evaluate, text
from cuantiza.progress import set_quiet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, write_section  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "models" / "shakespeare-llama"
GGUF = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
METHODS = ("rtn", "rtn+mse", "hqq", "gptq", "gptq+mse", "awq")


def config(bits: int, group: int, method: str) -> cz.QuantConfig:
    scheme = cz.QScheme(
        bits=bits, symmetric=False, granularity=cz.PerGroup(group), scale_dtype="float16"
    )
    rng = cz.MSE() if method in ("rtn+mse", "hqq", "gptq+mse", "awq") else cz.MinMax()
    return cz.QuantConfig(weight=scheme, weight_range=rng, method=method.split("+")[0])


def quantized(model: nn.Module, cfg: cz.QuantConfig, calib: torch.Tensor) -> nn.Module:
    if cfg.method in ("gptq", "awq"):
        return calibrated.quantize_model(model, cfg, calib)
    return cz.quantize_weights(model, cfg)


def bits_per_weight(qm: nn.Module) -> tuple[float, int]:
    """(bits per weight over the quantized tensors, their parameter count); ties counted once."""
    seen, nbytes, numel = set(), 0, 0
    for mod in qm.modules():
        qt = getattr(mod, "weight_q", None)
        if qt is not None and id(qt) not in seen:
            seen.add(id(qt))
            nbytes, numel = nbytes + qt.nbytes, numel + qt.numel
    return 8 * nbytes / numel, numel


def gguf_model(model: nn.Module, fmt: str) -> tuple[nn.Module, float]:
    """The model with every linear and embedding weight through gguf's quantizer and back."""
    import gguf
    from gguf.quants import dequantize, quantize

    qtype = getattr(gguf.GGMLQuantizationType, fmt)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    m = copy.deepcopy(model)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                w = mod.weight.detach().float().numpy()
                mod.weight.copy_(
                    torch.from_numpy(dequantize(quantize(w, qtype), qtype).reshape(w.shape))
                )
    return m, 8 * size / block


def ppl(model: nn.Module, tokens: torch.Tensor) -> float:
    return text.perplexity(model, tokens, seq_len=256, batch_size=8, progress=False)


def run(quick: bool) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = evaluate.load_causal_lm(MODEL)
    held = text.encode(text.load_text(MODEL / "heldout.txt"))
    calib = text.encode(text.load_text(MODEL / "calibration.txt"))
    if quick:
        held = held[: 16 * 1024]
    n_params = sum(p.numel() for p in model.parameters())
    base = ppl(model, held)
    rows = []
    for fmt in GGUF:
        m, bpw = gguf_model(model, fmt)
        rows.append(
            {
                "method": f"gguf {fmt}",
                "bits": None,
                "group": 32,
                "bpw": bpw,
                "ppl": ppl(m, held),
                "s_per_m": None,
            }
        )
    rows += w8a8_rows(model, calib, held)
    bits_list = (8, 4, 3) if quick else (8, 5, 4, 3, 2)
    for bits in bits_list:
        for group in (128, 32):
            for method in METHODS:
                cfg = config(bits, group, method)
                t = time.perf_counter()
                qm = quantized(model, cfg, calib)
                secs = time.perf_counter() - t
                bpw, numel = bits_per_weight(qm)
                rows.append(
                    {
                        "method": method,
                        "bits": bits,
                        "group": group,
                        "bpw": bpw,
                        "ppl": ppl(qm, held),
                        "s_per_m": secs / (numel / 1e6),
                    }
                )
                print(
                    f"{method:8s} {bits}b g{group:<4d} {bpw:.3f} bpw  ppl {rows[-1]['ppl']:.4f}",
                    flush=True,
                )
    return {
        "base": base,
        "rows": rows,
        "n_params": n_params,
        "tokens": int(held.numel()),
        "quick": quick,
    }


def w8a8_rows(model: nn.Module, calib: torch.Tensor, held: torch.Tensor) -> list:
    """Dynamic W8A8 (int8 per-channel weights, int8 per-tensor activations at run time, the
    embedding weight-only), without and with SmoothQuant (alpha 0.5)."""
    from cuantiza.llm.smooth import smooth_model

    cfg = cz.QuantConfig(activation=cz.QScheme(bits=8, symmetric=False))
    rows = []
    for name, make in (
        ("w8a8 dynamic", lambda: model),
        ("w8a8 + smoothquant", lambda: smooth_model(model, calib)),
    ):
        t = time.perf_counter()
        qm = cz.quantize_dynamic(make(), cfg)
        secs = time.perf_counter() - t
        bpw, numel = bits_per_weight(qm)
        rows.append(
            {
                "method": name,
                "bits": 8,
                "group": "ch",
                "bpw": bpw,
                "ppl": ppl(qm, held),
                "s_per_m": secs / (numel / 1e6),
            }
        )
    return rows


def _delta(p: float, base: float) -> str:
    return f"{100 * (p / base - 1):+.2f} %"


def _table(res: dict) -> list[str]:
    base = res["base"]
    lines = [
        "| method | bits | group | bits/weight | perplexity | dPPL | quantize s / M params |",
        "|---|---|---|---|---|---|---|",
        f"| float (fp16 checkpoint, fp32 compute) | 16 | - | 16 | {base:.4f} | - | - |",
    ]
    for r in res["rows"]:
        speed = "-" if r["s_per_m"] is None else f"{r['s_per_m']:.2f}"
        lines.append(
            f"| {r['method']} | {r['bits'] or '-'} | {r['group']} | {r['bpw']:.3f} | "
            f"{r['ppl']:.4f} | "
            f"{_delta(r['ppl'], base)} | {speed} |"
        )
    return lines


def _find(res, method, bits, group):
    return next(
        r
        for r in res["rows"]
        if r["method"] == method and r["bits"] == bits and r["group"] == group
    )


def targets(res: dict) -> list[str]:
    base, out = res["base"], []
    d = lambda r: r["ppl"] / base - 1  # noqa: E731
    best8 = min(d(_find(res, m, 8, 128)) for m in METHODS)
    out.append(
        f"- 8-bit g128 best dPPL {100 * best8:+.3f} % (target < 0.5 %): "
        f"{'met' if best8 < 0.005 else 'MISSED'}"
    )
    w8 = {r["method"]: d(r) for r in res["rows"] if r["method"].startswith("w8a8")}
    out.append(
        f"- W8A8 dynamic dPPL {100 * w8['w8a8 dynamic']:+.2f} %, with SmoothQuant "
        f"{100 * w8['w8a8 + smoothquant']:+.2f} %"
    )
    rtn4 = d(_find(res, "rtn", 4, 128))
    for m in ("gptq", "awq"):
        r = d(_find(res, m, 4, 128))
        out.append(
            f"- 4-bit g128 {m} dPPL {100 * r:+.2f} % vs rtn {100 * rtn4:+.2f} % (target at most "
            "half): "
            f"{'met' if r <= rtn4 / 2 else 'missed'}"
        )
    g3, r3 = d(_find(res, "gptq", 3, 128)), d(_find(res, "rtn", 3, 128))
    out.append(
        f"- 3-bit g128 gptq dPPL {100 * g3:+.2f} % vs rtn {100 * r3:+.2f} %: "
        f"{'met' if g3 < 0.75 * r3 else 'MISSED'}"
    )
    ours = [r for r in res["rows"] if r["method"] in METHODS]
    for g in (r for r in res["rows"] if r["method"].startswith("gguf")):
        cands = [r for r in ours if r["bpw"] <= g["bpw"] + 1e-9]
        best = min(cands, key=lambda r: r["ppl"])
        ok = best["ppl"] < g["ppl"]
        out.append(
            f"- {g['method']} ({g['bpw']:.2f} bits/w) ppl {g['ppl']:.4f}; cuantiza's best at <= "
            f"{g['bpw']:.2f} "
            f"bits/w: {best['method']} {best['bits']}-bit g{best['group']} ({best['bpw']:.3f}) ppl "
            f"{best['ppl']:.4f}: {'met' if ok else 'MISSED'}"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 KB of held-out text, 8/4/3 bits only")
    args = ap.parse_args()
    set_quiet(True)
    res = run(args.quick)
    body = [
        f"Model: `models/shakespeare-llama`, {res['n_params'] / 1e6:.2f} M parameters; perplexity "
        "per byte on "
        f"{res['tokens']:,} held-out bytes{' (quick run)' if res['quick'] else ''}. {machine()}.",
        "",
    ]
    body += _table(res) + ["", "Targets:", ""] + targets(res)
    title = "## LLaMA-class decoder: perplexity vs bits, methods and gguf (`bench_llm.py`)"
    write_section("llm", "\n".join([title, ""] + body))
    print("\n".join(body))


if __name__ == "__main__":
    main()
