"""Every script in examples/ runs (the MiniLM one is exercised in test_minilm.py)."""

import runpy
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_quickstart_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["quickstart.py", str(tmp_path / "out")])
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "model output SQNR" in out
    assert (tmp_path / "out" / "cuantiza.json").exists() and (
        tmp_path / "out" / "model.safetensors"
    ).exists()
