"""Tests for cnnstress.store: results.h5 schema, atomic files, run state."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cnnstress import store
from cnnstress.store import ResultsError

N, C, D, H, W, E, V, T = 12, 5, 8, 4, 3, 3, 6, 7
STRESS = [("gaussian_noise", 3), ("jpeg", 1), ("contrast", 5)]

# the dtype each dataset is stored with, written out here independently of store.SCHEMA
EXPECTED_DTYPES = {
    "history/epoch": np.int32,
    **{f"history/{k}": np.float64 for k in ("lr", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_seconds")},
    "test/index": np.int32,
    "test/label": np.int16,
    "test/logits": np.float32,
    "test/embedding": np.float16,
    "test/gradcam/pred": np.float16,
    "test/gradcam/true": np.float16,
    "val/index": np.int32,
    "val/label": np.int16,
    "val/logits": np.float32,
    "train_subset/index": np.int32,
    "train_subset/label": np.int16,
    "train_subset/embedding": np.float16,
    **{f"stress/{c}/{s}/logits": np.float16 for c, s in STRESS},
    "faithfulness/deletion": np.float32,
    "shortcut/probe/accuracy": np.float32,
}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    # a run folder is named by its run id (run_state checks that DONE.json and results.h5 name it)
    d = tmp_path / "my data's \"dir\"" / "runs" / make_attrs()["run_id"]
    d.mkdir(parents=True)
    return d


def make_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A full synthetic results set, in the dtypes a worker would naturally hand over (int64/float64)."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {
        "history/epoch": np.arange(1, E + 1),
        "history/lr": rng.random(E),
        "history/train_loss": rng.random(E),
        "history/train_acc": rng.random(E),
        "history/val_loss": rng.random(E),
        "history/val_acc": rng.random(E),
        "history/epoch_seconds": rng.random(E) * 10,
        "test/index": rng.permutation(1000)[:N],
        "test/label": rng.integers(0, C, N),
        "test/logits": rng.normal(size=(N, C)),
        "test/embedding": rng.normal(size=(N, D)),
        "test/gradcam/pred": rng.random((N, H, W)),
        "test/gradcam/true": rng.random((N, H, W)),
        "val/index": rng.permutation(500)[:V],
        "val/label": rng.integers(0, C, V),
        "val/logits": rng.normal(size=(V, C)),
        "train_subset/index": rng.permutation(500)[:T],
        "train_subset/label": rng.integers(0, C, T),
        "train_subset/embedding": rng.normal(size=(T, D)),
        "faithfulness/deletion": rng.random((N, 9)),
        "shortcut/probe/accuracy": rng.random(4),
    }
    for c, s in STRESS:
        arrays[f"stress/{c}/{s}/logits"] = rng.normal(size=(N, C)) * 3
    return arrays


def make_attrs() -> dict:
    return {
        "run_id": "demo-baseline-s42-0123abcd",
        "spec": {"model": "resnet18", "epochs": 2, "augment": ["crop", "flip"], "lr": 0.1},
        "variant": "baseline",
        "seed": 42,
        "versions": {"torch": "2.x", "cuda": None, "cudnn": None},
        "device": "cpu",
        "git_sha": "deadbeef",
        "timings": {"train_s": 1.5, "eval_s": 0.25},
    }


def stored_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    return {k: np.asarray(v).astype(EXPECTED_DTYPES[k]) for k, v in make_arrays(seed).items()}


def write_raw(path: Path, arrays: dict[str, np.ndarray], attrs: dict | None) -> None:
    """Write a results file with h5py directly, bypassing publish's casting and validation."""
    with h5py.File(path, "w") as fh:
        if attrs is not None:
            for k, v in attrs.items():
                fh.attrs[k] = v
        for k, v in arrays.items():
            fh.create_dataset(k, data=v)


def raw_attrs(**changes) -> dict:
    a = make_attrs()
    out = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in a.items()}
    out["schema_version"] = 1
    out.update(changes)
    return out


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------


def test_round_trip_values_dtypes_and_attrs(run_dir: Path) -> None:
    arrays = make_arrays()
    store.publish_results(run_dir, arrays, make_attrs())
    assert listing(run_dir) == ["results.h5"]
    with store.open_results(run_dir / "results.h5") as r:
        assert r.keys() == sorted(arrays)
        for key, value in arrays.items():
            got = r.read(key)
            assert got.dtype == EXPECTED_DTYPES[key], key
            assert got.shape == np.shape(value), key
            np.testing.assert_array_equal(got, np.asarray(value).astype(EXPECTED_DTYPES[key]), err_msg=key)
        assert r.stress_keys() == sorted(STRESS)
        expected_attrs = dict(make_attrs(), schema_version=1)
        assert r.attrs == expected_attrs
        assert type(r.attrs["seed"]) is int
        np.testing.assert_array_equal(r.read("test/logits", rows=slice(3, 7)), r.read("test/logits")[3:7])
        assert r.shape("test/gradcam/pred") == (N, H, W)


