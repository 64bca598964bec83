"""The quantization report: per layer scheme, kernel, bytes, bits/weight and error."""
