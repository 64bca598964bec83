"""Helpers of bench_onnx.py: ORT sessions with one set of options, and each quantizer as a
function ``(src, dst, calibration feeds) -> None`` timed by ``make``.

Every variant is a ``Variant``: a name, its file (or the error text when a quantizer or its
output failed, which is then the result), and the seconds the quantizer took.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

import cuantiza as cz

THREADS = 2
logging.getLogger().setLevel(logging.ERROR)          # onnxruntime.quantization warns on the root logger


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
        if self.path is not None:           # the model file and any external data next to it
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

    return lambda dst: quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)


def ort_static(src: Path, feeds: list, method: str, weight: str = "QInt8"):
    """QDQ, uint8 activations, per-channel signed weights: the format of cuantiza's static default."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    def run(dst):
        quantize_static(str(src), str(dst), Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=getattr(QuantType, weight),
                        calibrate_method=getattr(CalibrationMethod, method))
    return run


def cz_onnx(src: Path, config, mode: str, feeds: list | None = None):
    return lambda dst: cz.quantize_onnx(src, dst, config, feeds, mode=mode)


FLOAT_ACTS = {"session.qdq_matmulnbits_accuracy_level": "1"}    # MatMulNBits keeps float32 activations


def with_float_acts(v: Variant) -> Variant:
    """The same file, run with MatMulNBits' accuracy_level 1 (see cuantiza.onnx.summary)."""
    if v.path is None:
        return Variant(v.name + ", accuracy_level=1", error=v.error)
    return Variant(v.name + ", session accuracy_level=1", v.path, v.seconds, sess=session(v.path, FLOAT_ACTS))


W4 = cz.QuantConfig(weight=cz.QScheme(4, granularity=cz.PerGroup(32)), group_remainder="per_channel")
