"""Quantized modules (integer execution) and fake-quant modules (calibration and QAT)."""

from .fake import FakeQuantConv, FakeQuantEmbedding, FakeQuantLinear
from .quantized import DynamicQuantLinear, QuantConv, QuantEmbedding, QuantLinear

__all__ = [
    "QuantLinear",
    "QuantConv",
    "QuantEmbedding",
    "DynamicQuantLinear",
    "FakeQuantLinear",
    "FakeQuantConv",
    "FakeQuantEmbedding",
]
