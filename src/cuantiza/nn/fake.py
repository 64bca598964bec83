"""Fake-quant modules: what ``prepare`` (static PTQ) and ``prepare_qat`` put in the model.

Each wraps a float layer's parameters and has two switches:

* ``observing``: feed the layer's input to the activation observer (in training mode, or
  inside ``calibrate``; evaluating a QAT model never moves its ranges);
* ``fake_quant``: simulate quantization. The simulation runs in the *integer domain*: inputs
  and weights become the integers ``q - z`` (float64, exact, with straight-through gradients,
  ``ops.int_ste``), the float64 matmul/conv of integers is exact, and the exit is the very
  ``kernels.dequant_acc`` the integer model uses. So the simulated model and the converted
  integer model agree bit for bit, and QAT trains exactly the model that will run.

Static PTQ: ``observing`` on, ``fake_quant`` off while calibrating; QAT: both on, and
``freeze_observers`` turns observing off. Weight qparams follow the current weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import layers as kernels
from ..core.qparams import QParams
from ..core.quantize import fake_quantize, int_ste, tensor_qparams
from .layer_math import conv_args, exit_scales, weight_2d
from .plan import LayerPlan
from .quantized import conv_exit


class _FakeQuant(nn.Module):
    def __init__(self, float_mod: nn.Module, lp: LayerPlan):
        super().__init__()
        self.weight = float_mod.weight
        self.bias = getattr(float_mod, "bias", None)
        self.layer_plan = lp
        self.wscheme, self.ascheme = lp.weight, lp.activation
        cfg = lp.config
        self.weight_range = cfg.weight_range
        self.act_observer = cfg.observer.make() if self.ascheme is not None else None
        self.observing = self.ascheme is not None
        self.calibrating = False  # set by calibrate(): observe even in eval mode
        self.fake_quant = False

    def weight_qparams(self) -> QParams:
        return tensor_qparams(
            weight_2d(self.weight.detach()),
            self.wscheme,
            self.weight_range,
            name=f"{self.layer_plan.name}.weight",
        )

    def act_qparams(self) -> QParams:
        return self.act_observer.qparams(self.ascheme)

    def _observe(self, x: torch.Tensor) -> None:
        if self.observing and self.act_observer is not None and (self.training or self.calibrating):
            with torch.no_grad():
                self.act_observer.observe(x)

    def extra_repr(self) -> str:
        act = self.ascheme.describe() if self.ascheme else "float"
        return (
            f"{self.layer_plan.name}: w {self.wscheme.describe()}, act {act}, "
            f"observing={self.observing}, fake_quant={self.fake_quant}"
        )


class FakeQuantLinear(_FakeQuant):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._observe(x)
        if not self.fake_quant:
            return F.linear(x, self.weight, self.bias)
        qp_w = self.weight_qparams()
        if self.ascheme is None:
            return F.linear(x, fake_quantize(self.weight, qp_w), self.bias)
        qp_x = self.act_qparams()
        acc = F.linear(int_ste(x, qp_x), int_ste(self.weight, qp_w))  # float64, exact
        return kernels.dequant_acc(acc, exit_scales(qp_w), qp_x.scale.to(torch.float32), self.bias)


class FakeQuantConv(_FakeQuant):
    def __init__(self, float_mod: nn.Module, lp: LayerPlan):
        super().__init__(float_mod, lp)
        self.conv = conv_args(float_mod)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._observe(x)
        c = self.conv
        one_d = c["dims"] == 1
        x4 = x.unsqueeze(2) if one_d else x
        w4 = self.weight.unsqueeze(2) if one_d else self.weight
        args = (c["stride"], c["padding"], c["dilation"], c["groups"])
        if not self.fake_quant:
            y = F.conv2d(x4, w4, self.bias, *args)
        elif self.ascheme is None:
            w = fake_quantize(weight_2d(self.weight), self.weight_qparams()).reshape(w4.shape)
            y = F.conv2d(x4, w, self.bias, *args)
        else:
            qp_w, qp_x = self.weight_qparams(), self.act_qparams()
            w_int = int_ste(weight_2d(self.weight), qp_w).reshape(w4.shape)
            acc = F.conv2d(int_ste(x4, qp_x), w_int, None, *args)  # float64, exact
            y = conv_exit(acc, exit_scales(qp_w), qp_x.scale.to(torch.float32), self.bias)
        return y.squeeze(2) if one_d else y


class FakeQuantEmbedding(_FakeQuant):
    def __init__(self, float_mod: nn.Embedding, lp: LayerPlan):
        super().__init__(float_mod, lp)
        self.padding_idx = float_mod.padding_idx

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        w = fake_quantize(self.weight, self.weight_qparams()) if self.fake_quant else self.weight
        return F.embedding(idx, w, self.padding_idx)
