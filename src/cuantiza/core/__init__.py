"""The numeric core: schemes, qparams, blocking, ranges and observers, packing, QTensor and the
quantize / dequantize maps. Tensors in, tensors out: no ``torch.nn``, no model walking. Kernels
come from ``cuantiza.backends``; nothing here imports a layer above it."""
