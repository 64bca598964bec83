"""Every subcommand of the real ``cuantiza`` entry point, in a subprocess, over a table of bad
arguments and faults (FAULTS 34-38): exit status 2 (130 for Ctrl-C, 143 for SIGTERM), one
readable line on stderr, no traceback, nothing written and a previous output intact.

The table runs concurrently (each case is a process start, seconds for the imports). The read-
only folder is a real read-only bind mount and the full disk a real small tmpfs where the test
may mount them (root with CAP_SYS_ADMIN); elsewhere those cases skip and say why (the in-process
simulations in tests/io/test_atomic.py still run). The signals are real: SIGINT and SIGTERM are
sent to a GPTQ run once its staging folder shows a finished layer.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow  # a process start (seconds of imports) per case

transformers = pytest.importorskip("transformers")
from tests.cli.test_cli_quantize import tiny_model  # noqa: E402
from tests.helpers.llama import write_hf  # noqa: E402

BIN = Path(sys.executable).with_name("cuantiza")
CLI = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "cuantiza.cli.main"]
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind. " * 12


def cuantiza(*argv, cwd, timeout=300, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [*CLI, *map(str, argv)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def llama_folder(path: Path, layers: int = 2) -> Path:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=256,  # byte-level: any text tokenizes inside it
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    return write_hf(path, transformers.LlamaForCausalLM(cfg).state_dict(), cfg.to_dict())


class _Payload:
    def __reduce__(self):
        return (os.mkdir, ("pwned",))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """The working folder: a tiny ONNX model, a LLaMA folder, a pickle-only folder, texts."""
    ws = tmp_path_factory.mktemp("cli-faults")
    tiny_model(ws / "tiny.onnx")
    llama_folder(ws / "llama")
    (ws / "pickled").mkdir()
    shutil.copy(ws / "llama" / "config.json", ws / "pickled")
    (ws / "pickled" / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload()))
    (ws / "text.txt").write_text(TEXT)
    np.savez(ws / "bad_shape.npz", x=np.ones((4, 63), np.float32))
    (ws / "exists.onnx").write_bytes(b"previous output")
    (ws / "bad_report").mkdir()
    (ws / "bad_report" / "report.json").write_text("{}")
    (ws / "a_file").write_text("not a folder")
    return ws


Q, E, G = "quantize", "eval-ppl", "generate"
FOLDER = ("llama", "-o")
# id: (argv, a piece of the one line on stderr); every output path is named out-<id>
CASES = {
    "size-huge": (
        ["size", "--params", "1e30"],
        "--params must be a whole number from 1 up to 1e18",
    ),
    "explain-range": (["explain", "1", "--range", "5", "1"], "range must be two finite"),
    "report-missing": (["report", "nowhere"], "nowhere/report.json does not exist"),
    "report-bad": (["report", "bad_report"], "not a cuantiza-report"),
    "demo-under-file": (["demo", "--out", "a_file/out"], "a_file is a file, not a folder"),
    "onnx-missing": ([Q, "nope.onnx", "-o", "OUT"], "nope.onnx: no such file"),
    "onnx-remainder": (
        [Q, "tiny.onnx", "-o", "OUT", "--bits", "4", "--group-size", "48", "--weight-only"],
        "set --group-remainder pad (a shorter last group) or --group-remainder per_channel",
    ),
    "onnx-exclude": ([Q, "tiny.onnx", "-o", "OUT", "--exclude", "typo*"], "--exclude 'typo*'"),
    "onnx-exists": ([Q, "tiny.onnx", "-o", "exists.onnx"], "pass --overwrite to replace it"),
    "onnx-static": ([Q, "tiny.onnx", "-o", "OUT", "--static"], "--static needs --calibration"),
    "onnx-shape": (
        [Q, "tiny.onnx", "-o", "OUT", "--static", "--calibration", "bad_shape.npz"],
        "calibration batch 0: input 'x' has shape (4, 63); the graph expects (?, 64)",
    ),
    "folder-group-0": ([Q, *FOLDER, "OUT", "--group-size", "0"], "whole number >= 1, got 0"),
    "folder-samples": ([Q, *FOLDER, "OUT", "--samples", "-5"], "--samples: must be a whole"),
    "folder-samples-0": ([Q, *FOLDER, "OUT", "--samples", "0"], "--samples: must be a whole"),
    "folder-seq-len": ([Q, *FOLDER, "OUT", "--seq-len", "0"], "--seq-len: must be a whole"),
    "folder-awq-seq-1": (
        [Q, *FOLDER, "OUT", "--method", "awq", "--calibration", "text.txt", "--seq-len", "1"],
        "argument --seq-len: must be a whole number >= 2, got 1",
    ),
    "folder-remainder": (
        [Q, *FOLDER, "OUT", "--group-size", "48"],
        "64 columns are not a multiple of group size 48; set --group-remainder pad",
    ),
    "folder-exclude": (
        [Q, *FOLDER, "OUT", "--group-size", "32", "--exclude", "typo*"],
        "--exclude 'typo*' matches no layer",
    ),
    "folder-gptq-no-cal": ([Q, *FOLDER, "OUT", "--method", "gptq"], "needs --calibration FILE"),
    "folder-pickle": ([Q, "pickled", "-o", "OUT"], "holds only pickle checkpoints"),
    "folder-into-itself": ([Q, *FOLDER, "llama/sub"], "inside the input"),
    "eval-max-chars": ([E, "llama", "--text", "text.txt", "--max-chars", "-5"], "got -5"),
    "eval-seq-len": ([E, "llama", "--text", "text.txt", "--seq-len", "0"], "whole number >= 2"),
    "eval-pickle": ([E, "pickled", "--text", "text.txt"], "holds only pickle checkpoints"),
    "eval-no-text": ([E, "llama", "--text", "missing.txt"], "missing.txt: no such text file"),
    "eval-no-folder": ([E, "tiny.onnx", "--text", "text.txt"], "tiny.onnx: not a folder"),
    "generate-n": ([G, "llama", "--prompt", "x", "-n", "0"], "-n/--max-new-tokens: must be"),
    "generate-top-p": ([G, "llama", "--prompt", "x", "--top-p", "2"], "--top-p: must be"),
    "generate-temp": ([G, "llama", "--prompt", "x", "--temperature", "-1"], "must be a number"),
    "generate-pickle": ([G, "pickled", "--prompt", "x"], "holds only pickle checkpoints"),
    "generate-missing": ([G, "nowhere", "--prompt", "x"], "nowhere: not a folder"),
}


def listing(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones included) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def results(ws) -> tuple[dict, dict, dict]:
    """Every case run once, a few at a time: (results by case, files before, files after)."""

    def run(item):
        case, (argv, _) = item
        return case, cuantiza(*[a.replace("OUT", f"out-{case}") for a in argv], cwd=ws)

    before = listing(ws)
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        done = dict(pool.map(run, CASES.items()))
    return done, before, listing(ws)


def assert_one_clean_line(r: subprocess.CompletedProcess, piece: str, code: int = 2) -> str:
    err = r.stderr
    assert "Traceback" not in err, err
    assert r.returncode == code, (r.returncode, err)
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("cuantiza") and piece in err, err
    return err


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_written(results, case):
    done, before, after = results
    assert_one_clean_line(done[case], CASES[case][1])
    assert done[case].stdout == ""
    assert after == before  # nothing written, no debris, inputs and previous outputs intact


def test_help_of_every_command_is_clean(ws):
    for command in ["", "size", "explain", "demo", "report", Q, E, G]:
        r = cuantiza(*([command] if command else []), "--help", cwd=ws)
        assert r.returncode == 0 and r.stderr == "" and "usage: cuantiza" in r.stdout
    assert "or a Hugging Face model folder" in " ".join(cuantiza("--help", cwd=ws).stdout.split())


# ------------------------------------------------------------------- real mounts


def _mount(*args) -> str | None:
    """None if the mount worked, else why not."""
    try:
        r = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if r.returncode == 0 else (r.stderr.strip() or f"mount exited {r.returncode}")


@pytest.fixture
def read_only(tmp_path):
    """A folder holding a previous output, bind-mounted read-only (skips if not permitted)."""
    src, ro = tmp_path / "rw", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    (src / "old.onnx").write_bytes(b"previous output")
    why = _mount("--bind", str(src), str(ro)) or _mount("-o", "remount,ro,bind", str(ro))
    if why:
        subprocess.run(["umount", str(ro)], capture_output=True)
        pytest.skip(f"cannot make a read-only bind mount here ({why})")
    yield ro
    subprocess.run(["umount", str(ro)], check=True)


def test_read_only_output_folder(ws, read_only):
    """FAULTS 34: refused before any work, the previous output intact."""
    r = cuantiza(Q, "tiny.onnx", "-o", read_only / "old.onnx", "--overwrite", cwd=ws)
    assert_one_clean_line(r, "is on a read-only file system; choose an output on a writable")
    r = cuantiza(Q, "llama", "-o", read_only / "q", "--group-size", "32", cwd=ws)
    assert_one_clean_line(r, f"cannot write {read_only / 'q'}: {read_only} is on a read-only")
    assert sorted(p.name for p in read_only.iterdir()) == ["old.onnx"]
    assert (read_only / "old.onnx").read_bytes() == b"previous output"


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs holding a previous output, then filled up (skips if not permitted)."""
    d = tmp_path / "tmpfs"
    d.mkdir()
    why = _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d))
    if why:
        pytest.skip(f"cannot mount a tmpfs here ({why})")
    (d / "old.onnx").write_bytes(b"previous output")
    try:
        with open(d / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass
    yield d
    subprocess.run(["umount", str(d)], check=True)


def test_disk_full(ws, full_disk):
    """FAULTS 29, 34: ENOSPC is one line naming the output; the previous file intact, no temporary
    file left; the checkpoint writer, with nothing finished, leaves no staging folder either."""
    before = sorted(p.name for p in full_disk.iterdir())
    r = cuantiza(Q, "tiny.onnx", "-o", full_disk / "old.onnx", "--overwrite", cwd=ws)
    assert_one_clean_line(r, f"cannot write {full_disk / 'old.onnx'}: No space left on device")
    assert "free some space" in r.stderr and "the previous one is intact" in r.stderr
    assert (full_disk / "old.onnx").read_bytes() == b"previous output"
    r = cuantiza(Q, "llama", "-o", full_disk / "q", "--group-size", "32", cwd=ws)
    assert_one_clean_line(r, "No space left on device")
    assert sorted(p.name for p in full_disk.iterdir()) == before


# ------------------------------------------------------------------------ signals


def _finished(progress: Path) -> list:
    """The units the staging folder's progress.json records as finished (replaced atomically)."""
    try:
        return [u["unit"] for u in json.loads(progress.read_text())["units"]]
    except (OSError, ValueError, KeyError):
        return []


def _run_until(argv, ws: Path, unit: str, sig) -> subprocess.CompletedProcess:
    """Start ``cuantiza argv``, send ``sig`` as soon as the writer has recorded ``unit``."""
    p = subprocess.Popen([*CLI, *argv], cwd=ws, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    progress = ws / ".sig.partial" / "progress.json"
    deadline = time.monotonic() + 600
    while unit not in _finished(progress) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if p.poll() is None:
        p.send_signal(sig)
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out.decode(), err.decode())


def test_ctrl_c_and_sigterm_say_that_rerunning_resumes(ws):
    """FAULTS 34: a GPTQ run of a 6-layer folder, stopped by SIGINT after its first layer and by
    SIGTERM after its second, each time one line (130, 143) saying the staging folder is kept
    and that rerunning resumes; the third run finishes what is left."""
    llama_folder(ws / "six", layers=6)
    argv = [Q, "six", "-o", "sig", "--group-size", "32", "--method", "gptq"]
    argv += ["--calibration", "text.txt", "--seq-len", "16", "--samples", "8", "-q"]
    r = _run_until(argv, ws, "layer-00000", signal.SIGINT)
    assert_one_clean_line(r, "cuantiza: interrupted (Ctrl-C); the finished part is kept in", 130)
    assert "run the same command again to resume" in r.stderr and not (ws / "sig").exists()
    r = _run_until(argv, ws, "layer-00001", signal.SIGTERM)
    assert_one_clean_line(r, "cuantiza: terminated (SIGTERM); the finished part is kept in", 143)
    r = cuantiza(*argv, cwd=ws)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    resumed = re.search(r"\((\d+) resumed\)", r.stdout)
    assert resumed and int(resumed.group(1)) >= 2 and not (ws / ".sig.partial").exists()
    cfg = json.loads((ws / "sig" / "config.json").read_text())
    assert cfg["quantization_config"]["method"] == "gptq"
