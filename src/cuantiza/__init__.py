"""cuantiza: quantize trained neural networks to 1-8-bit integers; run, save, export, report.

The public API only; see DESIGN.md for the map.
"""

from .errors import (CalibrationError, ConfigError, CorruptFileError, CuantizaError,
                     NonFiniteError, OutputExistsError, PlanError, ScaleOverflowError, ShapeError,
                     UnsafeFileError, UnsupportedDtypeError)
from .config import QuantConfig
from .histogram import HistogramObserver
from .observers import MinMaxObserver, MovingAverageObserver
from .ops import dequantize, fake_quantize, quantize, quantize_tensor
from .packing import pack, unpack
from .qparams import QParams, choose_qparams
from .qtensor import QTensor
from .scheme import PerChannel, PerGroup, PerTensor, QScheme
from .plan import Plan, plan
from .report import Report, report
from .io import load, save
from .onnx import export_onnx, quantize_onnx
from .specs import MSE, Histogram, MinMax, MovingAverage, Percentile
from .workflows import (calibrate, convert, freeze_observers, prepare, prepare_qat, quantize_dynamic,
                        quantize_weights, simulate)

__version__ = "0.1.0"

__all__ = [
    "QScheme", "PerTensor", "PerChannel", "PerGroup", "QParams", "choose_qparams",
    "quantize", "dequantize", "fake_quantize", "quantize_tensor", "pack", "unpack", "QTensor",
    "MinMax", "MovingAverage", "Percentile", "Histogram", "MSE",
    "MinMaxObserver", "MovingAverageObserver", "HistogramObserver",
    "QuantConfig", "plan", "Plan", "quantize_weights", "quantize_dynamic", "prepare", "calibrate",
    "convert", "prepare_qat", "simulate", "freeze_observers", "save", "load", "report", "Report",
    "CuantizaError", "ConfigError", "UnsupportedDtypeError", "NonFiniteError", "ScaleOverflowError",
    "ShapeError", "CalibrationError", "PlanError", "CorruptFileError", "UnsafeFileError",
    "OutputExistsError", "export_onnx", "quantize_onnx",
]
