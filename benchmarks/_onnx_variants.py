"""Helpers of bench_onnx.py: ORT sessions with one set of options, each quantizer as a
function ``(src, dst, calibration feeds) -> None`` timed by ``make``, round-robin timing, and
the op counts of onnxruntime's optimized graph (which layers it fused into integer kernels).

Every variant is a ``Variant``: a name, its file (or the error text when a quantizer or its
output failed, which is then the result), and the seconds the quantizer took.
"""

from __future__ import annotations

import collections
import logging
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

import cuantiza as cz

THREADS = 2
logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization warns on the root logger


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Variant:
    name: str
    path: Path | None = None
    seconds: float = 0.0
    error: str = ""
    sess: object = None
    bytes: int = 0

    def __post_init__(self):
        if self.path is not None:  # the model file and any external data next to it
            self.bytes = sum(f.stat().st_size for f in self.path.parent.glob(self.path.name + "*"))


def session(path: Path, config: dict | None = None):
    """The options every variant runs with: 2 intra-op threads, 1 inter-op, ORT's default
    graph optimizations (which fuse DequantizeLinear -> MatMul into MatMulNBits); ``config``:
    extra session config entries (one labelled row only)."""
    so = ort.SessionOptions()
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, v)
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:160]}"


def make(name: str, fn, dst: Path, check) -> Variant:
    """Run quantizer ``fn(dst)``, then open the result and ``check(session)`` it (one run);
    any failure is the result."""
    t = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(dst)
        v = Variant(name, dst, time.perf_counter() - t)
        v.sess = session(dst)
        check(v.sess)
    except Exception as e:  # noqa: BLE001  (a quantizer's or ORT's failure is a measured result)
        v = Variant(name, None, time.perf_counter() - t, _one_line(e))
    log(f"  {name}: {v.seconds:.1f} s {v.error}")
    return v


class Reader:
    """onnxruntime's CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list):
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        pass


def ort_dynamic(src: Path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    return lambda dst: quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True
    )


def ort_static(src: Path, feeds: list, method: str, weight: str = "QInt8"):
    """QDQ, uint8 activations, per-channel signed weights: the format of cuantiza's static
    default."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    def run(dst):
        quantize_static(
            str(src),
            str(dst),
            Reader(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=getattr(QuantType, weight),
            calibrate_method=getattr(CalibrationMethod, method),
        )

    return run


def cz_onnx(src: Path, config, mode: str, feeds: list | None = None, **kw):
    return lambda dst: cz.quantize_onnx(src, dst, config, feeds, mode=mode, **kw)


FLOAT_ACTS = {
    "session.qdq_matmulnbits_accuracy_level": "1"
}  # MatMulNBits keeps float32 activations


def with_float_acts(v: Variant) -> Variant:
    """The same file, run with MatMulNBits' accuracy_level 1 (see cuantiza.onnx.summary)."""
    if v.path is None:
        return Variant(v.name + ", accuracy_level=1", error=v.error)
    return Variant(
        v.name + ", session accuracy_level=1", v.path, v.seconds, sess=session(v.path, FLOAT_ACTS)
    )


def w4(group: int, scale_dtype: str = "float32") -> cz.QuantConfig:
    """4-bit symmetric weights in groups of ``group``; layers whose reduction is not a multiple
    of it (the CNN's) per channel."""
    return cz.QuantConfig(
        weight=cz.QScheme(4, granularity=cz.PerGroup(group), scale_dtype=scale_dtype),
        group_remainder="per_channel",
    )


def export_float(model, args: tuple, names: list, path: Path, output: str) -> Path:
    """The float model, torch's TorchScript exporter (opset 17), batch dimension dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=names,
            output_names=[output],
            opset_version=17,
            dynamo=False,
            dynamic_axes={k: {0: "b"} for k in names + [output]},
        )
    return path


def timed(fn, v: Variant, *args) -> dict:
    t = time.perf_counter()
    row = fn(v, *args)
    log(f"  measured {v.name}: {time.perf_counter() - t:.1f} s")
    return row


def interleaved(rows: list, key: str, repeats: int, warmup: int = 1) -> list:
    """Replace each row's ``key`` (a call) by its median seconds, timed round-robin (every row
    once per round), so that load on the shared machine hits all rows alike."""
    live = [r for r in rows if key in r]
    times = {id(r): [] for r in live}
    for i in range(warmup + repeats):
        for r in live:
            t = time.perf_counter()
            r[key]()
            if i >= warmup:
                times[id(r)].append(time.perf_counter() - t)
    for r in live:
        r[key] = statistics.median(times[id(r)])
    return rows


INTEGER_OPS = (
    "QLinearConv",
    "QGemm",
    "QLinearMatMul",
    "MatMulIntegerToFloat",
    "ConvInteger",
    "MatMulNBits",
)
FLOAT_OPS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")


def fused_ops(path: Path) -> str:
    """The layer ops of onnxruntime's optimized graph for ``path`` (the benchmark's session
    options, written with ``optimized_model_filepath``), e.g. "3 QLinearConv, 2 QGemm"."""
    with tempfile.TemporaryDirectory(prefix="bench-onnx-opt-") as d:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = THREADS, 1, 3
        so.optimized_model_filepath = str(Path(d) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        counts = collections.Counter(
            n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node
        )
    shown = [f"{counts[k]} {k}" for k in INTEGER_OPS if counts[k]]
    shown += [f"{counts[k]} float {k}" for k in FLOAT_OPS if counts[k]]
    shown += (
        [f"{counts['DequantizeLinear']} DequantizeLinear"] if counts["DequantizeLinear"] else []
    )
    return ", ".join(shown) or "no layer op"


def graph_ops(rows: list) -> list:
    """Record, for every static QDQ row that ran, the layer ops of ORT's optimized graph."""
    for r in rows:
        if "static" in r["v"].name and r["v"].path is not None and "score" in r:
            r["ops"] = fused_ops(r["v"].path)
    return rows


