"""The command line: `cuantiza size`, `explain`, `demo`, called in-process through main()."""

import json

import numpy as np
import pytest

from cuantiza.cli import sizes
from cuantiza.cli.explain import float32_fields, quantize_value
from cuantiza.cli.main import main
from cuantiza.errors import ConfigError
from tests.thresholds import THRESHOLDS


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(name + " "))


# ---------------------------------------------------------------------------------- size
def test_size_fp32_70e9_is_280_gb_not_28(capsys):
    code, out, _ = run(capsys, "size", "--params", "70e9")
    assert code == 0
    assert "280 GB" in row(out, "fp32")  # the lecture notes say 28 GB: wrong
    assert "140 GB" in row(out, "fp16")
    assert "260.77 GiB" in row(out, "fp32")  # 280e9 / 2^30
    assert "8.125" in row(out, "int8 sym")  # 8 + 16 / 128: fp16 scale per group
    assert "8.188" in row(out, "int8 asym")  # ... + 8 / 128: uint8 zero point
    assert "group of 128" in out


def test_size_json_parses_and_counts_every_byte(capsys):
    code, out, _ = run(
        capsys, "size", "--params", "70B", "--bits", "32,4", "--group-size", "32", "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert data["params"] == 70_000_000_000 and data["group_size"] == 32
    by_name = {f["name"]: f for f in data["formats"]}
    assert by_name["fp32"]["nbytes"] == 280_000_000_000 and by_name["fp32"]["GB"] == 280.0
    assert by_name["int4 sym"]["bits_per_weight"] == pytest.approx(4.5)  # gguf Q4_0's 4.5
    assert by_name["int4 asym"]["bits_per_weight"] == pytest.approx(4.75)


def test_size_scheme_and_quiet(capsys):
    code, out, _ = run(
        capsys, "--quiet", "size", "--params", "1e9", "--bits", "4", "--scheme", "asym"
    )
    assert code == 0
    assert out.splitlines()[0].startswith("format")  # no notes, the table only
    assert [line.split()[0:2] for line in out.splitlines()[1:]] == [["int4", "asym"]]


def test_format_size_arithmetic():
    assert sizes.format_size(70e9, 32).nbytes == 280 * 10**9
    assert sizes.format_size(70e9, 16).gigabytes == 140.0
    r = sizes.format_size(130, 5, group_size=128, symmetric=False)
    assert r.nbytes == (130 * 5 + 7) // 8 + 2 * 2 + 2  # 2 groups: 2 fp16 scales, 2 zero points
    assert sizes.format_size(1024, 1).name == "int1 binary"
    assert sizes.format_size(1024, 8, scale_dtype="float32").bits_per_weight == 8 + 32 / 128


@pytest.mark.parametrize(
    "text, n",
    [("70e9", 70 * 10**9), ("7000000000", 7 * 10**9), ("1.5M", 1_500_000), ("70b", 70 * 10**9)],
)
def test_parse_count(text, n):
    assert sizes.parse_count(text) == n


@pytest.mark.parametrize("text", ["abc", "0", "-5", "1.5", "inf"])
def test_parse_count_rejects(text):
    with pytest.raises(ConfigError):
        sizes.parse_count(text)


# ------------------------------------------------------------------------------- explain
def test_explain_015625_symmetric(capsys):
    code, out, _ = run(capsys, "explain", "0.15625")
    assert code == 0
    assert "bits 0 01111100 01000000000000000000000 (0x3E200000)" in out
    assert "unbiased E - 127 = -3" in out
    assert "2^-2 = 0.25" in out  # mantissa: one bit, b_21
    assert "= 0.125 x 1.25 = 0.15625" in out  # the formula evaluated
    assert "= 127\n" in out and "01111111  (two's complement, 8 bits)" in out
    assert "error     |v - x_hat| = 0 " in out


def test_explain_minus_2_5_symmetric_and_asymmetric(capsys):
    code, out, _ = run(capsys, "explain", "-2.5", "--bits", "8")
    assert code == 0
    assert "bits 1 10000000 01000000000000000000000 (0xC0200000)" in out
    assert "= -127\n" in out and "10000001  (two's complement, 8 bits: 2^8 - 127 = 129)" in out
    code, out, _ = run(capsys, "explain", "-2.5", "--bits", "8", "--asymmetric")
    assert code == 0
    assert "z = clamp(round(-min(lo, 0) / s), 0, 255) = 255" in out
    assert "00000000  (unsigned, 8 bits)" in out


def _numpy_quantize(v, bits, sym, lo, hi):
    """The formulas in NumPy: float64 scale rounded once to float32, float32 division."""
    v = np.float32(v)
    if sym:
        qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1) - 1)
        s = np.float32(max(abs(lo), abs(hi)) / qmax)
        z = 0
    else:
        qmin, qmax = 0, 2**bits - 1
        beta, alpha = min(lo, 0.0), max(hi, 0.0)
        s = np.float32((alpha - beta) / qmax)
        z = int(min(max(np.round(-beta / np.float64(s)), 0), qmax))
    q = int(np.clip(np.round(v / s) + z, qmin, qmax))
    return q, float(np.float32(s) * np.float32(q - z))


