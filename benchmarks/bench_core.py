"""The numeric core on a LLaMA-7B FFN weight (4096 x 11008 float32), side by side in one run:

* throughput (GB/s of float32 input, median of several runs, torch on 2 threads) of cuantiza's
  round-to-nearest quantization: ``quantize_tensor`` alone and ``QTensor.from_float`` (packing
  included), with the native kernels where they are built (``cuantiza._native``) and again on
  the pure torch path (``CUANTIZA_NATIVE=0``), against the ``gguf`` package's NumPy reference
  quantizers;
* SQNR = 20 log10(||x|| / ||x - x_hat||) against gguf's Q8_0 / Q5_0 / Q4_0 / Q4_1 at equal (or
  the nearest) bits per weight, with MinMax and MSE ranges, on normal and heavy-tailed weights.

Targets (issue 2): >= 5 GB/s for 8- and 4-bit round-to-nearest on 2 cores; SQNR at least gguf's
at equal bits per weight, and better with the MSE search.

Run: ``python benchmarks/bench_core.py`` (a few minutes). Writes its section of RESULTS.md.
``--speed-only --json`` prints the throughput table only (used for the allocator comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import cuantiza as cz
from cuantiza.backends.native import rtn as _native
from cuantiza.report.stats import tensor_sqnr_db

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, write_section  # noqa: E402

ROWS, COLS = 4096, 11008  # LLaMA-7B FFN up/gate projection
THREADS = 2  # the issue's "2 cores"
TARGET_GBS = 5.0
# glibc returns freed blocks >= 32 MiB to the OS, so every 45-180 MB result is fresh memory
# whose first touch page-faults (expensive in this VM); these settings keep freed memory.
WARM_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
# a timed run counts only if other processes used at most this many clock ticks (10 ms each,
# both cores together) meanwhile; busier runs are repeated (this machine is shared)
OTHERS_TICKS = 2
TRIES = 30  # repeats of one disturbed run before keeping it

SPEED = [
    ("int8 sym per-channel (fp32 scales)", cz.QScheme(8, True, cz.PerChannel(0))),
    ("int4 sym group-128 (fp16 scales)", cz.QScheme(4, True, cz.PerGroup(128), "float16")),
    ("int4 sym group-32 (fp16 scales)", cz.QScheme(4, True, cz.PerGroup(32), "float16")),
]
PAIRS = [  # gguf format, the cuantiza scheme with the same bits per weight (Q4_1: the nearest)
    ("Q8_0", cz.QScheme(8, True, cz.PerGroup(32), "float16")),
    ("Q5_0", cz.QScheme(5, True, cz.PerGroup(32), "float16")),
    ("Q4_0", cz.QScheme(4, True, cz.PerGroup(32), "float16")),
    ("Q4_1", cz.QScheme(4, False, cz.PerGroup(32), "float16")),
    # full signed range with the scale carrying the extreme's sign (gguf's own convention)
    ("Q8_0", cz.QScheme(8, True, cz.PerGroup(32), "float16", restricted=False)),
    ("Q5_0", cz.QScheme(5, True, cz.PerGroup(32), "float16", restricted=False)),
    ("Q4_0", cz.QScheme(4, True, cz.PerGroup(32), "float16", restricted=False)),
]


def matrices(seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded weights, std-0.02 scale: normal, and Student-t with 3 degrees of freedom."""
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(ROWS, COLS, generator=g) * 0.02
    z = torch.randn(ROWS, COLS, generator=g)
    chi2 = sum(torch.randn(ROWS, COLS, generator=g).square() for _ in range(3))
    return {"normal": normal, "student-t(3)": z / (chi2 / 3).sqrt() * 0.02}