def test_validate_summary(run_dir: Path) -> None:
    store.publish_results(run_dir, make_arrays(), make_attrs())
    info = store.validate_results(run_dir / "results.h5")
    assert info == {
        "run_id": make_attrs()["run_id"],
        "n_test": N,
        "num_classes": C,
        "epochs": E,
        "stress": sorted(STRESS),
    }


def test_returned_sha_matches_hashlib(run_dir: Path) -> None:
    sha = store.publish_results(run_dir, make_arrays(), make_attrs())
    assert sha == hashlib.sha256((run_dir / "results.h5").read_bytes()).hexdigest()
    assert store.sha256_file(run_dir / "results.h5") == sha


def test_minimal_required_only_is_valid(run_dir: Path) -> None:
    arrays = {k: v for k, v in make_arrays().items() if k.startswith(("history/", "test/"))}
    store.publish_results(run_dir, arrays, make_attrs())
    assert store.validate_results(run_dir / "results.h5")["stress"] == []


def _drop(key):
    def f(a):
        del a[key]
    return f


def _set(key, value):
    def f(a):
        a[key] = value
    return f


def _nan_at(key):
    def f(a):
        a[key] = a[key].copy()
        a[key].flat[0] = np.nan
    return f


def _label_out():
    def f(a):
        a["test/label"] = a["test/label"].copy()
        a["test/label"][0] = C
    return f


def _dup_index():
    def f(a):
        a["test/index"] = a["test/index"].copy()
        a["test/index"][1] = a["test/index"][0]
    return f


def _neg_index():
    def f(a):
        a["val/index"] = a["val/index"].copy()
        a["val/index"][0] = -1
    return f


BAD_CASES = {
    "missing required": ("test/embedding", _drop("test/embedding")),
    "missing history": ("history/val_acc", _drop("history/val_acc")),
    "wrong dtype": ("test/label", lambda a: a.__setitem__("test/label", a["test/label"].astype(np.float64))),
    "wrong dtype stress": ("stress/jpeg/1/logits",
                           lambda a: a.__setitem__("stress/jpeg/1/logits", a["stress/jpeg/1/logits"].astype(np.float32))),
    "mismatched N": ("test/embedding", _set("test/embedding", np.zeros((N + 1, D), np.float16))),
    "mismatched C": ("val/logits", _set("val/logits", np.zeros((V, C + 1), np.float32))),
    "mismatched E": ("history/lr", _set("history/lr", np.zeros(E + 1))),
    "wrong ndim": ("test/gradcam/true", _set("test/gradcam/true", np.zeros((N, H * W), np.float16))),
    "NaN logits": ("test/logits", _nan_at("test/logits")),
    "inf stress logits": ("stress/contrast/5/logits",
                          _set("stress/contrast/5/logits", np.full((N, C), np.inf, np.float16))),
    "label out of range": ("test/label", _label_out()),
    "duplicate index": ("test/index", _dup_index()),
    "negative index": ("val/index", _neg_index()),
    "unknown path": ("test/logit", _set("test/logit", np.zeros((N, C), np.float32))),
    "unknown top-level": ("extras/x", _set("extras/x", np.zeros(3, np.float32))),
    "bad corruption name": ("stress/Gaussian/3/logits", _set("stress/Gaussian/3/logits", np.zeros((N, C), np.float16))),
    "bad severity": ("stress/jpeg/6/logits", _set("stress/jpeg/6/logits", np.zeros((N, C), np.float16))),
    "incomplete bundle": ("val/logits", _drop("val/logits")),
    "wrong optional dtype": ("faithfulness/deletion",
                             lambda a: a.__setitem__("faithfulness/deletion", a["faithfulness/deletion"].astype(np.float64))),
}


def test_raw_valid_file_passes(run_dir: Path) -> None:
    # the control for the cases above: unmutated raw writing is accepted
    path = run_dir / "results.h5"
    write_raw(path, stored_arrays(), raw_attrs())
    assert store.validate_results(path)["n_test"] == N


@pytest.mark.parametrize(
    "changes, word",
    [({"schema_version": 2}, "schema_version"), ({"schema_version": "1"}, "schema_version"),
     ({"seed": "42"}, "seed"), ({"spec": "{not json"}, "spec"), ({"timings": "[1, 2]"}, "timings"),
     ({"extra": "x"}, "extra")],
)
def test_validate_rejects_bad_attrs(run_dir: Path, changes: dict, word: str) -> None:
    path = run_dir / "results.h5"
    write_raw(path, stored_arrays(), raw_attrs(**changes))
    with pytest.raises(ResultsError, match=word) as info:
        store.validate_results(path)
    assert str(path) in str(info.value)
    with pytest.raises(ResultsError, match=word):
        store.open_results(path)


def test_h5py_file_without_schema_attrs_rejected(run_dir: Path) -> None:
    path = run_dir / "results.h5"
    write_raw(path, stored_arrays(), attrs=None)
    with pytest.raises(ResultsError, match="schema_version") as info:
        store.validate_results(path)
    assert str(path) in str(info.value)


