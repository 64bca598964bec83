"""report(float_model, qmodel, sample) -> Report: what quantization did to each layer.

One row per module that holds parameters (or a quantized weight) in either model, matched by
name. Bytes are what a file stores (``report_stats``): a quantized layer costs its packed codes,
scales, zero points and group padding (``QTensor.nbytes``), its float bias and its static
activation qparams; a layer left in float costs its parameters and buffers. Tied tensors count
once. Totals add bytes outside any layer (buffers such as position ids), so::

    quant_bytes = sum(row.quant_bytes) + quant_other_bytes
    bits_per_weight = 8 * sum(row.quant_bytes) / n_params     # n_params of the float model

Per row: weight SQNR against the float weight (BatchNorm folded in where the quantized model
folded it), output SQNR of the layer on ``sample`` (both models run on it; the quantized layer
sees its quantized predecessors, so the error is accumulated), and for static layers the
fraction of the layer's float input outside the calibrated range [s (qmin - z), s (qmax - z)].
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from torch import nn

from ..errors import CorruptFileError
from ..io.atomic import publish_file
from .layers import Context, LayerReport, layer_names, probe, row, totals
from .plots import render
from .stats import measure

FORMAT, VERSION = "cuantiza-report", 1


def _db_out(v):
    """JSON has no infinities: +-inf (and NaN, from NaN outputs) become "inf" / "-inf" / "nan"."""
    return v if v is None or math.isfinite(v) else str(v)


def _db_in(v):
    return float(v) if isinstance(v, str) else v


@dataclass(frozen=True)
class Report:
    workflow: str
    layers: tuple
    totals: dict

    def float_layers(self) -> list:
        return [r for r in self.layers if not r.quantized]

    def worst(self, n: int = 4) -> list:
        """The n quantized layers with the lowest output SQNR (ties: model order)."""
        scored = [
            (-math.inf if math.isnan(r.output_sqnr_db) else r.output_sqnr_db, i, r)
            for i, r in enumerate(self.layers)
            if r.quantized and r.output_sqnr_db is not None
        ]
        return [r for _, _, r in sorted(scored, key=lambda t: t[:2])[:n]]

    def to_dict(self) -> dict:
        layers = []
        for r in self.layers:
            d = asdict(r)
            d["weight_sqnr_db"], d["output_sqnr_db"] = (
                _db_out(r.weight_sqnr_db),
                _db_out(r.output_sqnr_db),
            )
            layers.append(d)
        totals = dict(self.totals, output_sqnr_db=_db_out(self.totals["output_sqnr_db"]))
        return {
            "format": FORMAT,
            "version": VERSION,
            "workflow": self.workflow,
            "totals": totals,
            "layers": layers,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
            raise CorruptFileError(f"not a {FORMAT} version {VERSION} document")
        try:
            names = [f.name for f in fields(LayerReport)]
            layers = tuple(_layer_from_dict({k: r[k] for k in names}) for r in d["layers"])
            totals = dict(d["totals"], output_sqnr_db=_db_in(d["totals"]["output_sqnr_db"]))
            return cls(str(d["workflow"]), layers, totals)
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(
                f"report document is missing or has a malformed field: {e}"
            ) from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"

    def to_markdown(self) -> str:
        """A table of the layers, the totals, and the layers kept in float with the reason."""
        t = self.totals
        lines = [
            f"# cuantiza report ({self.workflow})",
            "",
            *_table(self.layers),
            "",
            "## Totals",
            "",
        ]
        lines += [f"- {label}: {value}" for label, value in _totals_lines(t)]
        kept = self.float_layers()
        lines += ["", f"## Layers kept in float ({len(kept)})", ""]
        lines += [f"- `{_name(r)}` ({r.kind or r.quant_kind}): {r.reason}" for r in kept] or [
            "- none"
        ]
        slow = [r for r in self.layers if r.slow_kernel]
        if slow:  # a fast kernel exists for most layers: say why these did not get one
            lines += ["", f"## Layers on a slow reference kernel ({len(slow)})", ""]
            lines += [f"- `{_name(r)}` ({r.kernel}): {r.slow_kernel}" for r in slow]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()

    def save(self, directory, plots: int = 4) -> Path:
        """Write report.md, report.json and PNG plots of the ``plots`` worst layers into
        ``directory``; every file appears whole or not at all (temporary file + os.replace)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        pngs = render(self.worst(plots)) if plots > 0 else []  # before writing anything
        publish_file(d / "report.md", self.to_markdown().encode())
        publish_file(d / "report.json", self.to_json().encode())
        for filename, data in pngs:
            publish_file(d / filename, data)
        return d

    @classmethod
    def load(cls, directory) -> Report:
        path = Path(directory) / "report.json"
        if not path.is_file():
            raise CorruptFileError(f"{path} does not exist; give a folder written by Report.save()")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorruptFileError(f"{path} is not valid JSON ({e}); save the report again") from e
        return cls.from_dict(d)


