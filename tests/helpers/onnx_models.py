"""Models, data and the layer-by-layer comparison shared by the ONNX tests.

``compare`` runs an ONNX file in onnxruntime with every layer's input, activation codes and
output exposed, runs cuantiza's integer model on the same input with forward hooks, and
measures, per layer: the largest output difference in LSBs of the output's 8-bit scale, and
the activation codes that differ (count and largest difference).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from cuantiza.core.quantize import quantize
from cuantiza.nn import DynamicQuantLinear
from cuantiza.nn.layer_math import dynamic_qparams
from tests.thresholds import THRESHOLDS


class ConvNet(nn.Module):
    """Digits-style CNN without BatchNorm: plain, grouped and depthwise Conv2d, a Conv1d,
    and two Linear layers (Gemm when exported by torch)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4),
            nn.ReLU(),  # grouped, 4x4
            nn.Conv2d(16, 16, 3, padding=1, groups=16),
            nn.ReLU(),
        )  # depthwise
        self.c1d = nn.Conv1d(16, 8, 3, padding=1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(8 * 16, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x):
        x = self.features(x)
        return self.classifier(torch.relu(self.c1d(x.flatten(2))))


class TextNet(nn.Module):
    """Embedding (Gather) and two Linear layers on (N, T, D) activations (MatMul + Add)."""

    def __init__(self, vocab: int = 50, dim: int = 32):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc1 = nn.Linear(dim, 48)
        self.fc2 = nn.Linear(48, 4)

    def forward(self, idx):
        return self.fc2(torch.relu(self.fc1(self.emb(idx))))


def images(n: int, seed: int) -> torch.Tensor:
    """Digits-like 8x8 images in [0, 1]."""
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def tokens(n: int, seed: int, vocab: int = 50) -> torch.Tensor:
    return torch.randint(0, vocab, (n, 7), generator=torch.Generator().manual_seed(seed))


def float_onnx(model: nn.Module, x: torch.Tensor, path, input_name: str = "input", opset: int = 17):
    """The float model exported by torch (dynamo=False), batch dimension dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=["output"],
            dynamic_axes={input_name: {0: "batch"}, "output": {0: "batch"}},
        )
    return path


def float_session(source):
    """An onnxruntime session that keeps float32 activations where it fuses blockwise
    DequantizeLinear -> MatMul into MatMulNBits (by default it quantizes them to int8:
    ``accuracy_level`` 4)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run_ort(path, feeds: dict, extra: list) -> dict:
    """Run ``path`` (float32 activations) with the tensors ``extra`` exposed as outputs."""
    model = onnx.load(str(path))
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(
        helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(extra) if n not in have
    )
    names = [o.name for o in model.graph.output]
    return dict(
        zip(names, float_session(model.SerializeToString()).run(names, feeds), strict=False)
    )


def capture(qmodel: nn.Module, x: torch.Tensor, names: list) -> dict:
    """{module name: (input, output)} of one forward pass."""
    caps, hooks = {}, []
    for name in names:
        mod = qmodel.get_submodule(name)
        hooks.append(
            mod.register_forward_hook(
                lambda m, i, o, n=name: caps.__setitem__(n, (i[0].detach(), o.detach()))
            )
        )
    try:
        with torch.no_grad():
            qmodel(x)
    finally:
        for h in hooks:
            h.remove()
    return caps


def reference_codes(mod: nn.Module, x: torch.Tensor) -> np.ndarray | None:
    """The activation integers cuantiza's layer computes from its input ``x``."""
    if isinstance(mod, DynamicQuantLinear):
        x2 = x.reshape(-1, x.shape[-1]).to(torch.float32)
        qp = dynamic_qparams(x2, mod.act_scheme, mod.per_token)
        return quantize(x2, qp).numpy().astype(np.int64).reshape(x.shape)
    act = getattr(mod, "act", None)
    return None if act is None else quantize(x, act).numpy().astype(np.int64)


def output_lsb(y: np.ndarray) -> float:
    """LSB of y's 8-bit asymmetric per-tensor scale: (max(y, 0) - min(y, 0)) / 255."""
    return (max(float(y.max()), 0.0) - min(float(y.min()), 0.0)) / 255 or 1.0


def _codes_diff(got: np.ndarray, ref: np.ndarray) -> tuple[int, int]:
    diff = np.abs(got.astype(np.int64).reshape(ref.shape) - ref)
    return int((diff > 0).sum()), int(diff.max()) if diff.size else 0


def _without_bias(y: np.ndarray, mod: nn.Module) -> np.ndarray:
    """torch's exporter writes Linear on 3-d inputs as MatMul, then Add(bias): the MatMul
    output is the layer's output less its bias."""
    return y if getattr(mod, "bias", None) is None else y - mod.bias.numpy()


def compare(path, summary, qmodel: nn.Module, x: torch.Tensor, module_of=lambda n: n) -> dict:
    """Per layer, end to end (each side runs its own earlier layers) and isolated (cuantiza's
    layer fed the runtime's input of that layer):

    * ``lsb`` / ``iso_lsb``: max |y_ort - y_cz| in LSBs of the output's 8-bit scale;
    * ``mismatch`` / ``iso_mismatch``: activation codes that differ, of ``codes``;
      ``max_code_diff``: the largest difference end to end."""
    extra = [t for r in summary.layers for t in (r.input, r.codes, r.output) if t]
    feed_name = onnx.load(str(path)).graph.input[0].name
    outs = run_ort(path, {feed_name: x.numpy()}, extra)
    caps = capture(qmodel, x, [module_of(r.name) for r in summary.layers])
    stats = {}
    for r in summary.layers:
        name = module_of(r.name)
        mod, (xin, y) = qmodel.get_submodule(name), caps[name]
        x_ort = torch.from_numpy(outs[r.input])
        with torch.no_grad():
            y_iso = mod(x_ort).numpy()
        y = y.numpy()
        if r.op == "MatMul" and not summary.workflow.startswith("export"):
            y, y_iso = _without_bias(y, mod), _without_bias(y_iso, mod)
        lsb = output_lsb(y)
        s = {
            "lsb": float(np.abs(outs[r.output] - y).max() / lsb),
            "iso_lsb": float(np.abs(outs[r.output] - y_iso).max() / lsb),
            "mismatch": 0,
            "iso_mismatch": 0,
            "codes": 0,
            "max_code_diff": 0,
        }
        ref = reference_codes(mod, xin)
        if r.codes and ref is not None:
            s["mismatch"], s["max_code_diff"] = _codes_diff(outs[r.codes], ref)
            s["iso_mismatch"], _ = _codes_diff(outs[r.codes], reference_codes(mod, x_ort))
            s["codes"] = ref.size
        stats[r.name] = s
    return stats


def check_numerics(stats, exact_codes: bool = True, end_to_end_lsb: bool = True):
    """Each layer, fed the same input, gives the same activation codes as cuantiza (ONNX
    QuantizeLinear == cuantiza.ops.quantize) and outputs within float32 rounding; end to end,
    codes stay within 1, rarely off, and (8-bit activations) outputs within 1 LSB: one flipped
    4-bit activation code alone moves an output by several 8-bit output LSBs."""
    for name, s in stats.items():
        assert s["iso_lsb"] <= THRESHOLDS["onnx_isolated_output_lsb"], (name, s)
        assert s["lsb"] <= THRESHOLDS["onnx_layer_output_lsb"] or not end_to_end_lsb, (name, s)
        assert s["max_code_diff"] <= THRESHOLDS["onnx_code_mismatch_max"], (name, s)
        assert s["mismatch"] <= THRESHOLDS["onnx_code_mismatch_rate"] * max(s["codes"], 1), (
            name,
            s,
        )
        if exact_codes:
            assert s["iso_mismatch"] == 0, (name, s)


def module_of(node_name: str) -> str:
    """torch's exporter names nodes /<path>/<module>/<Op>."""
    return node_name.split("/")[-2]


def foreign_graph(dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    """A graph cuantiza did not make: odd names, dynamic dims, unnamed and repeated node
    names, one weight read by two MatMuls (same scheme) and by a ReduceMean (in float)."""
    npd = helper.tensor_dtype_to_np_dtype(dtype)
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(npd), "W/shared:0")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(npd), "héad weight")
    nodes = [
        helper.make_node("MatMul", ["in put:0", "W/shared:0"], ["h 1"], ""),
        helper.make_node("Relu", ["h 1"], ["h 2"], "dup"),
        helper.make_node("MatMul", ["h 2", "W/shared:0"], ["h 3"], "dup"),
        helper.make_node("ReduceMean", ["W/shared:0"], ["w mean"], axes=[0], keepdims=0),
        helper.make_node("Add", ["h 3", "w mean"], ["h 4"]),
        helper.make_node("MatMul", ["h 4", "héad weight"], ["out/put:0"], ""),
    ]
    g = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info("in put:0", dtype, ["b", "s", 16])],
        [helper.make_tensor_value_info("out/put:0", dtype, ["b", "s", 4])],
        [w, w2],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
