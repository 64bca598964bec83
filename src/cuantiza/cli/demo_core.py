"""The numeric core on one weight-like matrix: every bit width, symmetry, granularity and range
choice, with the bytes each really takes and the signal-to-quantization-noise ratio.

The matrix is seeded: ``rows x cols`` normal weights (std 0.02, as in a trained linear layer)
whose last eighth of rows are heavy-tailed (Student-t, 3 degrees of freedom), where a few large
values stretch a row's range. For each scheme it reports

* bits/weight and bytes from ``QTensor.nbytes``: packed codes + scales (float16) + zero points;
* SQNR (dB) = 20 log10(||x|| / ||x - x_hat||): +6 dB per bit for uniform noise, higher is better.

1-bit symmetric is binary {-s, +s} with s = mean|x| (the range choice does not apply to it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..core.qtensor import QTensor
from ..core.range_specs import MSE, MinMax
from ..core.scheme import PerChannel, PerGroup, QScheme
from ..io.atomic import publish_file
from ..report.stats import tensor_sqnr_db

GRANULARITIES = (
    ("per-channel", PerChannel(0)),
    ("group128", PerGroup(128)),
    ("group32", PerGroup(32)),
)
RANGES = (("minmax", MinMax()), ("mse", MSE()))


@dataclass(frozen=True)
class CoreRow:
    scheme: str  # e.g. "int4 asym group32"
    range: str  # "minmax" or "mse"
    bits_per_weight: float
    nbytes: int
    sqnr_db: float


def weight_matrix(rows: int = 1024, cols: int = 1024, seed: int = 0) -> torch.Tensor:
    """Normal weights (std 0.02) with the last rows // 8 rows heavy-tailed (Student-t, 3 dof)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    heavy = rows // 8
    if heavy:
        w[rows - heavy :] = _student_t(heavy, cols, g) * 0.02
    return w


def _student_t(rows: int, cols: int, g: torch.Generator, dof: int = 3) -> torch.Tensor:
    """Student-t samples from a seeded generator: normal / sqrt(chi2(dof) / dof)."""
    z = torch.randn(rows, cols, generator=g)
    chi2 = torch.randn(dof, rows, cols, generator=g).square().sum(0)
    return z / (chi2 / dof).sqrt()


def schemes():
    """(label, scheme) for bits 8..1 x symmetric/asymmetric x granularity, float16 scales."""
    for bits in range(8, 0, -1):
        for sym in (True, False):
            kind = ("binary" if bits == 1 else "sym") if sym else "asym"
            for gname, gran in GRANULARITIES:
                yield f"int{bits} {kind} {gname}", QScheme(bits, sym, gran, "float16")


def demo_core(quick: bool = False, seed: int = 0, w: torch.Tensor | None = None) -> list[CoreRow]:
    """Quantize the matrix with every scheme and range; one row each (binary: MinMax only,
    its scale is mean|x| whatever the range)."""
    if w is None:
        w = weight_matrix(256, 256, seed) if quick else weight_matrix(seed=seed)
    rows = []
    for label, scheme in schemes():
        for rname, spec in RANGES:
            if scheme.binary and rname != "minmax":
                continue
            qt = QTensor.from_float(w, scheme, range=spec, name="demo weight")
            sqnr = tensor_sqnr_db(w, qt.dequantize())
            rows.append(CoreRow(label, rname, qt.bits_per_weight, qt.nbytes, sqnr))
    return rows


def table(rows: list[CoreRow], w_shape: tuple, fp32_bytes: int) -> str:
    """Markdown table of ``rows`` with a one-line header on the matrix."""
    lines = [
        f"weight matrix {w_shape[0]}x{w_shape[1]} (normal, last eighth of rows Student-t); "
        f"float32: 32.000 bits/weight, {fp32_bytes:,} bytes",
        "",
        "| scheme | range | bits/weight | bytes | SQNR dB |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.scheme} | {r.range} | {r.bits_per_weight:.3f} | {r.nbytes:,} | {r.sqnr_db:.2f} |"
        )
    return "\n".join(lines)


def write_outputs(rows: list[CoreRow], text: str, out: str | Path) -> Path:
    """demo_core.md and demo_core.json in ``out``, each written whole (temporary + rename)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = json.dumps([asdict(r) for r in rows], indent=1)
    for name, content in (("demo_core.md", text + "\n"), ("demo_core.json", payload + "\n")):
        publish_file(out / name, content.encode("utf-8"))
    return out


def run(
    quick: bool = False,
    out: str | Path | None = None,
    seed: int = 0,
    echo=print,
    notes: bool = True,
) -> list[CoreRow]:
    """``cuantiza demo`` (core part): compute, print the table (with a header line and where
    it was written unless ``notes`` is False), optionally write it to ``out``."""
    w = weight_matrix(256, 256, seed) if quick else weight_matrix(seed=seed)
    rows = demo_core(quick, seed, w)
    text = table(rows, tuple(w.shape), w.numel() * 4)
    echo(text if notes else text.split("\n\n", 1)[1])
    if out is not None:
        path = write_outputs(rows, text, out)
        if notes:
            echo(f"\nwritten to {path / 'demo_core.md'} and {path / 'demo_core.json'}")
    return rows