def test_truncated_file_rejected(run_dir: Path) -> None:
    store.publish_results(run_dir, make_arrays(), make_attrs())
    path = run_dir / "results.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ResultsError) as info:
        store.validate_results(path)
    assert str(path) in str(info.value)
    with pytest.raises(ResultsError):
        store.open_results(path)


@pytest.mark.parametrize("content", [b"", b"garbage " * 100, bytes(range(256)) * 8])
def test_garbage_file_rejected(run_dir: Path, content: bytes) -> None:
    path = run_dir / "results.h5"
    path.write_bytes(content)
    with pytest.raises(ResultsError) as info:
        store.validate_results(path)
    assert str(path) in str(info.value)
    with pytest.raises(ResultsError):
        store.open_results(path)


def test_missing_file_rejected(run_dir: Path) -> None:
    with pytest.raises(ResultsError, match="no such file"):
        store.validate_results(run_dir / "results.h5")


@pytest.mark.parametrize(
    "key, value, word",
    [("test/label", np.full(N, 1.0), "test/label"),              # float -> int is not a cast we do
     ("test/logits", np.full((N, C), "x"), "test/logits"),       # strings are never numbers
     ("test/label", np.full(N, 40000), "test/label"),             # does not fit int16
     ("stress/jpeg/1/logits", np.full((N, C), 1e6), "float16"),  # overflows float16
     ("test/logitz", np.zeros((N, C)), "test/logitz")],           # unknown path
)
def test_publish_rejects_uncastable_before_writing(run_dir: Path, key, value, word) -> None:
    arrays = make_arrays()
    arrays[key] = value
    with pytest.raises(ResultsError, match=word):
        store.publish_results(run_dir, arrays, make_attrs())
    assert listing(run_dir) == []


def test_publish_rejects_bad_attrs(run_dir: Path) -> None:
    attrs = make_attrs()
    del attrs["git_sha"]
    with pytest.raises(ResultsError, match="git_sha"):
        store.publish_results(run_dir, make_arrays(), attrs)
    attrs = dict(make_attrs(), timings={"train_s": float("nan")})
    with pytest.raises(ResultsError, match="timings"):
        store.publish_results(run_dir, make_arrays(), attrs)
    assert listing(run_dir) == []


def test_failed_publish_leaves_nothing_and_keeps_old(run_dir: Path) -> None:
    bad = make_arrays(1)
    bad["test/logits"][2, 1] = np.nan
    with pytest.raises(ResultsError, match="test/logits"):
        store.publish_results(run_dir, bad, make_attrs())
    assert listing(run_dir) == []  # temp file removed, no results.h5

    old_sha = store.publish_results(run_dir, make_arrays(0), make_attrs())
    with pytest.raises(ResultsError, match="test/label"):
        bad2 = make_arrays(2)
        bad2["test/label"][0] = C + 3
        store.publish_results(run_dir, bad2, make_attrs())
    assert listing(run_dir) == ["results.h5"]
    assert store.sha256_file(run_dir / "results.h5") == old_sha


def test_republish_removes_done(run_dir: Path) -> None:
    sha = store.publish_results(run_dir, make_arrays(0), make_attrs())
    store.write_done(run_dir, {"test_accuracy": 0.5}, sha)
    store.publish_results(run_dir, make_arrays(1), make_attrs())
    assert not (run_dir / "DONE.json").exists()
    assert store.run_state(run_dir).status == "partial"


# --- atomic files ----------------------------------------------------------------------------


def test_atomic_write_json_format_and_nan(run_dir: Path) -> None:
    path = run_dir / "spec.json"
    obj = {"b": [1, 2.5], "a": {"z": "q\"uote", "y": None}}
    store.atomic_write_json(path, obj)
    assert path.read_text() == json.dumps(obj, sort_keys=True, indent=2) + "\n"
    for bad in ({"a": float("nan")}, {"a": [1.0, float("inf")]}, {"a": np.float32("nan")}):
        with pytest.raises(ValueError):
            store.atomic_write_json(path, bad)
    assert json.loads(path.read_text()) == obj
    assert listing(run_dir) == ["spec.json"]


def test_atomic_write_json_numpy_scalars(run_dir: Path) -> None:
    path = run_dir / "x.json"
    store.atomic_write_json(path, {"acc": np.float32(0.5), "n": np.int64(7), "v": np.arange(3)})
    assert json.loads(path.read_text()) == {"acc": 0.5, "n": 7, "v": [0, 1, 2]}


def test_atomic_write_bytes_failure_keeps_old(run_dir: Path, monkeypatch) -> None:
    path = run_dir / "checkpoint.pt"
    store.atomic_write_bytes(path, b"old")
    assert path.read_bytes() == b"old"

    def boom(*args):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        store.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert listing(run_dir) == ["checkpoint.pt"]


