"""PNG plots for ``Report.save``: per layer, the histograms of its float weight and of its float
input, with the clipping range the quantized layer uses marked (dashed red lines).

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend switch), from
the histograms a report keeps, so a report loaded from JSON plots the same. PNG metadata holds
no software version, so the same report gives the same bytes on one matplotlib install.
"""

from __future__ import annotations

import io
import re


def _figure_class():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # matplotlib is an optional dependency (extras "dev", "examples")
        raise ImportError(
            "report plots need matplotlib: pip install matplotlib, "
            "or save(dir, plots=0) for report.md and report.json only"
        ) from e
    return Figure, FigureCanvasAgg


def plot_filename(rank: int, name: str) -> str:
    """``plot_01_encoder.layer.0.attention.png``: rank by output SQNR, then the layer name."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "model"
    return f"plot_{rank:02d}_{safe}.png"


def _panel(ax, h: dict | None, title: str, clip_label: str) -> None:
    ax.set_title(title, fontsize=9)
    if not h or not any(h["counts"]):
        ax.text(0.5, 0.5, "no float data", ha="center", va="center", transform=ax.transAxes)
        return
    counts = h["counts"]
    width = (h["hi"] - h["lo"]) / len(counts)
    edges = [h["lo"] + i * width for i in range(len(counts) + 1)]
    ax.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.7)
    ax.set_yscale("log", nonpositive="clip")
    ax.set_ylabel("count (log)", fontsize=8)
    if h["clip"] is not None:
        for x in h["clip"]:
            ax.axvline(x, color="tab:red", linestyle="--", linewidth=1)
        ax.set_xlabel(f"dashed: {clip_label} [{h['clip'][0]:.4g}, {h['clip'][1]:.4g}]", fontsize=8)


def _sqnr_text(v) -> str:
    if v is None:
        return "-"
    return "exact" if v == float("inf") else f"{v:.1f} dB"


def layer_png(layer) -> bytes:
    """One PNG: weight histogram (left), activation histogram (right)."""
    Figure, FigureCanvasAgg = _figure_class()
    fig = Figure(figsize=(9, 3.2))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    _panel(left, layer.histograms.get("weight"), "weight (float)", "widest block range")
    _panel(
        right,
        layer.histograms.get("activation"),
        "input activation (float model)",
        "calibrated range",
    )
    fig.suptitle(
        f"{layer.name or '(model)'}: {layer.scheme}; weight SQNR "
        f"{_sqnr_text(layer.weight_sqnr_db)}, output SQNR {_sqnr_text(layer.output_sqnr_db)}",
        fontsize=9,
    )
    fig.subplots_adjust(
        left=0.09, right=0.98, bottom=0.17, top=0.82, wspace=0.25
    )  # no tight_layout: 2x slower
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    return buf.getvalue()


def render(layers: list) -> list:
    """(filename, PNG bytes) for each layer, worst first."""
    return [
        (plot_filename(rank, layer.name), layer_png(layer)) for rank, layer in enumerate(layers, 1)
    ]