def _ticks() -> tuple[int, int]:
    """(busy clock ticks of the whole machine, ticks of this process), from /proc; zeros
    where there is no /proc (no disturbance check then)."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()  # fields 3.. of proc(5)
        return sum(v) - v[3] - v[4], int(own[11]) + int(
            own[12]
        )  # minus idle, iowait; utime + stime
    except (OSError, IndexError, ValueError):
        return 0, 0


def timed(fn, tries: int = TRIES) -> tuple[float, int]:
    """Seconds of one call of ``fn`` during which other processes used (almost) no CPU;
    disturbed calls are repeated, up to ``tries``. Returns (seconds, calls repeated), with
    ``tries`` repeated meaning that the last, still disturbed, call was kept."""
    for k in range(tries):
        b0, o0 = _ticks()
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        b1, o1 = _ticks()
        if (b1 - b0) - (o1 - o0) <= OTHERS_TICKS:
            return dt, k
    return dt, tries


def round_robin(cases: list[tuple], rounds: int) -> tuple[list[list[float]], dict]:
    """Seconds per run of each (name, fn, runs) case, timed in turns (one warm-up each), so
    slow drifts hit every case alike; returns the sorted times and counts of runs repeated
    and of runs kept although disturbed."""
    for _, fn, _ in cases:
        fn()
    times, noise = [[] for _ in cases], {"repeated": 0, "disturbed": 0}
    for r in range(rounds):
        for i, (_, fn, runs) in enumerate(cases):
            if r < runs:
                dt, k = timed(fn)
                times[i].append(dt)
                noise["repeated"] += k
                noise["disturbed"] += k >= TRIES
    return [sorted(t) for t in times], noise


def torch_path(fn):
    """``fn`` run with the native kernels disabled (CUANTIZA_NATIVE=0), the setting restored."""

    def run():
        old = os.environ.get("CUANTIZA_NATIVE")
        os.environ["CUANTIZA_NATIVE"] = "0"
        try:
            return fn()
        finally:
            if old is None:
                del os.environ["CUANTIZA_NATIVE"]
            else:
                os.environ["CUANTIZA_NATIVE"] = old

    return run


def speed_rows(x: torch.Tensor, repeats: int) -> list[dict]:
    """Median and best seconds per case; GB/s of float32 input at the median. The "cuantiza"
    rows run the default path (native kernels when built); "torch path" rows, only shown when
    the kernels are built, the same calls without them."""
    import gguf
    from gguf.quants import quantize as gq

    cases = []
    for label, scheme in SPEED:
        cases.append(
            (
                f"cuantiza quantize_tensor, {label}",
                lambda s=scheme: cz.quantize_tensor(x, s),
                repeats,
            )
        )
        cases.append(
            (
                f"cuantiza QTensor.from_float, {label}",
                lambda s=scheme: cz.QTensor.from_float(x, s),
                repeats,
            )
        )
    for label, scheme in SPEED if _native.available() else []:
        cases.append(
            (
                f"torch path (CUANTIZA_NATIVE=0): quantize_tensor, {label}",
                torch_path(lambda s=scheme: cz.quantize_tensor(x, s)),
                repeats,
            )
        )
        cases.append(
            (
                f"torch path (CUANTIZA_NATIVE=0): QTensor.from_float, {label}",
                torch_path(lambda s=scheme: cz.QTensor.from_float(x, s)),
                repeats,
            )
        )
    xn = x.numpy()
    for name in ("Q8_0", "Q4_0"):
        qt = getattr(gguf.GGMLQuantizationType, name)
        cases.append(
            (f"gguf quantize {name} (NumPy)", lambda t=qt: gq(xn, t), max(3, repeats // 3))
        )
    cases.append(("floor: x.amax() (read 180 MB)", lambda: x.amax(), repeats))
    cases.append(
        (
            "floor: new 45 MB int8 tensor, filled",
            lambda: torch.empty(x.numel(), dtype=torch.int8).fill_(1),
            repeats,
        )
    )
    rows = []
    times, noise = round_robin(cases, repeats)
    for (name, _, _), t in zip(cases, times, strict=False):
        med = t[len(t) // 2]
        rows.append(
            {
                "case": name,
                "median_ms": med * 1e3,
                "best_ms": t[0] * 1e3,
                "gbs": x.numel() * 4 / med / 1e9,
                **noise,
            }
        )
    return rows


def warm_malloc_speed(repeats: int) -> list[dict] | None:
    """The throughput table again, in a child process with freed memory kept by malloc."""
    env = {**os.environ, **WARM_MALLOC}
    cmd = [sys.executable, __file__, "--speed-only", "--json", "--repeats", str(repeats)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    return json.loads(done.stdout) if done.returncode == 0 else None


def gguf_sqnr(x: torch.Tensor, name: str) -> tuple[float, float]:
    import gguf
    from gguf.quants import dequantize, quantize

    qt = getattr(gguf.GGMLQuantizationType, name)
    packed = quantize(x.numpy(), qt)
    x_hat = torch.from_numpy(dequantize(packed, qt).reshape(x.shape))
    return tensor_sqnr_db(x, x_hat), packed.nbytes * 8 / x.numel()


def sqnr_rows(mats: dict[str, torch.Tensor]) -> list[dict]:
    rows = []
    for mname, x in mats.items():
        for gname, scheme in PAIRS:
            g_db, g_bpw = gguf_sqnr(x, gname)
            row = {
                "matrix": mname,
                "gguf": gname,
                "gguf_bpw": g_bpw,
                "gguf_db": g_db,
                "scheme": scheme.describe(),
            }
            for rname, spec in (("minmax", cz.MinMax()), ("mse", cz.MSE())):
                qt = cz.QTensor.from_float(x, scheme, range=spec)
                row[f"{rname}_db"] = tensor_sqnr_db(x, qt.dequantize())
                row["bpw"] = qt.bits_per_weight
            rows.append(row)
    return rows


def speed_table(rows: list[dict], warm: list[dict] | None) -> str:
    head = "| case | median ms | best ms | GB/s (median) |" + (
        " GB/s, malloc keeps freed memory |" if warm else ""
    )
    lines = [head, "|---|---:|---:|---:|" + ("---:|" if warm else "")]
    for i, r in enumerate(rows):
        extra = f" {warm[i]['gbs']:.2f} |" if warm else ""
        lines.append(
            f"| {r['case']} | {r['median_ms']:.1f} | {r['best_ms']:.1f} | {r['gbs']:.2f} |{extra}"
        )
    return "\n".join(lines)


def sqnr_table(rows: list[dict]) -> str:
    lines = [
        "| weights | gguf | bits/w | SQNR dB | cuantiza scheme | bits/w | MinMax dB | MSE dB |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['matrix']} | {r['gguf']} | {r['gguf_bpw']:.2f} | {r['gguf_db']:.2f} | "
            f"{r['scheme']} | "
            f"{r['bpw']:.2f} | {r['minmax_db']:.2f} | {r['mse_db']:.2f} |"
        )
    return "\n".join(lines)


def verdicts(speed: list[dict], warm: list[dict] | None, sq: list[dict]) -> list[str]:
    out = []
    for i, r in enumerate(speed):
        if not r["case"].startswith("cuantiza"):
            continue
        ok = "met" if r["gbs"] >= TARGET_GBS else f"missed ({r['gbs'] / TARGET_GBS:.0%} of it)"
        w = f"; {warm[i]['gbs']:.2f} GB/s when malloc keeps freed memory" if warm else ""
        out.append(
            f"- throughput >= {TARGET_GBS:g} GB/s, {r['case']}: {r['gbs']:.2f} GB/s, **{ok}**{w}"
        )
    for r in sq:
        d_mm, d_mse = r["minmax_db"] - r["gguf_db"], r["mse_db"] - r["gguf_db"]
        bpw = f"{r['gguf_bpw']:.2f} vs {r['bpw']:.2f} bits/w"
        head = f"- SQNR vs {r['gguf']} ({r['matrix']}, {bpw}, {r['scheme']}): "
        if "-sym-" in r["scheme"]:  # restricted range: 2^n - 1 levels against gguf's 2^n
            out.append(
                head + f"MinMax {d_mm:+.2f} dB, MSE {d_mse:+.2f} dB (restricted range, one level "
                "fewer than gguf's: shown for reference; the like-for-like row is the full-range "
                "one)"
            )
            continue
        ok_mm = "met" if d_mm >= 0 else "missed"
        ok_mse = "met" if d_mse > 0 else "missed"
        out.append(head + f"MinMax {d_mm:+.2f} dB **{ok_mm}**, MSE {d_mse:+.2f} dB **{ok_mse}**")
    return out


def _noise(row: dict) -> str:
    return f"{row['repeated']} repeats, {row['disturbed']} runs kept though still disturbed"


def _native_line() -> str:
    if not _native.available():
        why = (
            "disabled by CUANTIZA_NATIVE=0"
            if _native.built()
            else "not built (no C compiler at install)"
        )
        return f"Native kernels (`cuantiza._native`): {why}; every row is the pure torch path."
    return (
        "Native kernels (`cuantiza._native`) built: with a MinMax range `rtn_fused.c` takes each "
        "block row "
        "once (min/max, the scale and zero point, the integers or their codes packed at 1/2/4 "
        "bits); other "
        "ranges use `rtn.c` (a min/max pass, a divide-round-clamp pass, packing); huge pages are "
        "advised "
        "for large results. The `cuantiza` rows use them, the `torch path` rows repeat the same "
        "calls "
        "without them."
    )


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=9, help="timed runs per case (median reported)")
    ap.add_argument("--speed-only", action="store_true", help="throughput only")
    ap.add_argument("--json", action="store_true", help="print JSON instead of writing RESULTS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    load_before = _load()
    mats = matrices()
    speed = speed_rows(mats["normal"], args.repeats)
    if args.speed_only:
        print(json.dumps(speed) if args.json else speed_table(speed, None))
        return 0
    warm = warm_malloc_speed(args.repeats)
    sq = sqnr_rows(mats)
    body = "\n\n".join(
        [
            "## Numeric core: 4096 x 11008 weight, throughput and SQNR vs gguf (`bench_core.py`)",
            f"Machine: {machine()}. "
            f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')} "
            "(irrelevant to torch). "
            f"Load average before / after: {load_before} / {_load()} (other processes distort "
            "2-thread timings).",
            "### Throughput (normal weights; GB/s = 180.4 MB of float32 input / median time)",
            _native_line(),
            speed_table(speed, warm),
            f"Runs during which other processes used the CPU were repeated ({_noise(speed[0])}"
            + (f"; with the malloc setting {_noise(warm[0])}" if warm else "")
            + ").",
            "The two floor rows show this machine's memory costs: a new tensor's first touch "
            "page-faults, so results are cheaper to produce when malloc keeps freed memory "
            f"({' '.join(f'{k}={v}' for k, v in WARM_MALLOC.items())}; jemalloc/tcmalloc do the "
            "same).",
            "### SQNR at equal bits per weight (group of 32, fp16 scales; Q4_1 stores an fp16 min, "
            "cuantiza a uint8 zero point)",
            sqnr_table(sq),
            "### Verdicts",
            "\n".join(verdicts(speed, warm, sq)),
        ]
    )
    if args.json:
        print(json.dumps({"speed": speed, "warm": warm, "sqnr": sq}, indent=1))
    else:
        write_section("bench_core", body)
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
