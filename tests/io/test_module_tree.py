"""load compares the module tree the save recorded with the skeleton's (FAULTS 40): a module
without parameters (an activation, a dropout) is invisible to the state_dict, so before the
tree a skeleton with an extra or different one loaded and then computed something else."""

import json

import pytest
import torch
from torch import nn

import cuantiza as cz


class Block(nn.Module):
    def __init__(self, act: nn.Module | None = None):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)
        self.act = act if act is not None else nn.ReLU()

    def forward(self, x):
        y = self.act(self.fc1(x))
        return self.fc2(self.extra(y) if hasattr(self, "extra") else y)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    cz.save(cz.quantize_weights(Block()), tmp_path / "q")
    return tmp_path / "q"


def test_the_save_records_every_module_parameterless_ones_included(saved):
    tree = json.loads((saved / "cuantiza.json").read_text())["tree"]
    assert tree == {"": "Block", "fc1": "QuantLinear", "fc2": "QuantLinear", "act": "ReLU"}


def test_an_extra_parameterless_module_is_refused(saved):
    skeleton = Block()
    skeleton.extra = nn.Tanh()  # no parameters: the state_dict is the same
    with pytest.raises(cz.PlanError, match=r"extra \(Tanh\) only in the model"):
        cz.load(saved, skeleton)


def test_a_different_activation_is_refused_naming_both(saved):
    with pytest.raises(cz.PlanError, match="act is a GELU in the model, a ReLU in the save"):
        cz.load(saved, Block(nn.GELU()))


def test_a_missing_module_is_refused(saved):
    skeleton = Block()
    del skeleton.act
    with pytest.raises(cz.PlanError, match=r"act \(ReLU\) only in the save"):
        cz.load(saved, skeleton)


def test_the_same_architecture_loads_bit_identical(saved):
    x = torch.randn(3, 8)
    torch.manual_seed(0)
    qm = cz.quantize_weights(Block())
    assert torch.equal(cz.load(saved, Block())(x), qm(x))


def test_a_save_without_a_tree_still_loads(saved):
    """Saves written before the tree existed (and checkpoint folders) have no field: no check."""
    doc = json.loads((saved / "cuantiza.json").read_text())
    del doc["tree"]
    (saved / "cuantiza.json").write_text(json.dumps(doc))
    skeleton = Block()
    skeleton.extra = nn.Tanh()
    assert isinstance(cz.load(saved, skeleton).fc1, cz.nn.QuantLinear)


def test_a_malformed_tree_is_a_corrupt_file(saved):
    doc = json.loads((saved / "cuantiza.json").read_text())
    doc["tree"] = ["fc1"]
    (saved / "cuantiza.json").write_text(json.dumps(doc))
    with pytest.raises(cz.CorruptFileError, match="'tree'"):
        cz.load(saved, Block())
