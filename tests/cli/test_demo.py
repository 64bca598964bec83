"""`cuantiza demo --quick` meets the issue's accuracy targets on the held-out digits split."""

import pytest

from cuantiza.cli import demo
from tests.thresholds import THRESHOLDS

pytestmark = pytest.mark.slow


def test_quick_demo_meets_targets(tmp_path, capsys):
    rows = {r.name: r for r in demo.run(quick=True, out=tmp_path / "out")}
    fp32 = rows["fp32"].accuracy
    assert fp32 > THRESHOLDS["demo_fp32_accuracy_pct"]
    drop = THRESHOLDS["demo_accuracy_drop_pct"]
    for name, r in rows.items():
        if name.startswith("static int8"):
            assert r.accuracy >= fp32 - drop["static int8"], name
    for name in ("QAT w4 a8", "QAT w2 a8 (ternary)", "QAT w1 a8 (binary)"):
        assert rows[name].accuracy >= fp32 - drop[name], name
    assert rows["QAT w1 a8 (binary)"].bpw < 2.0 and rows["static int8, min/max"].bpw < 8.5
    for name, r in rows.items():  # promise 1: the simulated model runs as is
        if name.startswith(("static", "QAT")):
            assert r.exact == "yes", name
    for f in ("report.md", "report.json"):
        assert (tmp_path / "out" / f).exists()
    assert "| variant |" in capsys.readouterr().out
