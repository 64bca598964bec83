"""``cuantiza demo``: every workflow of the primer (docs/primer.md) on a real model, in one table.

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

from ..core.range_specs import Histogram, MinMax, MovingAverage, Percentile
from ..core.scheme import PerChannel, PerGroup, QScheme
from ..nn.config import QuantConfig
from ..nn.workflows import (
    calibrate,
    convert,
    freeze_observers,
    prepare,
    prepare_qat,
    quantize_dynamic,
    quantize_weights,
    simulate,
)
from ..report.build import report
from . import digits

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
    simulated: torch.nn.Module | None = None  # the fake-quant model it was converted from
    exact: str = ""  # "yes" when simulation == integer execution


def _latencies(models: list, x, repeats: int) -> list[float]:
    """Median seconds of a forward pass over the whole test split, models timed round-robin
    so that drift in the machine's speed reaches all of them alike."""
    times = [[] for _ in models]
    with torch.no_grad():
        for m in models:
            m(x)
        for _ in range(repeats):
            for i, m in enumerate(models):
                t = time.perf_counter()
                m(x)
                times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def _static(name, fp32, x_tr, observer) -> Row:
    p = prepare(fp32, QuantConfig(observer=observer))
    calibrate(p, [x_tr[i : i + 128] for i in range(0, len(x_tr), 128)])
    return Row(name, convert(p), simulated=simulate(p))


def _qat(name, fp32, x_tr, y_tr, bits: int, epochs: int) -> Row:
    w = QScheme(bits=bits, granularity=PerChannel(0), scale_dtype="float16")
    cfg = QuantConfig(
        weight=w, observer=MovingAverage(0.05), overrides={"features.0": {"weight": W8}}
    )
    q = prepare_qat(fp32, cfg)
    half = max(1, epochs // 2)
    digits.train(q, x_tr, y_tr, half, lr=2e-3, seed=1, desc=f"QAT w{bits}")
    freeze_observers(q)  # settle the ranges, then fine-tune the weights to them
    digits.train(q, x_tr, y_tr, epochs - half, lr=5e-4, seed=2, desc=f"QAT w{bits} (frozen)")
    return Row(name, convert(q), simulated=q)


def variants(fp32, x_tr, y_tr, quick: bool) -> list[Row]:
    qat_epochs = 6 if quick else 20
    w4 = QuantConfig(
        weight=QScheme(bits=4, granularity=PerGroup(16), scale_dtype="float16"),
        group_remainder="per_channel",
    )
    return [
        Row("fp32", fp32),
        Row("dynamic int8", quantize_dynamic(fp32, QuantConfig())),
        _static("static int8, min/max", fp32, x_tr, MinMax()),
        _static("static int8, percentile 99.99", fp32, x_tr, Percentile(99.99)),
        _static("static int8, histogram (MSE)", fp32, x_tr, Histogram(method="mse")),
        Row("weight-only int4 (group 16)", quantize_weights(fp32, w4)),
        _qat("QAT w4 a8", fp32, x_tr, y_tr, 4, qat_epochs),
        _qat("QAT w2 a8 (ternary)", fp32, x_tr, y_tr, 2, qat_epochs),
        _qat("QAT w1 a8 (binary)", fp32, x_tr, y_tr, 1, qat_epochs),
    ]


def _measure(rows: list[Row], fp32, x_te, y_te, repeats: int) -> None:
    times = _latencies([r.model for r in rows], x_te, repeats)
    for r, t in zip(rows, times, strict=False):
        r.accuracy = digits.accuracy(r.model, x_te, y_te)
        r.latency = t / times[0]
        if r.simulated is not None:
            with torch.no_grad():
                r.exact = "yes" if torch.equal(r.simulated.eval()(x_te), r.model(x_te)) else "NO"
        if r.model is fp32:
            r.nbytes = sum(
                t.numel() * t.element_size() for t in list(fp32.parameters()) + list(fp32.buffers())
            )
            continue
        totals = report(fp32, r.model, x_te).totals
        r.nbytes, r.bpw, r.sqnr = (
            totals["quant_bytes"],
            totals["bits_per_weight"],
            totals["output_sqnr_db"],
        )


def table(rows: list[Row]) -> str:
    lines = [
        "| variant | bits/weight | bytes | test accuracy % | latency / fp32 | output SQNR dB | "
        "simulation == integer |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        sqnr = "" if r.sqnr is None else f"{r.sqnr:.1f}"
        lines.append(
            f"| {r.name} | {r.bpw:.2f} | {r.nbytes:,} | {r.accuracy:.2f} | {r.latency:.2f} | "
            f"{sqnr} | {r.exact} |"
        )
    return "\n".join(lines)


NOTES = """bits/weight and bytes count everything stored: packed codes, scales, zero points, biases,
layers left in float. Output SQNR compares logits with the fp32 model; QAT retrains the weights,
so its logits differ by design and accuracy is its measure. "simulation == integer": the
fake-quant model and the integer model give bit-identical logits on the whole test split."""


def run(quick: bool = False, out: str | Path = "cuantiza-demo", seed: int = 0) -> list[Row]:
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = digits.load_split(seed)
    fp32 = digits.train(
        digits.DigitsCNN(), x_tr, y_tr, epochs=8 if quick else 25, lr=3e-3, seed=seed, desc="fp32"
    )
    rows = variants(fp32, x_tr, y_tr, quick)
    _measure(rows, fp32, x_te, y_te, repeats=5 if quick else 20)
    print(
        f"digits CNN: {len(y_tr)} training and {len(y_te)} held-out images (scikit-learn "
        "load_digits)\n"
    )
    print(table(rows))
    print("\n" + NOTES)
    static = next(r for r in rows if r.name.startswith("static int8, histogram"))
    path = report(fp32, static.model, x_te).save(out)
    print(f"\nreport of '{static.name}' written to {path}/ (report.md, report.json, plots)")
    return rows
