"""ShardedWriter: sharded safetensors output that is streamed, resumable and published atomically.

The producer splits its work into *units* (one input shard, one decoder block...) and writes
each unit's tensors inside ``with w.shard(unit) as s``::

    with ShardedWriter(dst, src=src, fingerprint={...}) as w:
        for unit in units:
            if w.done(unit):                       # finished by an earlier, interrupted run
                continue
            with w.shard(unit) as s:
                s.add("layer.weight", t)           # bytes go to disk now, not kept in memory
                s.meta["modules"] = {...}          # JSON the producer reads back on resume
        w.finish(doc, order=units)                 # index + cuantiza.json, then one rename

Everything happens in a staging folder next to ``dst`` named ``.{dst.name}.partial``. It holds
the finished units' shards (``unit-{unit}.safetensors``), their ``extras`` side files (small
tensors for the producer, never published) and ``progress.json``: the fingerprint and, per
finished unit, its file, size, SHA-256, tensor names and meta. ``progress.json`` is replaced
atomically after the unit's files are fsynced, so a unit is either listed and complete or not
there at all. A later writer with the same fingerprint keeps the finished units (after
checking their sizes and SHA-256); another fingerprint discards the folder.

``finish`` links the shards into a fresh folder under their final names
(``model-00001-of-0000N.safetensors``, or ``model.safetensors`` when there is one), writes
``model.safetensors.index.json`` and ``cuantiza.json`` (the producer's doc plus ``files``:
name -> bytes and SHA-256 of each shard) and publishes it with ``os.replace`` (FAULTS 29).
Shard bytes depend only on what was added (tensors sorted by alignment then name, no
timestamps), so an interrupted and resumed run gives the same bytes as an uninterrupted one.
On a cuantiza error (bad data, a plan problem) the staging folder is removed; on anything
else (Ctrl-C, SIGTERM, disk full or another ``WriteError``, a crash) it stays for the next run
to resume (``staging_folder(dst)`` names it), unless no unit had finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from ..errors import CuantizaError, OutputExistsError, PlanError, WriteError
from ..io.atomic import fresh_sibling, fsync_dir, publish_file, publish_staged, write_synced
from ..io.safetensors_file import SafetensorsFile
from ..io.save import check_output_folder
from ..io.saveformat import MANIFEST
from .shards import INDEX
from .unitshard import COPY_CHUNK, UnitShard, canonical

PROGRESS = "progress.json"
_UNIT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,150}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(COPY_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def staging_folder(dst) -> Path:
    """Where a ``ShardedWriter`` for ``dst`` keeps finished units until it publishes."""
    d = Path(os.path.abspath(dst))
    return d.with_name(f".{d.name}.partial")


def check_paths(dst: Path, src) -> None:
    """OutputExistsError when the output is the input, inside it, or contains it (FAULTS 28)."""
    if src is None:
        return
    d, s = Path(os.path.realpath(dst)), Path(os.path.realpath(src))
    if d == s or s in d.parents:
        raise OutputExistsError(
            f"the output {dst} is {'the input' if d == s else 'inside the input'} "
            f"{src}; choose a folder outside the model folder"
        )
    if d in s.parents:
        raise OutputExistsError(
            f"the input {src} is inside the output {dst}; publishing would "
            "replace the input: choose another output folder"
        )


class ShardedWriter:
    """Streaming, resumable, atomic writer of sharded safetensors (see the module docstring)."""

    def __init__(self, dst, *, src=None, fingerprint: dict, overwrite: bool = False):
        self.dst = Path(os.path.abspath(dst))
        check_paths(self.dst, src)
        check_output_folder(self.dst, overwrite)
        self.staging = staging_folder(self.dst)
        self.fingerprint = json.loads(canonical(fingerprint))
        self._units: dict = {}  # unit -> record, in the order they finished
        self.resumed: list = []  # units kept from an earlier run
        self._busy = False
        self._overwrite = overwrite

    def __enter__(self) -> ShardedWriter:
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            old = self._read_progress()
            if old is None or canonical(old.get("fingerprint")) != canonical(self.fingerprint):
                shutil.rmtree(self.staging, ignore_errors=True)
                self.staging.mkdir()
            else:
                self._keep_valid(old.get("units", []))
            self._clean_strays()
            self._write_progress()
        except BaseException as e:  # disk full already: the same clean-up as inside the block
            self.__exit__(type(e), e, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            return False
        bad_input = issubclass(exc_type, CuantizaError) and not issubclass(exc_type, WriteError)
        if bad_input or not self._units:  # nothing finished: nothing to resume, no debris
            self.discard()
        return False  # else (Ctrl-C, disk full, a crash) the finished units stay

    def discard(self) -> None:
        """Remove the staging folder (nothing left to resume)."""
        shutil.rmtree(self.staging, ignore_errors=True)

    # ----------------------------------------------------------------- resume bookkeeping

    def _read_progress(self) -> dict | None:
        try:
            doc = json.loads((self.staging / PROGRESS).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def _keep_valid(self, records: list) -> None:
        """Keep finished units whose files check out; stop at the first that does not (so the
        order of the units, and with it the output, stays that of an uninterrupted run)."""
        for rec in records:
            try:
                ok = _record_ok(self.staging, rec)
            except (OSError, KeyError, TypeError):
                ok = False
            if not ok:
                break
            self._units[rec["unit"]] = rec
            self.resumed.append(rec["unit"])

    def _clean_strays(self) -> None:
        """Delete files of unfinished units (a run stopped between writing and recording)."""
        keep = {PROGRESS} | {f for r in self._units.values() for f in (r["file"], r["extras"]) if f}
        for p in self.staging.iterdir():
            if p.name not in keep:
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    def _write_progress(self) -> None:
        doc = {"fingerprint": self.fingerprint, "units": list(self._units.values())}
        publish_file(self.staging / PROGRESS, (canonical(doc) + "\n").encode("ascii"))

    # ------------------------------------------------------------------------ the units

    def done(self, unit: str) -> bool:
        return unit in self._units

    def unit_meta(self, unit: str) -> dict:
        """The JSON the producer attached (``s.meta``) when it finished ``unit``."""
        return json.loads(canonical(self._units[unit]["meta"]))

    def unit_tensors(self, unit: str) -> dict:
        """The ``extras`` tensors saved with a finished unit (empty if none)."""
        name = self._units[unit]["extras"]
        if not name:
            return {}
        f = SafetensorsFile(self.staging / name)
        return {n: f.read(n) for n in f.names()}

    @contextlib.contextmanager
    def shard(self, unit: str):
        """Write one unit: yields a ``UnitShard``; committed on a clean exit, erased otherwise."""
        if not isinstance(unit, str) or not _UNIT.fullmatch(unit):
            raise PlanError(
                f"unit name {unit!r}: use letters, digits, '.', '_' or '-' (a file name)"
            )
        if unit in self._units or self._busy:
            raise PlanError(f"unit {unit!r} is already finished or another unit is open")
        self._busy = True
        s = UnitShard(self.staging, unit)
        try:
            yield s
            rec = s.close()
        except BaseException:
            s.abort()
            raise
        finally:
            self._busy = False
        self._units[unit] = rec
        self._write_progress()

    # --------------------------------------------------------------------------- publish

    def finish(self, doc: dict, *, order: list | None = None, files: dict | None = None) -> Path:
        """Publish: shards in ``order`` (default: the order units finished), the index,
        ``files`` (name -> bytes or Path: config.json, tokenizer...) and ``cuantiza.json`` =
        ``doc`` + ``files`` checksums of the shards. Returns the output path."""
        units = list(self._units) if order is None else list(order)
        missing = [u for u in units if u not in self._units]
        if missing:
            raise PlanError(f"finish: unit(s) {missing[:5]} were never finished")
        check_output_folder(self.dst, self._overwrite)  # it may have appeared meanwhile
        recs = [self._units[u] for u in units if self._units[u]["file"]]
        names = _final_names(len(recs))
        weight_map = _weight_map(recs, names)
        tmp = fresh_sibling(self.dst)
        try:
            for rec, name in zip(recs, names, strict=False):
                _link_or_copy(self.staging / rec["file"], tmp / name)
            for name, data in sorted((files or {}).items()):
                if name in names or name in (MANIFEST, INDEX) or name != os.path.basename(name):
                    raise PlanError(f"finish: extra file name {name!r} is not allowed")
                write_synced(
                    tmp / name, data if isinstance(data, bytes) else Path(data).read_bytes()
                )
            if len(names) > 1:
                total = sum(r["tensor_bytes"] for r in recs)
                index = {"metadata": {"total_size": total}, "weight_map": weight_map}
                write_synced(tmp / INDEX, _pretty(index))
            checks = {
                n: {"bytes": r["bytes"], "sha256": r["sha256"]}
                for r, n in zip(recs, names, strict=False)
            }
            write_synced(tmp / MANIFEST, _pretty({**doc, "files": checks}))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        publish_staged(tmp, self.dst)
        self.discard()
        fsync_dir(self.dst.parent)
        return self.dst


def _pretty(doc: dict) -> bytes:
    return (json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def _final_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def _weight_map(recs: list, names: list) -> dict:
    out = {}
    for rec, name in zip(recs, names, strict=False):
        for t in rec["tensors"]:
            if t in out:
                raise PlanError(
                    f"finish: tensor {t!r} was written by two units ({out[t]} and {name})"
                )
            out[t] = name
    return dict(sorted(out.items()))


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (no extra disk, the staging copy stays for a resume), else copy and fsync."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        with open(dst, "rb+") as f:
            os.fsync(f.fileno())


def _record_ok(staging: Path, rec: dict) -> bool:
    for key in ("file", "extras"):
        if rec[key] and not (staging / rec[key]).is_file():
            return False
    if rec["file"]:
        p = staging / rec["file"]
        return p.stat().st_size == rec["bytes"] and _sha256(p) == rec["sha256"]
    return True