def _layer_from_dict(d: dict) -> LayerReport:
    r = LayerReport(**d)
    return replace(
        r, weight_sqnr_db=_db_in(r.weight_sqnr_db), output_sqnr_db=_db_in(r.output_sqnr_db)
    )


_COLUMNS = (
    "layer",
    "kind",
    "scheme",
    "kernel",
    "float B",
    "quant B",
    "bits/w",
    "weight SQNR",
    "output SQNR",
    "clipped",
    "NaN/Inf",
)


def _name(r: LayerReport) -> str:
    return r.name or "(model)"


def _fmt_db(v) -> str:
    if v is None:
        return "-"
    return "exact" if v == math.inf else f"{v:.1f} dB"


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _table(layers) -> list:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * 4 + "---:|" * 7]
    for r in layers:
        kind = (
            r.kind
            if r.kind == r.quant_kind or not r.quant_kind
            else f"{r.kind or '-'} → {r.quant_kind}"
        )
        nan_inf = "-" if r.n_nan is None else f"{r.n_nan}/{r.n_inf}"
        clipped = "-" if r.clipped_fraction is None else f"{100 * r.clipped_fraction:.3f}%"
        cells = (
            f"`{_name(r)}`",
            kind,
            r.scheme,
            r.kernel or "-",
            f"{r.float_bytes:,}",
            f"{r.quant_bytes:,}",
            _fmt(r.bits_per_weight, ".3f"),
            _fmt_db(r.weight_sqnr_db),
            _fmt_db(r.output_sqnr_db),
            clipped,
            nan_inf,
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _totals_lines(t: dict) -> list:
    return [
        ("float bytes", f"{t['float_bytes']:,} (outside layers: {t['float_other_bytes']:,})"),
        ("quantized bytes", f"{t['quant_bytes']:,} (outside layers: {t['quant_other_bytes']:,})"),
        ("compression", _fmt(t["ratio"], ".3f") + "x"),
        (
            "bits per weight (scales, zero points, padding, biases and float layers included)",
            _fmt(t["bits_per_weight"], ".3f") + f" over {t['n_params']:,} float parameters",
        ),
        ("layers quantized / kept in float", f"{t['n_quantized']} / {t['n_float']}"),
        ("model output SQNR", _fmt_db(t["output_sqnr_db"])),
        ("in-memory caches of the quantized model (not saved)", f"{t['quant_cache_bytes']:,} B"),
    ]


def report(float_model: nn.Module, qmodel: nn.Module, sample) -> Report:
    """Compare ``qmodel`` with the float model it came from on ``sample`` (a tensor, a tuple of
    positional arguments or a dict of keyword arguments). Neither model is modified (each runs
    once, in eval mode, under no_grad; training flags are restored). Every layer's float output
    is held until the quantized model has run: pass one modest batch."""
    ctx = Context(float_model, qmodel)
    names = layer_names(float_model, qmodel)
    probes = [probe(name, ctx) for name in names]
    model_sqnr = measure(float_model, qmodel, sample, probes)
    rows = [row(name, ctx, measured) for name, measured in zip(names, probes, strict=False)]
    return Report(ctx.workflow, tuple(rows), totals(rows, ctx, model_sqnr))