def test_cleanup_removes_only_our_temp_files(run_dir: Path) -> None:
    # a writer killed between writing its temp file and the rename
    code = (
        "import os, sys\n"
        "from cnnstress import store\n"
        "os.replace = lambda *a: os._exit(3)\n"
        "store.atomic_write_bytes(sys.argv[1], b'half')\n"
    )
    target = run_dir / "checkpoint.pt"
    proc = subprocess.run([sys.executable, "-c", code, str(target)], cwd=Path(store.__file__).parents[1])
    assert proc.returncode == 3
    killed = [p for p in run_dir.iterdir()]
    assert len(killed) == 1 and killed[0].name.startswith(".checkpoint.pt") and ".tmp" in killed[0].name

    ours = [run_dir / ".results.h5.tmp-123-deadbeef", run_dir / ".DONE.json.tmp-9-0123abcd"]
    others = ["results.h5", "notes.tmp", ".hidden", ".x.tmp", ".results.h5.tmp-12-XYZXYZXY",
              ".results.h5.tmp-12-deadbeef.bak", "a.results.h5.tmp-12-deadbeef"]
    for p in ours:
        p.write_bytes(b"x")
    for name in others:
        (run_dir / name).write_bytes(b"keep")
    sub = run_dir / "sub dir"
    sub.mkdir()
    (sub / ".results.h5.tmp-1-deadbeef").write_bytes(b"nested, not ours to touch")

    removed = store.cleanup_temp_files(run_dir)
    assert sorted(removed) == sorted(ours + killed)
    assert listing(run_dir) == sorted(others + ["sub dir"])
    assert listing(sub) == [".results.h5.tmp-1-deadbeef"]
    assert store.cleanup_temp_files(run_dir) == []
    assert store.cleanup_temp_files(run_dir / "does not exist") == []


# --- run state -------------------------------------------------------------------------------


def test_run_state_missing_partial_failed(run_dir: Path) -> None:
    assert store.run_state(run_dir) == store.RunState("missing", "", None)
    assert store.run_state(run_dir / "nope").status == "missing"
    (run_dir / "spec.json").write_text("{}")
    assert store.run_state(run_dir).status == "missing"

    store.atomic_write_bytes(run_dir / "checkpoint.prev.pt", b"ckpt")  # the worker resumes from it too
    state = store.run_state(run_dir)
    assert state.status == "partial" and "checkpoint.prev.pt" in state.reason
    (run_dir / "checkpoint.prev.pt").unlink()
    store.atomic_write_bytes(run_dir / "checkpoint.pt", b"ckpt")
    state = store.run_state(run_dir)
    assert state.status == "partial" and "checkpoint.pt" in state.reason

    store.write_failed(run_dir, "CUDA out of memory", "Traceback ...")
    state = store.run_state(run_dir)
    assert state == store.RunState("failed", "CUDA out of memory", None)
    failed = json.loads((run_dir / "FAILED.json").read_text())
    assert set(failed) == {"reason", "detail", "failed_at"} and failed["detail"] == "Traceback ..."

    store.clear_failed(run_dir)
    assert store.run_state(run_dir).status == "partial"
    store.clear_failed(run_dir)  # idempotent

    (run_dir / "FAILED.json").write_text("garbage{")
    state = store.run_state(run_dir)
    assert state.status == "failed" and "FAILED.json" in state.reason


def test_run_state_done(run_dir: Path) -> None:
    sha = store.publish_results(run_dir, make_arrays(), make_attrs())
    assert store.run_state(run_dir).status == "partial"
    store.write_failed(run_dir, "earlier attempt")
    summary = {"test_accuracy": 0.75, "ece": np.float64(0.03)}
    store.write_done(run_dir, summary, sha)
    state = store.run_state(run_dir)
    assert state.status == "done" and state.reason == "" and state.summary == {"test_accuracy": 0.75, "ece": 0.03}
    done = json.loads((run_dir / "DONE.json").read_text())
    assert set(done) == {"run_id", "results_sha256", "summary", "finished_at"}
    assert done["run_id"] == make_attrs()["run_id"] and done["results_sha256"] == sha


def test_write_done_refuses_wrong_sha(run_dir: Path) -> None:
    with pytest.raises(ResultsError, match="results.h5"):
        store.write_done(run_dir, {}, "0" * 64)
    store.publish_results(run_dir, make_arrays(), make_attrs())
    with pytest.raises(ResultsError, match="sha256"):
        store.write_done(run_dir, {}, "0" * 64)
    assert not (run_dir / "DONE.json").exists()


def _done_run(run_dir: Path) -> str:
    sha = store.publish_results(run_dir, make_arrays(), make_attrs())
    store.write_done(run_dir, {"test_accuracy": 0.5}, sha)
    assert store.run_state(run_dir).status == "done"
    return sha


def test_run_state_broken_one_byte(run_dir: Path) -> None:
    _done_run(run_dir)
    path = run_dir / "results.h5"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    state = store.run_state(run_dir)
    assert state.status == "broken" and "sha256" in state.reason and state.summary is None


