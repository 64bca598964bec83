"""ONNX deployment: export cuantiza models in QDQ form, quantize existing ONNX models.

* ``export_onnx(qmodel, example_input, path)``: a quantized torch model -> ONNX (``export``).
* ``quantize_onnx(src, dst, config, calibration)``: a float ONNX model -> QDQ (``quantize``).
* ``OnnxSummary``: what was written, layer by layer, also kept in the file's metadata.

Every file written passes ``onnx.checker`` and runs in onnxruntime first, and is published
atomically (``publish``); input files are read with the safety checks of ``fileio``.
"""

from .export import export_onnx
from .quantize import quantize_onnx
from .summary import LayerRecord, OnnxSummary, read_metadata

__all__ = ["export_onnx", "quantize_onnx", "OnnxSummary", "LayerRecord", "read_metadata"]
