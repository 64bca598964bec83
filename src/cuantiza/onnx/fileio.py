"""Reading and writing ONNX files safely (FAULTS 25-29).

``load_model(path)``: typed errors before any work. A missing, truncated or corrupt file, or one
that fails ``onnx.checker``, raises ``CorruptFileError`` naming it. External data must live
inside the model's folder: an absolute location, a ``..`` component or a symbolic link anywhere
on the way raises ``UnsafeFileError`` before a byte of it is read; a data file shorter than
``offset + length`` is ``CorruptFileError``.

``save_model(model, dst, feeds)``: the model must pass ``onnx.checker`` and run in an
onnxruntime session on ``feeds`` before it is published; the file is written to a hidden
temporary name next to ``dst``, fsynced, and ``os.replace``d onto it, so a failure leaves the
previous file as it was. Models over ``EXTERNAL_THRESHOLD`` bytes (protobuf cannot hold 2 GiB)
keep their large tensors in one external data file next to ``dst``, named
``<dst name>.<sha256 prefix>.data`` after its content (same model, same name; the model file
only ever points at a complete data file), with a relative location.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import ModelProto, TensorProto
from onnx.external_data_helper import (
    ExternalDataInfo,
    load_external_data_for_model,
    uses_external_data,
)

from ..errors import CorruptFileError, PlanError, UnsafeFileError

# protobuf messages are limited to 2 GiB; keep a margin for the graph itself
EXTERNAL_THRESHOLD = 2**31 - 2**24
EXTERNAL_MIN_TENSOR = 1024  # tensors smaller than this stay inside the model file


def all_tensors(graph: onnx.GraphProto):
    """Initializers and attribute tensors of ``graph`` and of every subgraph."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from all_tensors(g)


def _check_location(t: TensorProto, base: Path, path: Path) -> None:
    info = ExternalDataInfo(t)
    loc = info.location or ""
    where = f"{path}: tensor {t.name!r} keeps its data in {loc!r}"
    p = Path(loc)
    if not loc or p.is_absolute() or p.drive or ".." in p.parts or loc.startswith(("/", "\\")):
        raise UnsafeFileError(
            f"{where}, outside the model's folder; move the data file next to "
            "the model and give a relative location"
        )
    cur = base
    for part in p.parts:
        cur = cur / part
        if cur.is_symlink():
            raise UnsafeFileError(
                f"{where}, through the symbolic link {cur}; copy the real file "
                "into the model's folder"
            )
    if not cur.is_file():
        raise CorruptFileError(f"{where}, which is missing; copy it next to the model")
    size = cur.stat().st_size
    offset = int(info.offset or 0)
    length = int(info.length) if info.length is not None else size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise CorruptFileError(
            f"{where} at bytes [{offset}, {offset + length}) but the file has "
            f"{size} bytes: it is truncated"
        )


def parse(path: Path) -> ModelProto:
    if not path.is_file():
        raise CorruptFileError(f"{path} is missing or not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001  (protobuf raises DecodeError, RuntimeWarning...)
        raise CorruptFileError(
            f"{path} is not a readable ONNX model ({type(e).__name__}: {e}); "
            "export or download it again"
        ) from e
    if not model.HasField("graph") or not model.graph.node:
        raise CorruptFileError(f"{path} holds no graph (empty or truncated file); export it again")
    return model


def load_model(path) -> ModelProto:
    """Parse ``path``, vet its external data, load it, and run ``onnx.checker``."""
    path = Path(path)
    model = parse(path)
    external = [t for t in all_tensors(model.graph) if uses_external_data(t)]
    for t in external:
        _check_location(t, path.parent, path)
    if external:
        load_external_data_for_model(model, str(path.parent))
    try:
        if model.ByteSize() < EXTERNAL_THRESHOLD:
            onnx.checker.check_model(model)
        else:
            onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise CorruptFileError(f"{path} fails onnx.checker: {e}".strip()) from e
    return model


def make_session(source, threads: int = 1):
    """An onnxruntime CPU session on ``source`` (serialized model bytes or a path)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run_session(source, feeds: dict, outputs: list | None = None) -> list:
    """Run ``source`` once on ``feeds`` (one thread: a check, not a benchmark)."""
    return make_session(source).run(outputs, feeds)


def validate(source, model: ModelProto, feeds: dict, dst: Path) -> None:
    """checker + an onnxruntime run; anything wrong is a PlanError and nothing is published."""
    try:
        onnx.checker.check_model(source if isinstance(source, str) else model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise PlanError(f"the graph for {dst} fails onnx.checker, nothing written: {e}") from e
    try:
        run_session(source, feeds)
    except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types)
        raise PlanError(f"onnxruntime cannot run the graph for {dst}, nothing written: {e}") from e
