"""Integer GEMM kernels per shape, side by side in one run: which one the dispatch table
should pick on this machine. Times acc = sum_k (q_x - z_x) w for each exact kernel of
``cuantiza.kernels`` against float32 F.linear (the anchor) and torch.ao's dynamic quantized
linear (fbgemm, quantize + GEMM + dequantize fused). Medians; ratios are what to compare.

Run: ``python benchmarks/bench_kernels.py`` (about a minute). Writes its section of RESULTS.md.
"""

from __future__ import annotations

import warnings

import torch
from _results import machine, median_seconds, write_section

from cuantiza.backends import layers as kernels
from cuantiza.backends.layers import ActInfo, IntWeight

SHAPES = [(1, 4096, 4096), (32, 4096, 4096), (128, 384, 1536), (128, 1536, 384), (4096, 384, 1536)]
S7 = ActInfo(127, symmetric=True, scalar_zp=True)  # 7-bit codes: exact on oneDNN everywhere


def _ao_linear(w: torch.Tensor):
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    lin = torch.nn.Sequential(torch.nn.Linear(w.shape[1], w.shape[0], bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(
            lin, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
        )


def row(m: int, k: int, n: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g)
    wt = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    w = IntWeight(wt, wt.to(torch.int32).sum(dim=1, dtype=torch.int32), 127)
    q = torch.randint(-63, 64, (m, k), dtype=torch.int8, generator=g)
    z = torch.zeros((), dtype=torch.int32)
    wf = wt.float()
    repeats = 3 if m * k * n > 2**31 else 10
    out = {
        "shape": f"{m}x{k}x{n}",
        "fp32": median_seconds(lambda: torch.nn.functional.linear(x, wf), repeats),
    }
    ao = _ao_linear(wf)
    out["torch.ao dynamic"] = median_seconds(lambda: ao(x), repeats)
    for name in ("onednn", "f32exact", "int_mm", "reference"):
        if name == "reference" and m * k * n > 2**28:
            continue  # minutes at this size; it is the spec, not a path
        try:
            kernels.choose(k, S7, w, prefer=name)
        except ValueError:
            continue
        out[name] = median_seconds(lambda name=name: kernels.linear_acc(name, q, z, w), repeats)
    return out


def table(rows: list) -> str:
    names = ["torch.ao dynamic", "onednn", "f32exact", "int_mm", "reference"]
    lines = [
        "| M x K x N | fp32 ms | " + " | ".join(f"{n} (x fp32 speed)" for n in names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for r in rows:
        cells = [f"{r['fp32'] / r[n]:.2f}x" if n in r else "n/a" for n in names]
        lines.append(f"| {r['shape']} | {r['fp32'] * 1e3:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    rows = [row(*s) for s in SHAPES]
    body = (
        f"## Integer GEMM kernels (`bench_kernels.py`)\n\n{machine()}. Speed relative to float32 "
        "F.linear on the same shape (higher is faster), 7-bit activation codes x int8 weights; "
        "torch.ao includes its own activation quantization. f32exact only runs where K * 63 * 127 "
        "< 2^24.\n\n" + table(rows)
    )
    write_section("bench_kernels", body)
    print(body)