@pytest.mark.parametrize(
    "v, bits, sym",
    [
        (-2.5, 8, True),
        (-2.5, 8, False),
        (0.15625, 4, True),
        (0.15625, 3, False),
        (3.9, 5, True),
        (-0.01, 2, False),
    ],
)
def test_explain_with_range_matches_numpy(capsys, v, bits, sym):
    q, x_hat = _numpy_quantize(v, bits, sym, -4.0, 4.0)
    st = quantize_value(v, bits, sym, -4.0, 4.0)
    assert (st.q, st.x_hat) == (q, x_hat)
    argv = ["--quiet", "explain", str(v), "--bits", str(bits), "--range", "-4", "4"] + (
        [] if sym else ["--asymmetric"]
    )
    code, out, _ = run(capsys, *argv)
    assert code == 0
    width = bits
    stored = format(q & ((1 << width) - 1), f"0{width}b")
    assert out.startswith(f"q = {q} ({stored}), x_hat = {x_hat!r}")


def test_explain_saturates_outside_the_range(capsys):
    code, out, _ = run(capsys, "explain", "10", "--bits", "4", "--range", "-1", "1")
    assert code == 0
    assert "(clamped from 70)" in out and "0111  (two's complement" in out


@pytest.mark.parametrize(
    "text, kind",
    [
        ("0", "zero"),
        ("-0.0", "zero"),
        ("1e-40", "subnormal"),
        ("inf", "inf"),
        ("nan", "nan"),
        ("1e39", "inf"),
    ],
)
def test_float32_fields_special_values(text, kind):
    f = float32_fields(float(text))
    assert f.category == kind


def test_explain_subnormal_and_zero(capsys):
    code, out, _ = run(capsys, "explain", "1e-40")
    assert code == 0 and "(subnormal)" in out and "2^-126" in out
    code, out, _ = run(capsys, "explain", "-0.0")
    assert code == 0 and "v = -0" in out


def test_explain_infinity_needs_a_range_nan_never_quantizes(capsys):
    code, out, err = run(capsys, "explain", "-inf", "--range", "-1", "1", "--bits", "4")
    assert code == 0 and "= -7  (clamped from -inf)" in out
    code, out, err = run(capsys, "explain", "inf")
    assert (
        code == 2
        and "E = 11111111" in out
        and err.startswith("cuantiza: error:")
        and "--range" in err
    )
    code, out, err = run(capsys, "explain", "nan")
    assert code == 2 and "not a number" in out and len(err.strip().splitlines()) == 1


def test_explain_negative_numbers_with_exponents_parse(capsys):
    code, out, _ = run(capsys, "-q", "explain", "-1e-3", "--range", "-1e-2", "1e-2")
    assert code == 0 and out.startswith("q = -13 ")  # -1e-3 / (1e-2 / 127) = -12.7


# ------------------------------------------------------------------------ errors and help
@pytest.mark.parametrize(
    "argv",
    [
        ["size"],  # --params missing
        ["size", "--params", "1e9", "--bits", "9"],
        ["size", "--params", "1e9", "--bits", "4,x"],
        ["size", "--params", "zero"],
        ["size", "--params", "1e9", "--group-size", "0"],
        ["explain", "x"],
        ["explain", "1", "--bits", "0"],
        ["explain", "1", "--range", "2", "1"],
        ["explain"],
        ["frobnicate"],
        [],
    ],
)
def test_bad_arguments_exit_2_with_one_message(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert "Traceback" not in err and "error" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["size", "--help"],
        ["explain", "--help"],
        ["demo", "--help"],
        ["report", "--help"],
    ],
)
def test_help(capsys, argv):
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "usage: cuantiza" in out


# ---------------------------------------------------------------------------------- demo
def test_demo_core_quick_table_and_files(capsys, tmp_path):
    code, out, _ = run(capsys, "demo", "--core", "--quick", "--out", str(tmp_path))
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("| int")]
    assert (
        len(lines) == 8 * 2 * 3 * 2 - 3
    )  # bits x sym/asym x granularity x range, binary minmax only
    for bits in range(1, 9):
        assert any(line.startswith(f"| int{bits} ") for line in lines)
    data = json.loads((tmp_path / "demo_core.json").read_text())
    assert len(data) == len(lines) and (tmp_path / "demo_core.md").read_text().startswith(
        "weight matrix"
    )
    by = {(r["scheme"], r["range"]): r for r in data}
    assert by[("int4 sym group32", "minmax")]["bits_per_weight"] == pytest.approx(
        4.5
    )  # 4 + 16 / 32
    assert (
        by[("int8 sym per-channel", "minmax")]["sqnr_db"]
        > by[("int4 sym per-channel", "minmax")]["sqnr_db"]
        + THRESHOLDS["demo_core_8bit_vs_4bit_sqnr_gain_db"]
    )
    for (scheme, rng), r in by.items():  # the MSE search includes min/max itself
        if rng == "mse":
            slack = THRESHOLDS["mse_vs_minmax_sqnr_slack_db"]
            assert r["sqnr_db"] >= by[(scheme, "minmax")]["sqnr_db"] - slack


# -------------------------------------------------------------------------------- report
def test_report_prints_a_saved_report(capsys, tmp_path):
    import torch
    from torch import nn

    import cuantiza as cz

    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    qm = cz.quantize_dynamic(m, cz.QuantConfig())
    cz.report(m, qm, torch.randn(4, 16)).save(tmp_path / "r", plots=0)
    code, out, _ = run(capsys, "report", str(tmp_path / "r"))
    assert code == 0 and "model output SQNR" in out
    assert "compression" in out and out.count("Linear") >= 2


def test_report_of_a_missing_folder_is_one_line_error(capsys, tmp_path):
    code, _, err = run(capsys, "report", str(tmp_path / "nope"))
    assert code == 2 and "Traceback" not in err
