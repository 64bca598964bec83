"""save / load: bit-identical round trips, determinism, atomic writes, typed errors, no pickle."""

import copy
import functools
import json
import os
import pickle

import pytest
import safetensors.torch
import torch
from torch import nn

import cuantiza as cz
from tests.helpers import no_pickle


class Net(nn.Module):
    """Conv2d (bias-free, then BatchNorm: folded), grouped Conv2d, Conv1d and Linear."""

    def __init__(self, hidden=6):
        super().__init__()
        self.c1 = nn.Conv2d(2, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4)
        self.c1d = nn.Conv1d(8, hidden, 3, padding=1)
        self.fc = nn.Linear(hidden * 16, 5)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.bn(self.c1(x)))))  # (N, 8, 4, 4)
        return self.fc(self.c1d(x.flatten(2)).flatten(1))  # (N, 6, 16) -> (N, 5)


class TinyLM(nn.Module):
    """Embedding and lm_head sharing one weight."""

    def __init__(self, vocab=40, dim=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.emb.weight

    def forward(self, idx):
        return self.lm_head(self.norm(torch.relu(self.mix(self.emb(idx)))))


def _net(hidden=6):
    torch.manual_seed(0)
    m = Net(hidden).eval()
    m.bn.running_mean.uniform_(-0.3, 0.3)
    m.bn.running_var.uniform_(0.5, 2.0)
    return m


def _lm():
    torch.manual_seed(0)
    return TinyLM().eval()


G = torch.Generator().manual_seed(1)
X = torch.randn(8, 2, 8, 8, generator=G)
BATCHES = [torch.randn(8, 2, 8, 8, generator=G) for _ in range(3)]
IDX = torch.randint(0, 40, (4, 7), generator=G)


@functools.cache
def _static_once():
    return cz.convert(cz.calibrate(cz.prepare(_net(), cz.QuantConfig()), BATCHES))


def _static():
    """Static PTQ of _net() (calibrated once per session: convolutions are slow on some CPUs)."""
    return copy.deepcopy(_static_once())


def _round_trip(qm, skeleton, x, tmp_path):
    cz.save(qm, tmp_path / "q")
    q2 = cz.load(tmp_path / "q", skeleton)
    with torch.no_grad():
        assert torch.equal(q2(x), qm(x))
    return q2


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_static_round_trip_is_bit_identical_and_skeleton_untouched(tmp_path):
    qm, skel = _static(), _net()
    before = copy.deepcopy(skel.state_dict())
    q2 = _round_trip(qm, skel, X, tmp_path)
    assert isinstance(q2.c1, cz.nn.QuantConv) and isinstance(q2.fc, cz.nn.QuantLinear)
    assert isinstance(q2.bn, nn.Identity) and isinstance(skel.bn, nn.BatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in skel.state_dict().items())
    assert q2.c2.kernel == qm.c2.kernel and q2.fc.act.zero_point.dtype == torch.int32
    info = q2.cuantiza_info
    assert info.workflow == "static" and info.folded == [("c1", "bn")]
    assert info.observers == qm.cuantiza_info.observers and info.observers["fc"]["n_seen"] > 0
    assert [lp.name for lp in info.plan.layers] == [lp.name for lp in qm.cuantiza_info.plan.layers]
    assert sorted(os.listdir(tmp_path / "q")) == ["cuantiza.json", "model.safetensors"]


@pytest.mark.parametrize("mode", ["per_tensor", "per_token"])
def test_dynamic_round_trip(tmp_path, mode):
    qm = cz.quantize_dynamic(_net(), cz.QuantConfig(dynamic=mode))
    q2 = _round_trip(qm, _net(), X, tmp_path)
    assert isinstance(q2.fc, cz.nn.DynamicQuantLinear) and q2.fc.per_token == (mode == "per_token")


WEIGHT_ONLY = [
    cz.QScheme(bits=4, symmetric=False, granularity=cz.PerGroup(16), scale_dtype="float16"),
    cz.QScheme(bits=2, granularity=cz.PerChannel(0), scale_dtype="bfloat16"),
    cz.QScheme(bits=1, granularity=cz.PerChannel(0)),
]


@pytest.mark.parametrize("w", WEIGHT_ONLY, ids=lambda s: s.describe())
def test_weight_only_round_trip(tmp_path, w):
    qm = cz.quantize_weights(_net(), cz.QuantConfig(weight=w, group_remainder="pad"))
    q2 = _round_trip(qm, _net(), X, tmp_path)
    t = safetensors.torch.load((tmp_path / "q" / "model.safetensors").read_bytes())
    assert t["fc.weight_q.scale"].dtype == w.torch_scale_dtype
    assert ("fc.weight_q.zero_point" in t) == (not w.symmetric)
    stored = [v for k, v in t.items() if k.startswith("fc.weight_q.")]
    assert sum(v.numel() * v.element_size() for v in stored) == qm.fc.weight_q.nbytes  # as counted
    assert torch.equal(q2.fc.weight_q.data, qm.fc.weight_q.data)


def test_tied_embedding_and_lm_head_stored_once_and_retied(tmp_path):
    qm = cz.quantize_weights(_lm(), cz.QuantConfig())
    assert qm.emb.weight_q is qm.lm_head.weight_q
    q2 = _round_trip(qm, _lm(), IDX, tmp_path)
    t = safetensors.torch.load((tmp_path / "q" / "model.safetensors").read_bytes())
    assert sum(k.endswith("weight_q.data") for k in t) == 2  # emb (shared) and mix
    assert q2.emb.weight_q is q2.lm_head.weight_q
    assert isinstance(q2.emb, cz.nn.QuantEmbedding)
    assert (
        q2.cuantiza_info.notes == qm.cuantiza_info.notes
        and "tied" in q2.cuantiza_info.notes["lm_head"]
    )


def test_tied_float_parameters_stored_once(tmp_path):
    qm = cz.quantize_weights(_lm(), cz.QuantConfig(exclude=("emb", "lm_head")))
    q2 = _round_trip(qm, _lm(), IDX, tmp_path)
    t = safetensors.torch.load((tmp_path / "q" / "model.safetensors").read_bytes())
    assert ("emb.weight" in t) != ("lm_head.weight" in t)
    assert q2.emb.weight is q2.lm_head.weight


def test_same_model_gives_identical_bytes(tmp_path):
    qm = _static()
    cz.save(qm, tmp_path / "a")
    cz.save(copy.deepcopy(qm), tmp_path / "b")
    cz.save(cz.load(tmp_path / "a", _net()), tmp_path / "c")  # save(load(x)) == x
    assert _snapshot(tmp_path / "a") == _snapshot(tmp_path / "b") == _snapshot(tmp_path / "c")


def test_existing_output_refused_without_overwrite(tmp_path):
    out = tmp_path / "q"
    cz.save(_static(), out)
    old = _snapshot(out)
    other = cz.quantize_weights(_net(), cz.QuantConfig(weight=cz.QScheme(bits=4)))
    with pytest.raises(cz.OutputExistsError, match="overwrite=True"):
        cz.save(other, out)
    assert _snapshot(out) == old
    (tmp_path / "f").write_text("x")
    with pytest.raises(cz.OutputExistsError, match="is a file"):
        cz.save(other, tmp_path / "f", overwrite=True)
    cz.save(other, out, overwrite=True)
    assert _snapshot(out) != old
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(cz.OutputExistsError, match="not a cuantiza save"):
        cz.save(other, tmp_path / "mine", overwrite=True)  # never wipes other files
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["f", "mine", "q"]
    (tmp_path / "empty").mkdir()
    cz.save(other, tmp_path / "empty")  # an empty folder is fine


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_interrupted_save_keeps_previous_save(tmp_path, monkeypatch, where):
    out = tmp_path / "q"
    cz.save(_static(), out)
    old = _snapshot(out)

    def boom(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(
        os, "fsync" if where == "fsync" else "replace", boom
    )  # fsync: after a write
    with pytest.raises(OSError):
        cz.save(cz.quantize_dynamic(_net()), out, overwrite=True)
    monkeypatch.undo()
    assert _snapshot(out) == old
    assert os.listdir(tmp_path) == ["q"]  # no temporary folders left
    with torch.no_grad():
        assert torch.equal(cz.load(out, _net())(X), _static()(X))


def test_failed_second_rename_puts_the_previous_save_back(tmp_path, monkeypatch):
    out = tmp_path / "q"
    cz.save(_static(), out)
    old, real, calls = _snapshot(out), os.replace, []

    def second_fails(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("interrupted")
        real(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError, match="interrupted"):
        cz.save(cz.quantize_dynamic(_net()), out, overwrite=True)
    monkeypatch.undo()
    assert len(calls) == 3 and _snapshot(out) == old and os.listdir(tmp_path) == ["q"]


@pytest.fixture
def saved(tmp_path):
    cz.save(_static(), tmp_path / "q")
    return tmp_path / "q"


def test_truncated_safetensors_is_corrupt(saved):
    f = saved / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(cz.CorruptFileError, match="model.safetensors"):
        cz.load(saved, _net())
    f.write_bytes(b"\x08")
    with pytest.raises(cz.CorruptFileError, match="truncated"):
        cz.load(saved, _net())


def test_changed_tensor_bytes_fail_the_checksum(saved):
    f = saved / "model.safetensors"
    blob = bytearray(f.read_bytes())
    blob[-1] ^= 0xFF
    f.write_bytes(bytes(blob))
    with pytest.raises(cz.CorruptFileError, match="checksum"):
        cz.load(saved, _net())


@pytest.mark.parametrize(
    "text", [b"{not json", b"\xff\xfe", b"[1, 2]", b'{"format": "cuantiza", "format_version": 1}']
)
def test_garbage_json_is_corrupt(saved, text):
    (saved / "cuantiza.json").write_bytes(text)
    with pytest.raises(cz.CorruptFileError, match="cuantiza.json"):
        cz.load(saved, _net())


def _edit_manifest(folder, change):
    path = folder / "cuantiza.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_unknown_format_version_is_corrupt(saved):
    _edit_manifest(saved, lambda d: d.update(format_version=99))
    with pytest.raises(cz.CorruptFileError, match="version 99 .*reads version 1"):
        cz.load(saved, _net())


def test_malformed_module_entry_is_corrupt(saved):
    _edit_manifest(saved, lambda d: d["modules"]["fc"]["weight"]["scheme"].update(bits=12))
    with pytest.raises(cz.CorruptFileError, match="'fc'"):
        cz.load(saved, _net())


def test_missing_files_are_reported(saved, tmp_path):
    (saved / "model.safetensors").unlink()
    with pytest.raises(cz.CorruptFileError, match="model.safetensors is missing"):
        cz.load(saved, _net())
    with pytest.raises(cz.CorruptFileError, match="cuantiza.json is missing"):
        cz.load(tmp_path / "nowhere", _net())


class Renamed(Net):
    def __init__(self):
        super().__init__()
        self.head = self.fc
        del self.fc


@pytest.mark.parametrize(
    "skeleton, error, where",
    [
        (lambda: _net(hidden=4), cz.ShapeError, "c1d"),
        (lambda: Renamed(), cz.PlanError, "fc"),
        (lambda: nn.Sequential(), cz.PlanError, r"BatchNorm \(bn\)"),
        (lambda: {"fc.weight": None}, cz.PlanError, "nn.Module"),
    ],
)
def test_mismatched_architecture_is_a_typed_error(saved, skeleton, error, where):
    with pytest.raises(error, match=where):
        cz.load(saved, skeleton())


def test_float_layer_dtype_mismatch_is_a_typed_error(tmp_path):
    cz.save(cz.quantize_weights(_lm()), tmp_path / "q")  # LayerNorm stays float
    msg = "norm.weight: the model holds torch.float64, the save torch.float32"
    with pytest.raises(cz.PlanError, match=msg):
        cz.load(tmp_path / "q", _lm().double())


def test_wrong_layer_type_names_the_module(saved):
    m = _net()
    m.fc = nn.Conv1d(96, 5, 1)
    with pytest.raises(cz.PlanError, match="fc: the save holds a QuantLinear"):
        cz.load(saved, m)


class _Marker:
    """Unpickling this creates a folder: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_pickle_files_in_the_folder_are_never_loaded(saved, tmp_path, monkeypatch):
    probe = tmp_path / "probe"
    no_pickle.deliberately_unpickle(pickle.dumps(_Marker(probe)))  # the payload does work
    assert probe.is_dir()
    marker = tmp_path / "pwned"
    for name in ("pytorch_model.bin", "model.pt", "model.pkl"):
        (saved / name).write_bytes(pickle.dumps(_Marker(marker)))

    def forbidden(*a, **k):
        raise AssertionError("load unpickled something")

    for mod, fn in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(mod, fn, forbidden)
    q2 = cz.load(saved, _net())
    assert not marker.exists() and isinstance(q2.fc, cz.nn.QuantLinear)


def test_non_contiguous_weights_are_saved(tmp_path):
    m = _net()
    m.fc.weight = nn.Parameter(m.fc.weight.detach().t().contiguous().t())  # transposed
    m.c1d.weight = nn.Parameter(m.c1d.weight.detach().transpose(0, 2).contiguous().transpose(0, 2))
    assert not m.fc.weight.is_contiguous() and not m.c1d.weight.is_contiguous()
    qm = cz.quantize_weights(m, cz.QuantConfig(exclude=("c1d",)))  # c1d stays float
    assert not qm.c1d.weight.is_contiguous()
    _round_trip(qm, _net(), X, tmp_path)


def test_layer_left_in_float_by_convert(tmp_path):
    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x)

    torch.manual_seed(0)
    m = Dead()
    p = cz.calibrate(cz.prepare(m, cz.QuantConfig()), [torch.randn(3, 4)])
    qm = cz.convert(p, unobserved="float")
    q2 = _round_trip(qm, Dead(), torch.randn(3, 4), tmp_path)
    assert torch.equal(q2.b.weight, m.b.weight) and type(q2.b) is nn.Linear


def test_prepared_model_is_refused(tmp_path):
    with pytest.raises(cz.PlanError, match="convert"):
        cz.save(cz.prepare(_net(), cz.QuantConfig()), tmp_path / "q")
    assert not (tmp_path / "q").exists()