def test_run_state_broken_done_garbage(run_dir: Path) -> None:
    _done_run(run_dir)
    (run_dir / "DONE.json").write_text("{not json")
    state = store.run_state(run_dir)
    assert state.status == "broken" and "DONE.json" in state.reason
    (run_dir / "DONE.json").write_text(json.dumps({"run_id": "x", "summary": {}}))
    state = store.run_state(run_dir)
    assert state.status == "broken" and "results_sha256" in state.reason


def test_run_state_broken_results_deleted(run_dir: Path) -> None:
    _done_run(run_dir)
    (run_dir / "results.h5").unlink()
    state = store.run_state(run_dir)
    assert state.status == "broken" and "results.h5" in state.reason and "missing" in state.reason


def test_run_state_broken_invalid_results_even_without_hash(run_dir: Path) -> None:
    # a results.h5 swapped for a schema-violating one, with DONE.json updated to its hash
    _done_run(run_dir)
    path = run_dir / "results.h5"
    arrays = stored_arrays()
    arrays["test/logits"][0, 0] = np.nan
    write_raw(path, arrays, raw_attrs())
    done = json.loads((run_dir / "DONE.json").read_text())
    done["results_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (run_dir / "DONE.json").write_text(json.dumps(done))
    for verify in (True, False):
        state = store.run_state(run_dir, verify_hash=verify)
        assert state.status == "broken" and "test/logits" in state.reason


# --- storage and laziness --------------------------------------------------------------------


def test_chunking_and_compression(run_dir: Path) -> None:
    n, hh, ww = 40, 128, 128  # gradcam rows of 32 KiB: several chunks along N
    arrays = make_arrays()
    arrays = {k: v for k, v in arrays.items() if not k.startswith(("stress/", "val/", "train_subset/", "faithfulness/"))}
    rng = np.random.default_rng(3)
    arrays.update({
        "test/index": np.arange(n), "test/label": rng.integers(0, C, n), "test/logits": rng.normal(size=(n, C)),
        "test/embedding": rng.normal(size=(n, D)),
        "test/gradcam/pred": np.zeros((n, hh, ww)), "test/gradcam/true": np.ones((n, hh, ww)),
    })
    store.publish_results(run_dir, arrays, make_attrs())
    with h5py.File(run_dir / "results.h5", "r") as fh:
        for key, row_bytes in (("test/embedding", D * 2), ("test/gradcam/pred", hh * ww * 2), ("test/logits", C * 4)):
            ds = fh[key]
            rows = min(n, max(1, 2**20 // row_bytes))
            assert ds.chunks == (rows, *ds.shape[1:]), key
            assert ds.compression == "gzip" and ds.compression_opts == 4 and ds.shuffle, key
        assert fh["test/gradcam/pred"].chunks[0] == 32 < n
        for key in ("history/epoch", "test/index", "test/label"):
            assert fh[key].chunks is None and fh[key].compression is None, key


def test_open_results_is_lazy(run_dir: Path, monkeypatch) -> None:
    store.publish_results(run_dir, make_arrays(), make_attrs())
    calls = []
    original = h5py.Dataset.__getitem__

    def counting(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    monkeypatch.setattr(h5py.Dataset, "read_direct", lambda *a, **k: calls.append("read_direct"))
    with store.open_results(run_dir / "results.h5") as r:
        assert r.has("test/logits") and r.has("/stress/jpeg/1/logits")
        assert not r.has("stress/jpeg/2/logits") and not r.has("test") and not r.has("nope/x")
        assert len(r.keys()) == len(make_arrays())
        assert r.stress_keys() == sorted(STRESS)
        assert r.shape("test/embedding") == (N, D)
        assert r.attrs["variant"] == "baseline"
        assert calls == []
        r.read("test/label")
        assert calls == ["/test/label"]


def test_results_errors(run_dir: Path) -> None:
    store.publish_results(run_dir, make_arrays(), make_attrs())
    r = store.open_results(run_dir / "results.h5")
    with pytest.raises(KeyError, match="stress/fog/2/logits"):
        r.read("stress/fog/2/logits")
    r.close()
    with pytest.raises(ResultsError, match="closed"):
        r.read("test/label")


def test_schema_table_covers_design_paths() -> None:
    for key, dtype in EXPECTED_DTYPES.items():
        field = store.field_for(key)
        assert field is not None and field.np_dtype == np.dtype(dtype), key
    for key in ("test", "stress/jpeg/0/logits", "stress/jpeg/1", "stress/a-b/1/logits", "faithfulness", "other/x"):
        assert store.field_for(key) is None, key
    assert store.SCHEMA_VERSION == 1


def test_empty_unknown_group_rejected(run_dir: Path) -> None:
    path = run_dir / "results.h5"
    write_raw(path, stored_arrays(), raw_attrs())
    with h5py.File(path, "a") as fh:
        fh.create_group("extras")
    with pytest.raises(ResultsError, match="extras"):
        store.validate_results(path)


def test_store_imports_no_torch() -> None:
    code = "import sys, cnnstress.store; sys.exit(1 if 'torch' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(store.__file__).parents[1])
    assert proc.returncode == 0


# ---- /adversarial, /ood, /sanity and the ood_sets attribute ---------------------------

M, S = 5, 4  # attacked images, sanity images
OOD_COUNTS = {"uniform_noise": 7, "smooth_noise": 9}
# the dtype of each new dataset, written out here independently of store.SCHEMA
NEW_DTYPES = {
    "adversarial/positions": np.int32,
    "adversarial/linf/0/logits": np.float32,
    "adversarial/linf/8/logits": np.float32,
    "adversarial/l2/0.5/logits": np.float32,
    "ood/uniform_noise/logits": np.float32,
    "ood/smooth_noise/logits": np.float32,
    "sanity/positions": np.int32,
    "sanity/randomization/00_trained/gradcam": np.float16,
    "sanity/randomization/01_head/gradcam": np.float16,
    "sanity/randomization/02_block3/gradcam": np.float16,
}
OOD_ATTR = {name: {"name": name, "kind": "far", "description": f"{name} images", "dataset": "shapes", "count": k,
                   "seed": 0} for name, k in OOD_COUNTS.items()}


def make_new_arrays(seed: int = 1) -> dict[str, np.ndarray]:
    """The adversarial, OOD and sanity arrays for make_arrays()'s N, C, H, W, as a worker hands them over (int64/float64)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {"adversarial/positions": np.sort(rng.permutation(N)[:M]),
                                  "sanity/positions": np.sort(rng.permutation(N)[:S])}
    for key in NEW_DTYPES:
        if key.startswith("adversarial/") and key.endswith("/logits"):
            out[key] = rng.normal(size=(M, C)) * 4
        elif key.startswith("ood/"):
            out[key] = rng.normal(size=(OOD_COUNTS[key.split("/")[1]], C))
        elif key.startswith("sanity/randomization/"):
            out[key] = rng.random((S, H, W))
    return out


def test_key_helpers_spell_the_schema_paths() -> None:
    assert store.eps_text(8) == store.eps_text(8.0) == "8"
    assert store.eps_text(0.5) == "0.5" and store.eps_text(0) == "0" and store.eps_text(1e-5) == "0.00001"
    assert store.adversarial_key("linf", 8.0) == "adversarial/linf/8/logits"
    assert store.adversarial_key("l2", 0.5) == "adversarial/l2/0.5/logits"
    assert store.ood_key("smooth_noise") == "ood/smooth_noise/logits"
    assert store.sanity_key(0, "trained") == "sanity/randomization/00_trained/gradcam"
    assert store.sanity_key(12, "layer4") == "sanity/randomization/12_layer4/gradcam"
    for key in (store.adversarial_key("l2", 1e-5), store.adversarial_key("linf", 64), *NEW_DTYPES):
        field = store.field_for(key)
        assert field is not None and (key not in NEW_DTYPES or field.np_dtype == np.dtype(NEW_DTYPES[key])), key


def test_new_arrays_and_ood_sets_attr_round_trip_and_validate(run_dir: Path) -> None:
    arrays = {**make_arrays(), **make_new_arrays()}
    attrs = dict(make_attrs(), ood_sets=OOD_ATTR)
    store.publish_results(run_dir, arrays, attrs)
    info = store.validate_results(run_dir / "results.h5")
    assert (info["n_test"], info["num_classes"], info["stress"]) == (N, C, sorted(STRESS))
    with store.open_results(run_dir / "results.h5") as r:
        assert r.keys() == sorted(arrays)
        for key, dtype in NEW_DTYPES.items():
            got = r.read(key)
            assert got.dtype == dtype and got.shape == np.shape(arrays[key]), key
            np.testing.assert_array_equal(got, np.asarray(arrays[key]).astype(dtype), err_msg=key)
        assert r.attrs["ood_sets"] == OOD_ATTR
        assert r.attrs == dict(make_attrs(), ood_sets=OOD_ATTR, schema_version=1)
    with h5py.File(run_dir / "results.h5", "r") as fh:  # stored as JSON text, like the other JSON attributes
        assert json.loads(fh.attrs["ood_sets"]) == OOD_ATTR
    # the attribute is optional: a file with the arrays and without it is valid too
    store.publish_results(run_dir, arrays, make_attrs())
    with store.open_results(run_dir / "results.h5") as r:
        assert "ood_sets" not in r.attrs
    with pytest.raises(ResultsError, match="ood_sets"):  # a JSON object, not a list
        store.publish_results(run_dir, arrays, dict(make_attrs(), ood_sets=["uniform_noise"]))


def _stored_new() -> dict[str, np.ndarray]:
    return {**stored_arrays(), **{k: np.asarray(v).astype(NEW_DTYPES[k]) for k, v in make_new_arrays().items()}}


def test_raw_file_with_new_arrays_passes(run_dir: Path) -> None:
    # the control for the rejections below: h5py-written, every dtype right
    path = run_dir / "results.h5"
    write_raw(path, _stored_new(), raw_attrs(ood_sets=json.dumps(OOD_ATTR)))
    assert store.validate_results(path)["n_test"] == N
    with store.open_results(path) as r:
        assert r.attrs["ood_sets"] == OOD_ATTR


NEW_BAD_CASES = {
    "unknown norm": ("adversarial/linfx/8/logits", _set("adversarial/linfx/8/logits", np.zeros((M, C), np.float32))),
    "eps not a number": ("adversarial/linf/eight/logits",
                         _set("adversarial/linf/eight/logits", np.zeros((M, C), np.float32))),
    "no NN_ prefix": ("sanity/randomization/trained/gradcam",
                      _set("sanity/randomization/trained/gradcam", np.zeros((S, H, W), np.float16))),
    "one-digit step": ("sanity/randomization/0_trained/gradcam",
                       _set("sanity/randomization/0_trained/gradcam", np.zeros((S, H, W), np.float16))),
    "float16 adversarial": ("adversarial/linf/8/logits",
                            lambda a: a.__setitem__("adversarial/linf/8/logits",
                                                    a["adversarial/linf/8/logits"].astype(np.float16))),
    "float16 ood": ("ood/smooth_noise/logits",
                    lambda a: a.__setitem__("ood/smooth_noise/logits", a["ood/smooth_noise/logits"].astype(np.float16))),
    "float32 sanity": ("sanity/randomization/01_head/gradcam",
                       lambda a: a.__setitem__("sanity/randomization/01_head/gradcam",
                                               a["sanity/randomization/01_head/gradcam"].astype(np.float32))),
    "int64 positions": ("adversarial/positions",
                        lambda a: a.__setitem__("adversarial/positions", a["adversarial/positions"].astype(np.int64))),
    "M disagrees": ("adversarial/l2/0.5/logits", _set("adversarial/l2/0.5/logits", np.zeros((M + 1, C), np.float32))),
    "C disagrees": ("adversarial/linf/0/logits", _set("adversarial/linf/0/logits", np.zeros((M, C + 1), np.float32))),
    "S disagrees": ("sanity/randomization/02_block3/gradcam",
                    _set("sanity/randomization/02_block3/gradcam", np.zeros((S - 1, H, W), np.float16))),
    "map size disagrees": ("sanity/randomization/01_head/gradcam",
                           _set("sanity/randomization/01_head/gradcam", np.zeros((S, H, W + 1), np.float16))),
    "NaN adversarial": ("adversarial/linf/8/logits", _nan_at("adversarial/linf/8/logits")),
    "inf ood": ("ood/uniform_noise/logits", _set("ood/uniform_noise/logits", np.full((3, C), np.inf, np.float32))),
    "bad set name": ("ood/Uniform-Noise/logits", _set("ood/Uniform-Noise/logits", np.zeros((3, C), np.float32))),
}


# every bad case, on the arrays it mutates: the core file's, or the one with the stress-test arrays
ALL_BAD_CASES = {**{case: (stored_arrays, *v) for case, v in BAD_CASES.items()},
                 **{case: (_stored_new, *v) for case, v in NEW_BAD_CASES.items()}}
assert len(ALL_BAD_CASES) == len(BAD_CASES) + len(NEW_BAD_CASES)  # no case name shadows another


@pytest.mark.parametrize("case", sorted(ALL_BAD_CASES))
def test_validate_rejects_and_names_dataset(run_dir: Path, case: str) -> None:
    arrays_for, key, mutate = ALL_BAD_CASES[case]
    arrays = arrays_for()
    mutate(arrays)
    path = run_dir / "results.h5"
    write_raw(path, arrays, raw_attrs())
    with pytest.raises(ResultsError) as info:
        store.validate_results(path)
    assert str(path) in str(info.value) and key in str(info.value)


@pytest.mark.parametrize("key, value, word", [
    ("adversarial/linfx/8/logits", np.zeros((M, C)), "unknown dataset path"),
    ("sanity/randomization/trained/gradcam", np.zeros((S, H, W)), "unknown dataset path"),
    ("adversarial/linf/8/logits", np.zeros((M + 2, C)), "dimension M is 7 but adversarial/"),
    ("sanity/positions", np.arange(S + 1), "dimension S is"),
    ("adversarial/positions", np.arange(M) + 0.5, "adversarial/positions: cannot store dtype float64"),
    ("sanity/randomization/01_head/gradcam", np.full((S, H, W), 1e6), "float16"),
])
def test_publish_refuses_bad_new_arrays_and_writes_nothing(run_dir: Path, key, value, word) -> None:
    arrays = {**make_arrays(), **make_new_arrays()}
    arrays[key] = value
    with pytest.raises(ResultsError, match=word):
        store.publish_results(run_dir, arrays, dict(make_attrs(), ood_sets=OOD_ATTR))
    assert listing(run_dir) == []


def test_ood_logits_must_have_the_test_logits_classes(run_dir: Path) -> None:
    arrays = {**make_arrays(), "ood/uniform_noise/logits": np.zeros((7, C + 1))}
    with pytest.raises(ResultsError, match="ood/uniform_noise/logits"):
        store.publish_results(run_dir, arrays, make_attrs())


@pytest.mark.parametrize("positions", [[0, 3, N], [-1, 3], [2, 2]])
def test_positions_must_be_distinct_rows_of_test(run_dir: Path, positions) -> None:
    arrays = {**make_arrays(), "adversarial/positions": np.array(positions),
              "adversarial/linf/8/logits": np.zeros((len(positions), C))}
    with pytest.raises(ResultsError, match="adversarial/positions"):
        store.publish_results(run_dir, arrays, make_attrs())


@pytest.mark.parametrize("eps", ["8e", "1.2.3", "8-"])
def test_adversarial_eps_segment_must_be_a_number(run_dir: Path, eps: str) -> None:
    arrays = {**make_arrays(), "adversarial/positions": np.arange(M), f"adversarial/linf/{eps}/logits": np.zeros((M, C))}
    with pytest.raises(ResultsError, match="unknown dataset path"):
        store.publish_results(run_dir, arrays, make_attrs())


# --- every float array finite ------------------------------------------------------------------

# Float datasets with no value check of their own: before, NaN and infinity passed here unnoticed.
NONFINITE_KEYS = ("test/embedding", "test/gradcam/pred", "test/gradcam/true", "train_subset/embedding",
                  "faithfulness/deletion", "shortcut/probe/accuracy", "history/val_loss", "val/logits")


def _with_value(arrays: dict, key: str, value: float, row: int = 0) -> dict:
    arrays = dict(arrays)
    a = np.array(arrays[key], copy=True)
    a[row] = value
    arrays[key] = a
    return arrays


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("key", NONFINITE_KEYS)
def test_nonfinite_float_array_is_refused_on_read_and_on_publish(run_dir: Path, key: str, value: float) -> None:
    # read: a file written around publish (h5py directly) fails validation, naming file and key
    path = run_dir / "results.h5"
    write_raw(path, _with_value(stored_arrays(), key, value, row=1), raw_attrs())
    with pytest.raises(ResultsError) as info:
        store.validate_results(path)
    msg = str(info.value)
    assert str(path) in msg and key in msg and "first in row 1" in msg and "\n" not in msg
    assert ("NaN" if np.isnan(value) else "infinity") in msg
    # ... and a DONE.json vouching for that file's hash does not make it done: broken, naming the key
    store.atomic_write_json(run_dir / "DONE.json", {"run_id": make_attrs()["run_id"], "summary": {},
                                                    "results_sha256": store.sha256_file(path)})
    state = store.run_state(run_dir)
    assert state.status == "broken" and key in state.reason
    path.unlink()
    (run_dir / "DONE.json").unlink()
    # publish (what the worker calls): refused before anything is written, naming the key
    with pytest.raises(ResultsError) as info:
        store.publish_results(run_dir, _with_value(make_arrays(), key, value, row=1), make_attrs())
    assert str(info.value).startswith(f"{key}: contains") and "\n" not in str(info.value)
    assert listing(run_dir) == []


def test_finiteness_is_checked_block_by_block_and_names_the_row(run_dir: Path, monkeypatch) -> None:
    # blocks of 2 rows of embedding (8 float16 = 16 bytes a row): the bad row sits in the 5th block
    monkeypatch.setattr(store, "_BLOCK_BYTES", 32)
    path = run_dir / "results.h5"
    write_raw(path, _with_value(stored_arrays(), "test/embedding", np.inf, row=9), raw_attrs())
    with pytest.raises(ResultsError, match=r"test/embedding: contains infinity \(first in row 9\)"):
        store.validate_results(path)
    write_raw(path, stored_arrays(), raw_attrs())  # the control: finite everywhere passes in blocks too
    assert store.validate_results(path)["n_test"] == N


def test_results_copied_from_another_run_are_broken_whatever_the_hash_says(run_dir: Path) -> None:
    """DONE.json + results.h5 copied whole from another run agree with each other (hash, run id):
    only the folder's name tells that they are not this run's."""
    import shutil

    _done_run(run_dir)
    other = run_dir.parent / "demo-flip-s42-89abcdef"
    other.mkdir()
    for name in ("results.h5", "DONE.json"):
        shutil.copy2(run_dir / name, other / name)
    for verify in (True, False):
        state = store.run_state(other, verify_hash=verify)
        assert state.status == "broken" and state.summary is None
        assert state.reason == (f"{other / 'DONE.json'}: holds run 'demo-baseline-s42-0123abcd', but this folder "
                                "is run 'demo-flip-s42-89abcdef'")
    assert store.run_state(run_dir).status == "done"
