"""Weight algorithms beyond plain round-to-nearest. Each is a pure function of a weight (and,
for the calibrated ones, statistics of its inputs); no model walking, no modules.

* ``rtn`` -- round to nearest (``range=MSE()`` for MSE-optimal clipping).
* ``hqq`` -- data-free half-quadratic optimisation of scales / zero points (Badri & Shaji 2023).
* ``gptq`` -- Hessian-based error compensation (Frantar et al. 2022); needs a ``Hessian``.
* ``awq_scales`` / ``apply_scales`` -- activation-aware per-channel scaling (Lin et al. 2023),
  folded into the previous op and the weights; then round with ``rtn`` (or ``hqq``).
* ``smooth_scales`` / ``ActAbsMax`` -- SmoothQuant's W8A8 activation smoothing (Xiao et al. 2022).

``quantize_weight`` picks a weight method by name. All return ordinary ``QTensor`` values of the
given scheme (integer zero points, scales in ``scheme.scale_dtype``). Each method's function
lives in its submodule (``from cuantiza.algorithms.gptq import gptq``); the package exports
only names that do not shadow a submodule.

>>> import torch, cuantiza as cz
>>> w = torch.randn(16, 64)
>>> s = cz.QScheme(bits=4, symmetric=False, granularity=cz.PerGroup(32))
>>> quantize_weight(w, s, method="hqq").shape
(16, 64)
>>> h = Hessian(64).add(torch.randn(256, 64))
>>> quantize_weight(w, s, method="gptq", hessian=h).scheme == s
True
"""

from __future__ import annotations

import torch

from ..core.qtensor import QTensor
from ..core.range_specs import MinMax, RangeSpec
from ..core.scheme import QScheme
from ..errors import ConfigError
from .awq import Folded, apply_scales, awq_scales
from .gptq import gptq as _gptq
from .hessian import Hessian
from .hqq import hqq as _hqq
from .rtn import rtn as _rtn
from .smoothquant import ActAbsMax, smooth_scales

WEIGHT_METHODS = ("rtn", "hqq", "gptq")


def quantize_weight(
    w: torch.Tensor,
    scheme: QScheme,
    method: str = "rtn",
    range: RangeSpec = MinMax(),
    name: str = "weight",
    **options,
) -> QTensor:
    """Quantize one weight with ``method``:

    * ``"rtn"``: round to nearest over ``range`` (no options);
    * ``"hqq"``: data-free; ``range`` is the starting point; options ``iters``, ``p``, ``beta``,
      ``kappa``, ``refit`` (see ``hqq``);
    * ``"gptq"``: needs ``hessian=`` (a ``Hessian`` of the layer's inputs or an (in, in)
      matrix); options ``damp``, ``block_size``, ``act_order``, ``damp_max``; ``range`` picks
      each group's (or channel's) qparams.

    AWQ and SmoothQuant produce scales, not codes: fold them with ``apply_scales``, then call
    this with ``"rtn"`` (or ``"hqq"``). Unknown methods or options raise ``ConfigError``."""
    if method == "rtn":
        if options:
            raise ConfigError(f"{name}: method 'rtn' takes no options, got {sorted(options)}")
        return _rtn(w, scheme, range=range, name=name)
    if method == "hqq":
        return _call(_hqq, name, w, scheme, range=range, **options)
    if method == "gptq":
        if "hessian" not in options:
            raise ConfigError(
                f"{name}: method 'gptq' needs hessian= (accumulate a Hessian of the layer's "
                "inputs over calibration data), or use 'rtn' / 'hqq' without data"
            )
        hessian = options.pop("hessian")
        return _call(_gptq, name, w, hessian, scheme, range=range, **options)
    hint = " (AWQ gives scales: awq_scales, apply_scales, then 'rtn')" if method == "awq" else ""
    raise ConfigError(
        f"{name}: unknown weight method {method!r}; use one of {WEIGHT_METHODS}{hint}"
    )


def _call(fn, name, *args, **options):
    try:
        return fn(*args, name=name, **options)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise ConfigError(f"{name}: {fn.__name__} does not take option(s): {e}") from None
        raise


__all__ = [
    "quantize_weight",
    "Hessian",
    "awq_scales",
    "apply_scales",
    "Folded",
    "smooth_scales",
    "ActAbsMax",
    "WEIGHT_METHODS",
]