# ------------------------------------------------------------------------------ report
def table(rows: list, score: str, with_min: bool) -> str:
    base = rows[0]
    head = (
        f"| variant | bytes | vs fp32 | b1 ms | b32 ms | {score} |"
        + (" min cosine |" if with_min else "")
        + " quantize s |"
    )
    out = [head, "|---|" + "---:|" * (head.count("|") - 2)]
    for r in rows:
        v = r["v"]
        if "score" not in r:
            out.append(f"| {v.name} | failed: `{v.error}` |")
            continue
        cells = [
            v.name,
            f"{v.bytes:,}",
            f"{v.bytes / base['v'].bytes:.3f}",
            f"{r['t1'] * 1e3:.2f}",
            f"{r['t32'] * 1e3:.1f}",
            f"{r['score']:.4f}" if with_min else f"{r['score']:.2f}",
        ]
        cells += [f"{r['score_min']:.4f}"] if with_min else []
        cells += [f"{v.seconds:.1f}" if v.seconds else "-"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def by_name(rows: list, name: str) -> dict | None:
    """The row called ``name``, else the first whose name starts with it."""
    return next((r for r in rows if r["v"].name == name), None) or next(
        (r for r in rows if r["v"].name.startswith(name)), None
    )


def ok(flag: bool) -> str:
    return "met" if flag else "MISSED"


def ops_lines(name: str, rows: list) -> str:
    return "\n".join(f"- {name}, {r['v'].name}: {r['ops']}" for r in rows if "ops" in r)


W4_G128 = "cuantiza quantize_onnx 4-bit weight-only (g128)"


def ort_size_verdict(rows: list) -> str:
    w4row = by_name(rows, W4_G128)
    qdq = [r for r in rows if r["v"].name.startswith("ORT quantize_static") and r["v"].path]
    if "score" not in w4row:
        return f"cuantiza 4-bit failed ({w4row['v'].error}): MISSED"
    smallest = min(qdq, key=lambda r: r["v"].bytes, default=None)
    if smallest is None:
        return f"cuantiza 4-bit g128 {w4row['v'].bytes:,} B, ORT's QDQ tool produced nothing: met"
    return (
        f"cuantiza 4-bit g128 {w4row['v'].bytes:,} B vs ORT's smallest QDQ {smallest['v'].bytes:,} "
        "B "
        f"({smallest['v'].name}): {ok(w4row['v'].bytes < smallest['v'].bytes)}"
    )
