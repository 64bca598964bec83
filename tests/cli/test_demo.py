"""`cuantiza demo --quick` meets the issue's accuracy targets on the held-out digits split."""

import pytest

from cuantiza.cli import demo

pytestmark = pytest.mark.slow


def test_quick_demo_meets_targets(tmp_path, capsys):
    rows = {r.name: r for r in demo.run(quick=True, out=tmp_path / "out")}
    fp32 = rows["fp32"].accuracy
    assert fp32 > 95
    for name, r in rows.items():
        if name.startswith("static int8"):
            assert r.accuracy >= fp32 - 0.5, name
    assert rows["QAT w4 a8"].accuracy >= fp32 - 1
    assert rows["QAT w2 a8 (ternary)"].accuracy >= fp32 - 3
    assert rows["QAT w1 a8 (binary)"].accuracy >= fp32 - 10
    assert rows["QAT w1 a8 (binary)"].bpw < 2.0 and rows["static int8, min/max"].bpw < 8.5
    for name, r in rows.items():  # promise 1: the simulated model runs as is
        if name.startswith(("static", "QAT")):
            assert r.exact == "yes", name
    for f in ("report.md", "report.json"):
        assert (tmp_path / "out" / f).exists()
    assert "| variant |" in capsys.readouterr().out
