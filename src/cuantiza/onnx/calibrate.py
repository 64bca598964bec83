"""Static calibration of an ONNX graph with cuantiza's streaming observers (bounded memory).

The tensors to observe become extra outputs of a copy of the graph; one onnxruntime session
runs the calibration batches one at a time, and each batch's values go straight into the
observers (``observers.py`` / ``histogram.py``: min/max, moving averages, exactly mergeable
histograms), then are dropped. Memory: one batch of the observed activations plus the
observers' fixed state, however many batches there are (FAULTS 31). Tensors that are graph
inputs are observed from the feeds themselves.

Calibration data: an iterable of feed dicts ``{input name: array}`` (NumPy arrays or torch
tensors), or the path of an ``.npz`` file whose arrays are named after the graph's inputs and
are cut along axis 0 into batches of ``batch_size`` (``np.load(allow_pickle=False)``: no pickle;
an ``.npz`` member is read whole, so split very large sets into several files or use an
iterable). NaN / Inf / mask-like values are excluded from the statistics and counted.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from onnx import ModelProto, helper

from ..errors import CalibrationError, CorruptFileError
from ..progress import bar
from . import fileio

NPZ_BATCH = 32


def _npz_batches(path: Path, batch_size: int):
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CorruptFileError(f"{path} is not a readable .npz file ({e})") from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise CorruptFileError(
            f"{path} holds a single array; save calibration data with np.savez(path, "
            "input_name=array, ...)"
        )
    with data:
        try:
            arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise CorruptFileError(f"{path}: an array is truncated or corrupt ({e})") from e
    sizes = {k: a.shape[0] if a.ndim else 0 for k, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise CalibrationError(f"{path}: arrays have different lengths along axis 0: {sizes}")
    n = next(iter(sizes.values()), 0)
    for start in range(0, n, batch_size):
        yield {k: a[start : start + batch_size] for k, a in arrays.items()}


def _as_array(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def input_shapes(model: ModelProto) -> dict:
    """Real graph inputs -> their declared shape: a tuple of ints, None for a dynamic dim."""
    inits = {t.name for t in model.graph.initializer}
    return {
        i.name: tuple(
            d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim
        )
        for i in model.graph.input
        if i.name not in inits and i.type.tensor_type.HasField("shape")
    }


def _check_shape(i: int, name: str, got: tuple, want: tuple | None) -> None:
    """CalibrationError naming the batch and input when ``got`` does not fit ``want``."""
    if want is None:
        return
    fits = len(got) == len(want) and all(
        w is None or w == g for g, w in zip(got, want, strict=True)
    )
    if not fits:
        shown = "(" + ", ".join("?" if w is None else str(w) for w in want) + ")"
        raise CalibrationError(
            f"calibration batch {i}: input {name!r} has shape {got}; the graph expects {shown} "
            "(? = any size)"
        )


def feeds(calibration, inputs: dict, batch_size: int = NPZ_BATCH, shapes: dict | None = None):
    """Feed dicts from ``calibration``, each checked against the graph's ``inputs``
    (name -> numpy dtype) and, when given, ``shapes`` (``input_shapes``)."""
    if isinstance(calibration, (str, os.PathLike)):
        source = _npz_batches(Path(calibration), batch_size)
    elif isinstance(calibration, dict):
        raise CalibrationError(
            "calibration must be an iterable of feed dicts (or an .npz path), "
            "not a single dict: wrap it in a list"
        )
    else:
        source = calibration
    for i, batch in enumerate(source):
        if not isinstance(batch, dict):
            raise CalibrationError(
                f"calibration batch {i} is a {type(batch).__name__}; give dicts "
                f"{{input name: array}} for the inputs {sorted(inputs)}"
            )
        missing, unknown = sorted(set(inputs) - set(batch)), sorted(set(batch) - set(inputs))
        if missing or unknown:
            raise CalibrationError(
                f"calibration batch {i}: missing inputs {missing}, unknown {unknown}; "
                f"the graph's inputs are {sorted(inputs)}"
            )
        feed = {k: _as_array(v).astype(inputs[k], copy=False) for k, v in batch.items()}
        for k, a in feed.items():
            _check_shape(i, k, a.shape, (shapes or {}).get(k))
        yield feed


def _augmented(model: ModelProto, names: list) -> ModelProto:
    m = ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    return m


def _session(model: ModelProto, tmp: str):
    if model.ByteSize() < fileio.EXTERNAL_THRESHOLD:
        return fileio.make_session(model.SerializeToString(), threads=0)
    from .publish import save_unchecked

    path = Path(tmp) / "calibration.onnx"
    save_unchecked(model, path)
    return fileio.make_session(str(path), threads=0)


def _run(sess, names: list, feed: dict, i: int) -> list:
    """One calibration batch through onnxruntime; its failure named with the batch index."""
    try:
        return sess.run(names, feed)
    except Exception as e:  # noqa: BLE001  (onnxruntime raises its own, untyped, errors)
        why = " ".join(str(e).split())
        raise CalibrationError(f"calibration batch {i}: onnxruntime cannot run it: {why}") from e


def observe(
    model: ModelProto, observers: dict, batches: Iterable, inputs: dict, total: int | None = None
) -> tuple[int, dict]:
    """Run ``batches`` through ``model``, feeding ``observers`` ({tensor: [observer, ...]}).
    Returns (number of batches, the first feed dict, for checking the result)."""
    graph_inputs = set(inputs)
    names = [n for n in observers if n not in graph_inputs]
    n, first = 0, None
    with tempfile.TemporaryDirectory(prefix="cuantiza-calib-") as tmp:
        sess = _session(_augmented(model, names), tmp)
        for feed in bar(batches, desc="calibrate", total=total, unit="batch"):
            outs = dict(zip(names, _run(sess, names, feed, n), strict=False)) if names else {}
            for name, obs_list in observers.items():
                values = torch.from_numpy(
                    np.ascontiguousarray(feed[name] if name in graph_inputs else outs[name])
                )
                for obs in obs_list:
                    obs.observe(values)
            first = feed if first is None else first
            n += 1
    return n, first
