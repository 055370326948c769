"""Natural distribution shift: CIFAR-10.1 files in the published layout (a fake 20-image pair), their
download and checksums, the launch refusal, your own labelled sets, the shifted shapes split, the
drop's numbers against a direct computation, and a tiny shapes run through the worker and the report."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from grids import tiny_grid_text

from cnnstress import data, shiftsets
from cnnstress.analysis import shift as shift_stats
from cnnstress.data import DataError
from cnnstress.grid import GridError, load_grid


def _fake_cifar101(root: Path, n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fake pair in the published layout: uint8 (n, 32, 32, 3) HWC images and int32 labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.int32)
    folder = root / "cifar10.1"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / shiftsets.CIFAR101_DATA, x)
    np.save(folder / shiftsets.CIFAR101_LABELS, y)
    return x, y


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "data 'root'"


def test_cifar101_is_read_in_the_published_layout(root):
    x, y = _fake_cifar101(root)
    images, labels = shiftsets.load_cifar101(root)
    assert images.shape == (20, 3, 32, 32) and images.dtype == np.uint8 and labels.dtype == np.int64
    np.testing.assert_array_equal(images[7].transpose(1, 2, 0), x[7])  # HWC -> CHW, same pixels
    np.testing.assert_array_equal(labels, y)
    assert shiftsets.cifar101_missing(root) == ""


@pytest.mark.parametrize("which, value, expected", [
    ("data", np.zeros((20, 32, 32, 3), np.float32), "holds float32 (20, 32, 32, 3); allowed: uint8 (K, 32, 32, 3)"),
    ("data", np.zeros((20, 3, 32, 32), np.uint8), "allowed: uint8 (K, 32, 32, 3)"),
    ("labels", np.arange(20) + 1, "labels in [1, 20]; allowed: 0 to 9"),
    ("labels", np.zeros(19, np.int64), "labels are int64 (19,); allowed: integers (20,)"),
    ("labels", np.array([{"a": 1}] * 20, dtype=object), "not a readable .npy file"),
])
def test_damaged_cifar101_files_are_one_line_naming_the_file(root, which, value, expected):
    _fake_cifar101(root)
    name = shiftsets.CIFAR101_DATA if which == "data" else shiftsets.CIFAR101_LABELS
    np.save(root / "cifar10.1" / name, value, allow_pickle=True)
    with pytest.raises(DataError) as err:
        shiftsets.load_cifar101(root)
    msg = str(err.value)
    assert "\n" not in msg and name in msg and expected in msg, msg
    assert "python launch.py --download cifar10.1" in msg


def test_fewer_samples_than_cifar101_holds_draw_every_class_not_the_first_images(root):
    x, y = _fake_cifar101(root, n=40)
    order = np.argsort(y, kind="stable")  # the published file is sorted by class
    np.save(root / "cifar10.1" / shiftsets.CIFAR101_DATA, x[order])
    np.save(root / "cifar10.1" / shiftsets.CIFAR101_LABELS, y[order])
    images, labels, index, attrs = shiftsets.load_set("cifar10.1", "cifar10", root, 20, seed=4)
    again = shiftsets.load_set("cifar10.1", "cifar10", root, 20, seed=4)[2]
    np.testing.assert_array_equal(index, again)  # the same images in every run of a sweep
    np.testing.assert_array_equal(labels, y[order][index])
    np.testing.assert_array_equal(images, x[order][index].transpose(0, 3, 1, 2))
    assert len(np.unique(labels)) >= 6 and attrs["count"] == 20 and attrs["source_count"] == 40
    # not the published bytes: the set's description (on the report's page) says so
    assert attrs["checksum"].startswith("cifar10.1_v6_data.npy: git blob id ") and "NOT the published files" in \
        attrs["description"]
    assert shiftsets.load_set("cifar10.1", "cifar10", root, 2000)[2].tolist() == list(range(40))


def test_missing_cifar101_names_the_download_command(root):
    msg = shiftsets.cifar101_missing(root)
    assert "cifar10.1_v6_data.npy (missing)" in msg and "cifar10.1_v6_labels.npy (missing)" in msg
    assert "\n" not in msg and "fetch it with: python launch.py --download cifar10.1 --data-root" in msg


def _git_blob(b: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest()


def test_download_checks_every_file_against_its_published_checksums(root, tmp_path, monkeypatch):
    source = tmp_path / "published copy"
    x, y = _fake_cifar101(source)
    files = []
    for name in (shiftsets.CIFAR101_DATA, shiftsets.CIFAR101_LABELS):
        raw = (source / "cifar10.1" / name).read_bytes()
        files.append(shiftsets.PublishedFile(name, _git_blob(raw), hashlib.md5(raw).hexdigest()))
    monkeypatch.setattr(shiftsets, "CIFAR101_FILES", tuple(files))
    monkeypatch.setattr(shiftsets, "CIFAR101_URL", (source / "cifar10.1").as_uri() + "/")  # file:// through urllib
    folder, said = shiftsets.download(root)
    assert folder == root / "cifar10.1" and "20 images of 10 classes" in said and "0 of 2 already there" in said
    np.testing.assert_array_equal(shiftsets.load_cifar101(root)[1], y)
    _, said = shiftsets.download(root)  # both kept, nothing fetched
    assert "2 of 2 already there" in said

    # a file whose bytes differ from the published ones is refused and nothing of it is kept
    (root / "cifar10.1" / shiftsets.CIFAR101_LABELS).unlink()
    np.save(source / "cifar10.1" / shiftsets.CIFAR101_LABELS, y[::-1].copy())
    with pytest.raises(DataError, match=r"not the published file \(git blob id [0-9a-f]{40}, published"):
        shiftsets.download(root)
    assert sorted(p.name for p in (root / "cifar10.1").iterdir()) == [shiftsets.CIFAR101_DATA]


def test_launch_download_cifar101_fetches_checks_and_says_so(root, tmp_path, monkeypatch, capsys):
    """python launch.py --download cifar10.1, with the URL pointing at a local copy (file://)."""
    from cnnstress import launcher

    source = tmp_path / "copy"
    _fake_cifar101(source)
    raw = {n: (source / "cifar10.1" / n).read_bytes() for n in (shiftsets.CIFAR101_DATA, shiftsets.CIFAR101_LABELS)}
    monkeypatch.setattr(shiftsets, "CIFAR101_FILES", tuple(shiftsets.PublishedFile(n, _git_blob(b), hashlib.md5(b).hexdigest())
                                                           for n, b in raw.items()))
    monkeypatch.setattr(shiftsets, "CIFAR101_URL", (source / "cifar10.1").as_uri() + "/")
    assert launcher.main(["--download", "cifar10.1", "--data-root", str(root)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "20 images of 10 classes; both files match the published git blob ids and md5s" in out
    assert f"cifar10.1 is in {root / 'cifar10.1'}" in out
    monkeypatch.setattr(shiftsets, "CIFAR101_URL", (tmp_path / "nowhere").as_uri() + "/")
    (root / "cifar10.1" / shiftsets.CIFAR101_DATA).unlink()
    assert launcher.main(["--download", "cifar10.1", "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "downloading cifar10.1 into" in err and err.count("\n") == 1, err


def test_the_published_labels_checksums_are_those_of_the_published_labels(tmp_path):
    """The published labels file is 200 labels of each class in class order, int32, as np.save
    writes it: rebuilt here, its git blob id, md5 and sha256 are the recorded ones."""
    path = tmp_path / shiftsets.CIFAR101_LABELS
    np.save(path, np.repeat(np.arange(10, dtype="<i4"), 200))
    raw = path.read_bytes()
    labels = next(f for f in shiftsets.CIFAR101_FILES if f.name == shiftsets.CIFAR101_LABELS)
    assert len(raw) == 8128
    assert shiftsets.git_blob_sha1(path) == _git_blob(raw) == labels.git_blob
    assert hashlib.md5(raw).hexdigest() == labels.md5
    assert hashlib.sha256(raw).hexdigest() == shiftsets.CIFAR101_LABELS_SHA256
    assert shiftsets._verified(path, labels) == ""


def _grid(tmp: Path, dataset: str, sets: str, extra: str = "") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "shift grid.toml"
    path.write_text(f'name = "s"\n[base]\ndataset = "{dataset}"\nmodel = "simple_cnn"\nepochs = 1\n'
                    f'[stress]\nshift_sets = {sets}\n{extra}')
    return path


def test_launch_and_dry_run_refuse_a_missing_cifar101_with_the_command(root, tmp_path):
    from cnnstress import launcher

    grid = load_grid(_grid(tmp_path, "cifar10", '["cifar10.1"]'), data_root=root)
    assert grid.runs[0].stress.shift == {"sets": ["cifar10.1"], "samples": 2000}
    msg = launcher.missing_files(grid)
    assert "\n" not in msg
    assert f"[stress].shift_sets: cifar10.1 in {root / 'cifar10.1'}: cifar10.1_v6_data.npy (missing)" in msg
    assert "fetch it with: python launch.py --download cifar10.1 --data-root" in msg
    _fake_cifar101(root)
    assert "shift_sets" not in launcher.missing_files(grid)  # (the clean CIFAR-10 files are still missing)
    np.save(root / "cifar10.1" / shiftsets.CIFAR101_LABELS, np.arange(20) + 5)  # read in full at launch too
    assert f"[stress].shift_sets: {root / 'cifar10.1' / shiftsets.CIFAR101_LABELS}: labels in [5, 24]" in \
        launcher.missing_files(grid)

    import subprocess
    import sys

    out = subprocess.run([sys.executable, "launch.py", "--grid", str(tmp_path / "shift grid.toml"), "--data-root",
                          str(tmp_path / "empty root"), "--out", str(tmp_path / "o u t"), "--dry-run"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "--download cifar10.1" in out.stderr, out.stderr


def test_shift_sets_are_checked_when_the_grid_is_read_and_off_changes_no_run_id(tmp_path):
    with pytest.raises(GridError, match=r"\[stress\]\.shift_sets: 'cifar10.1' is not a shift set for shapes"):
        load_grid(_grid(tmp_path / "a", "shapes", '["cifar10.1"]'))
    with pytest.raises(GridError, match=r"\[stress\]\.shift_sets: 'npz:' names no path"):
        load_grid(_grid(tmp_path / "b", "shapes", '["npz:"]'))
    off = load_grid(_grid(tmp_path / "c", "shapes", "[]")).runs[0]
    assert "shift" not in off.identity()["stress"] and off.stress.shift == {}
    on = load_grid(_grid(tmp_path / "d", "shapes", '["shapes_shifted"]')).runs[0]
    assert on.run_id != off.run_id and on.training_hash == off.training_hash  # a measurement, not training


def test_your_own_labelled_sets_read_and_identified_by_content(tmp_path):
    from PIL import Image

    folder = tmp_path / "my shifted set"
    rng = np.random.default_rng(1)
    for cls in ("circle", "star"):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / cls / f"{i}.png")
    npz = tmp_path / "my set.npz"
    x_npz = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.savez(npz, x=x_npz, y=np.array([0, 1, 2, 3, 9]))
    grid = load_grid(_grid(tmp_path, "shapes", '["folder:my shifted set", "npz:my set.npz"]'))
    own = grid.runs[0].stress.shift["own"]
    assert [e["set"] for e in own] == ["folder_my_shifted_set", "npz_my_set"]
    assert all("path" not in e for e in grid.runs[0].identity()["stress"]["shift"]["own"])  # content, not place
    x, y, index, attrs = shiftsets.load_own_set(own[0], "shapes", 32, 100, data.SHAPE_NAMES)
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 0, 5, 5, 5] and index.tolist() == list(range(6))
    assert attrs["kind"] == "own" and attrs["count"] == 6
    x, y, index, _ = shiftsets.load_own_set(own[1], "shapes", 32, 4, data.SHAPE_NAMES, seed=7)
    assert x.shape == (4, 3, 32, 32) and len(set(index.tolist())) == 4 and index.tolist() == sorted(index.tolist())
    np.testing.assert_array_equal(y, np.array([0, 1, 2, 3, 9])[index])  # each image keeps its own label
    np.testing.assert_array_equal(x, x_npz[index].transpose(0, 3, 1, 2))

    from cnnstress import launcher

    assert launcher.missing_files(grid) == ""
    (folder / "hexagon").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "hexagon" / "0.png")
    np.savez(npz, x=np.zeros((2, 32, 32, 3), np.uint8), y=np.array([0, 10]))
    grid = load_grid(_grid(tmp_path, "shapes", '["folder:my shifted set", "npz:my set.npz"]'))
    msg = launcher.missing_files(grid)
    assert "\n" not in msg and "'hexagon' is not a class of the dataset" in msg
    assert "my set.npz: labels in [0, 10]; allowed: 0 to 9" in msg


def test_the_shifted_shapes_split_keeps_the_dataset_and_moves_scale_and_hue():
    x0, y0, m0, b0 = data.generate_shapes(64, seed=5, shortcut=0.0)
    again = data.generate_shapes(64, seed=5, shortcut=0.0, scale=(7.0, 12.0), hue_offset=0.0)
    for a, b in zip((x0, y0, m0, b0), again):
        np.testing.assert_array_equal(a, b)  # the defaults are the dataset, bit for bit
    x1, y1, m1, _ = data.generate_shapes(64, seed=5, shortcut=0.0, **data.SHIFTED_SHAPES)
    np.testing.assert_array_equal(y0, y1)  # the same draws, other scales and hues
    assert m1.sum(axis=(1, 2)).mean() < 0.6 * m0.sum(axis=(1, 2)).mean()  # smaller objects
    x, y, index, attrs = shiftsets.load_set("shapes_shifted", "shapes", "unused", 30, seed=3)
    assert x.shape == (30, 3, 32, 32) and np.bincount(y, minlength=10).tolist() == [3] * 10
    assert attrs["name"] == "shapes_shifted" and attrs["count"] == 30


def test_the_drop_and_its_interval_against_a_direct_computation():
    rng = np.random.default_rng(0)
    clean = rng.random((3, 500)) < 0.9
    shifted = rng.random((3, 120)) < 0.8
    r = shift_stats.drop(clean, shifted)
    # direct: accuracy of every run on each set, and Welch's interval over per-image means
    a, b = shifted.mean(axis=0), clean.mean(axis=0)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    df = math.floor((va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1)))
    from scipy import stats

    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    delta = clean.sum() / clean.size - shifted.sum() / shifted.size
    assert r["drop"] == pytest.approx(delta, abs=1e-12)
    assert r["ci95"] == pytest.approx((delta - half, delta + half), abs=1e-9)
    per_run = [clean[i].mean() - shifted[i].mean() for i in range(3)]
    np.testing.assert_allclose(r["per_run"], per_run)
    half_s = stats.t.ppf(0.975, 2) * np.std(per_run, ddof=1) / math.sqrt(3)
    assert r["seeds"]["ci95"] == pytest.approx((np.mean(per_run) - half_s, np.mean(per_run) + half_s), abs=1e-4)


@pytest.mark.slow
def test_a_tiny_shapes_run_measures_the_shifted_split_and_the_report_shows_it(tmp_path):
    import h5py
    from rich.console import Console

    from cnnstress import gather, store
    from cnnstress.worker import run, run_dir_for

    path = tmp_path / "tiny grid.toml"
    path.write_text(tiny_grid_text(name="shift", epochs=1, lean=True, n_train=300, n_test=100,
                                   extra='shift_sets = ["shapes_shifted"]\nshift_samples = 60'))
    grid = load_grid(path, out_root=tmp_path / "out dir", data_root=REPO / "scratch" / "test-data")
    for spec in grid.runs:
        assert run(spec, echo=False)["status"] == "done"
    spec = grid.runs[0]
    results = run_dir_for(spec) / "results.h5"
    store.validate_results(results)
    with h5py.File(results, "r") as f:
        logits, labels = f["shift/shapes_shifted/logits"][:], f["shift/shapes_shifted/label"][:]
        clean = (f["test/logits"][:].argmax(1) == f["test/label"][:]).mean()
        described = json.loads(f.attrs["shift_sets"])
    x, y, _, _ = shiftsets.load_set("shapes_shifted", "shapes", "", 60, spec.stress.corruption_seed)
    np.testing.assert_array_equal(labels, y)  # the generator's labels, stored
    acc = float((logits.argmax(1) == labels).mean())
    assert described["shapes_shifted"]["count"] == 60

    sweep = Path(spec.paths.out_root) / spec.sweep
    index = gather.gather(sweep, grid=grid, console=Console(file=io.StringIO(), width=200), figures=True)
    page = index.read_text(encoding="utf-8")
    body = page.split('<section id="shift">', 1)[1].split("</section>", 1)[0]
    assert "<h2>Natural distribution shift</h2>" in body and "shapes_shifted" in body
    summary = json.loads((index.parent / "summary.json").read_text())
    row = next(r for r in summary["runs"] if r["run_id"] == spec.run_id)["shift"]["shapes_shifted"]
    assert row["accuracy"] == pytest.approx(acc) and row["clean_accuracy"] == pytest.approx(float(clean))
    assert row["drop"] == pytest.approx(float(clean) - acc)
    assert (index.parent / "figures" / "shift_scatter.png").is_file()
    # the variant's drop and its interval over images: analysis.shift on the stored arrays
    right = {}
    for r in grid.runs:
        if r.variant == "baseline":
            with h5py.File(run_dir_for(r) / "results.h5", "r") as f:
                right["clean"] = f["test/logits"][:].argmax(1) == f["test/label"][:]
                right["shift"] = f["shift/shapes_shifted/logits"][:].argmax(1) == f["shift/shapes_shifted/label"][:]
    direct = shift_stats.drop(right["clean"][None], right["shift"][None])
    v = summary["variants"]["baseline"]["shift"]["shapes_shifted"]
    assert v["drop_mean"] == pytest.approx(direct["drop"]) and v["drop_ci95"] == pytest.approx(list(direct["ci95"]))
    assert v["drop_seeds_ci95"] is None  # one seed: no spread over seeds
