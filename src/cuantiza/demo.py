"""``cuantiza demo``: every workflow of the seed on a real model, in one table.

Trains a small CNN on scikit-learn's digits (seeded, seconds), then quantizes it: dynamic int8,
static int8 with min/max, percentile and histogram observers, weight-only 4-bit, and QAT with
4-, 2- and 1-bit weights (8-bit activations; the first conv keeps 8-bit weights, as is usual
for binary/ternary networks, and the table's bits/weight counts it). Prints bits/weight, bytes,
test accuracy, latency relative to fp32 and output SQNR, and writes the report (markdown, JSON,
plots) of the static histogram model to the output folder.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import torch

from . import digits
from .config import QuantConfig
from .report import report
from .scheme import PerChannel, PerGroup, QScheme
from .specs import Histogram, MinMax, MovingAverage, Percentile
from .workflows import calibrate, convert, freeze_observers, prepare, prepare_qat, quantize_dynamic, quantize_weights

W8 = QScheme(bits=8, granularity=PerChannel(0))


@dataclasses.dataclass
class Row:
    name: str
    model: torch.nn.Module
    accuracy: float = 0.0
    bpw: float = 32.0
    nbytes: int = 0
    latency: float = 1.0
    sqnr: float | None = None


def _latency(model, x, repeats: int) -> float:
    """Median seconds of a forward pass over the whole test split."""
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _static(fp32, x_tr, observer) -> torch.nn.Module:
    p = prepare(fp32, QuantConfig(observer=observer))
    return convert(calibrate(p, [x_tr[i:i + 128] for i in range(0, len(x_tr), 128)]))


def _qat(fp32, x_tr, y_tr, bits: int, epochs: int) -> torch.nn.Module:
    cfg = QuantConfig(weight=QScheme(bits=bits, granularity=PerChannel(0)), observer=MovingAverage(0.05),
                      overrides={"features.0": {"weight": W8}})
    q = prepare_qat(fp32, cfg)
    half = max(1, epochs // 2)
    digits.train(q, x_tr, y_tr, half, lr=2e-3, seed=1, desc=f"QAT w{bits}")
    freeze_observers(q)                     # settle the ranges, then fine-tune the weights to them
    digits.train(q, x_tr, y_tr, epochs - half, lr=5e-4, seed=2, desc=f"QAT w{bits} (frozen)")
    return convert(q)


def variants(fp32, x_tr, y_tr, quick: bool) -> list[Row]:
    qat_epochs = 6 if quick else 20
    w4 = QuantConfig(weight=QScheme(bits=4, granularity=PerGroup(16)), group_remainder="per_channel")
    return [
        Row("fp32", fp32),
        Row("dynamic int8", quantize_dynamic(fp32, QuantConfig())),
        Row("static int8, min/max", _static(fp32, x_tr, MinMax())),
        Row("static int8, percentile 99.99", _static(fp32, x_tr, Percentile(99.99))),
        Row("static int8, histogram (MSE)", _static(fp32, x_tr, Histogram(method="mse"))),
        Row("weight-only int4 (group 16)", quantize_weights(fp32, w4)),
        Row("QAT w4 a8", _qat(fp32, x_tr, y_tr, 4, qat_epochs)),
        Row("QAT w2 a8 (ternary)", _qat(fp32, x_tr, y_tr, 2, qat_epochs)),
        Row("QAT w1 a8 (binary)", _qat(fp32, x_tr, y_tr, 1, qat_epochs)),
    ]


def _measure(rows: list[Row], fp32, x_te, y_te, repeats: int) -> None:
    base = _latency(fp32, x_te, repeats)
    for r in rows:
        r.accuracy = digits.accuracy(r.model, x_te, y_te)
        r.latency = _latency(r.model, x_te, repeats) / base
        if r.model is fp32:
            r.nbytes = sum(t.numel() * t.element_size() for t in list(fp32.parameters()) + list(fp32.buffers()))
            continue
        totals = report(fp32, r.model, x_te).totals
        r.nbytes, r.bpw, r.sqnr = totals["quant_bytes"], totals["bits_per_weight"], totals["output_sqnr_db"]


def table(rows: list[Row]) -> str:
    lines = ["| variant | bits/weight | bytes | test accuracy % | latency vs fp32 | output SQNR dB |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        sqnr = "" if r.sqnr is None else f"{r.sqnr:.1f}"
        lines.append(f"| {r.name} | {r.bpw:.2f} | {r.nbytes:,} | {r.accuracy:.2f} | {r.latency:.2f}x | {sqnr} |")
    return "\n".join(lines)


def run(quick: bool = False, out: str | Path = "cuantiza-demo", seed: int = 0) -> list[Row]:
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = digits.load_split(seed)
    fp32 = digits.train(digits.DigitsCNN(), x_tr, y_tr, epochs=8 if quick else 25, lr=3e-3, seed=seed, desc="fp32")
    rows = variants(fp32, x_tr, y_tr, quick)
    _measure(rows, fp32, x_te, y_te, repeats=5 if quick else 20)
    print(f"digits CNN: {len(y_tr)} training and {len(y_te)} held-out images (scikit-learn load_digits)\n")
    print(table(rows))
    static = next(r for r in rows if r.name.startswith("static int8, histogram"))
    path = report(fp32, static.model, x_te).save(out)
    print(f"\nreport of '{static.name}' written to {path}/ (report.md, report.json, plots)")
    return rows
