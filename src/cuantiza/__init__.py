"""cuantiza: quantize trained neural networks to 1-8-bit integers; run, save, export, report.

The public API only; docs/DESIGN.md is the map of the package.
"""

from . import llm as llm  # decoders: checkpoints, generate, perplexity (transformers on demand)
from ._version import __version__ as __version__
from .core.histogram import HistogramObserver
from .core.observers import MinMaxObserver, MovingAverageObserver
from .core.packing import pack, unpack
from .core.qparams import QParams, choose_qparams
from .core.qtensor import QTensor
from .core.quantize import dequantize, fake_quantize, quantize, quantize_tensor
from .core.range_specs import MSE, Histogram, MinMax, MovingAverage, Percentile
from .core.scheme import PerChannel, PerGroup, PerTensor, QScheme
from .errors import (
    CalibrationError,
    ConfigError,
    CorruptFileError,
    CuantizaError,
    NonFiniteError,
    OutputExistsError,
    PlanError,
    ScaleOverflowError,
    ShapeError,
    UnsafeFileError,
    UnsupportedDtypeError,
    WriteError,
)
from .io.load import load
from .io.save import save
from .nn.config import QuantConfig
from .nn.plan import Plan, plan
from .nn.workflows import (
    calibrate,
    convert,
    freeze_observers,
    prepare,
    prepare_qat,
    quantize_dynamic,
    quantize_weights,
    simulate,
)
from .onnx import export_onnx, quantize_onnx
from .report.build import Report, report

__all__ = [
    "QScheme",
    "PerTensor",
    "PerChannel",
    "PerGroup",
    "QParams",
    "choose_qparams",
    "quantize",
    "dequantize",
    "fake_quantize",
    "quantize_tensor",
    "pack",
    "unpack",
    "QTensor",
    "MinMax",
    "MovingAverage",
    "Percentile",
    "Histogram",
    "MSE",
    "MinMaxObserver",
    "MovingAverageObserver",
    "HistogramObserver",
    "QuantConfig",
    "plan",
    "Plan",
    "quantize_weights",
    "quantize_dynamic",
    "prepare",
    "calibrate",
    "convert",
    "prepare_qat",
    "simulate",
    "freeze_observers",
    "save",
    "load",
    "report",
    "Report",
    "CuantizaError",
    "ConfigError",
    "UnsupportedDtypeError",
    "NonFiniteError",
    "ScaleOverflowError",
    "ShapeError",
    "CalibrationError",
    "PlanError",
    "CorruptFileError",
    "UnsafeFileError",
    "OutputExistsError",
    "WriteError",
    "export_onnx",
    "quantize_onnx",
]
