"""The README's example, runnable: static int8 PTQ of a small MLP, saved and reported.

Run: ``python examples/quickstart.py [OUT_DIR]``.
"""

import sys
import tempfile

import torch

import cuantiza as cz


def main(out: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    ).eval()
    cfg = cz.QuantConfig(
        weight=cz.QScheme(bits=8, granularity=cz.PerChannel(0)),
        activation=cz.QScheme(bits=8, symmetric=False),
        observer=cz.Percentile(99.99),
    )
    prepared = cz.prepare(model, cfg)
    cz.calibrate(prepared, [torch.randn(16, 64) for _ in range(8)])  # your calibration batches
    qmodel = cz.convert(prepared)  # int8 x int8 -> int32 inside
    cz.save(qmodel, out)  # safetensors + cuantiza.json
    print(cz.report(model, qmodel, torch.randn(4, 64)).to_markdown())
    again = cz.load(out, model)
    x = torch.randn(3, 64)
    assert torch.equal(again(x), qmodel(x)), "a saved model must load bit-identical"


if __name__ == "__main__":
    main(
        sys.argv[1]
        if len(sys.argv) > 1
        else tempfile.mkdtemp(prefix="cuantiza-quickstart-") + "/out"
    )
