"""Tests of cnnstress.data: the synthetic shapes set, CIFAR pickle loading, splits and errors."""

from __future__ import annotations

import colorsys
import math
import pickle
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from fake_cifar import write_fake_cifar

from cnnstress import catalog, data

REPO = Path(__file__).resolve().parents[1]
ODD = "my data's \"dir\""  # folder name with a space and quotes


@pytest.fixture(scope="module")
def shapes_train():
    """2000 training images with the default shortcut, generated once for the module."""
    return data.generate_shapes(2000, seed=3, shortcut=0.8)


@pytest.fixture
def small_shapes_opts():
    return {"n_train": 300, "n_test": 120, "shortcut": 0.8, "data_seed": 5}


# ------------------------------------------------------------------------------------ module level


def test_import_does_not_pull_in_torch():
    code = "import sys, cnnstress.data; assert 'torch' not in sys.modules and 'torchvision' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_dataset_names_match_catalog():
    assert data.DATASETS == tuple(catalog.DATASETS)
    assert len(data.SHAPE_NAMES) == catalog.DATASETS["shapes"][0]


# ------------------------------------------------------------------------------------- generator


def test_shapes_dtypes_shapes_ranges(shapes_train):
    x, y, mask, bg = shapes_train
    n = 2000
    assert x.dtype == np.uint8 and x.shape == (n, 3, 32, 32)
    assert y.dtype == np.int64 and y.shape == (n,)
    assert mask.dtype == np.bool_ and mask.shape == (n, 32, 32)
    assert bg.dtype == np.int64 and bg.shape == (n,)
    assert y.min() >= 0 and y.max() < 10 and bg.min() >= 0 and bg.max() < 10
    assert x.min() < 20 and x.max() > 235  # uses the value range
    counts = np.bincount(y, minlength=10)
    assert counts.min() == counts.max() == n // 10  # every class present, balanced
    area = mask.sum(axis=(1, 2))
    assert area.min() >= 10 and area.max() < 32 * 32 * 0.6  # every object visible, none fills the image


def test_shapes_deterministic_across_chunks():
    n = 1100  # more than one vectorised block
    a = data.generate_shapes(n, seed=11, shortcut=0.5)
    b = data.generate_shapes(n, seed=11, shortcut=0.5)
    c = data.generate_shapes(n, seed=12, shortcut=0.5)
    for left, right in zip(a, b):
        assert left.dtype == right.dtype and np.array_equal(left, right)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


def test_mask_matches_visible_object(shapes_train):
    x, _, mask, _ = shapes_train
    xf = x.astype(np.float64)
    m = mask[:, None].astype(np.float64)
    inside = (xf * m).sum(axis=(2, 3)) / m.sum(axis=(2, 3))
    outside = (xf * (1 - m)).sum(axis=(2, 3)) / (1 - m).sum(axis=(2, 3))
    # Foreground brightness is chosen opposite to the background's, so every object stands out.
    brightness_gap = np.abs(inside.max(axis=1) - outside.max(axis=1))
    assert brightness_gap.min() > 40
    # Pixels just outside the mask look like the background, not like the object.
    for i in range(0, 2000, 97):
        ring = _dilate(mask[i]) & ~mask[i]
        far = ~_dilate(_dilate(mask[i]))
        near_bg = xf[i][:, ring].mean(axis=1)
        assert np.abs(near_bg - xf[i][:, far].mean(axis=1)).sum() < np.abs(near_bg - inside[i]).sum()


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def test_background_hue_is_bg_class(shapes_train):
    x, _, mask, bg = shapes_train
    errors = []
    for i in range(0, 2000, 7):
        rgb = x[i][:, ~mask[i]].astype(np.float64).mean(axis=1) / 255.0
        hue = colorsys.rgb_to_hsv(*rgb)[0]
        diff = abs(hue - bg[i] / 10.0)
        errors.append(min(diff, 1.0 - diff))
    # Hue spacing is 0.1; the generator jitters by at most 0.02, stripes and noise add a little.
    assert np.quantile(errors, 0.95) < 0.04


@pytest.mark.parametrize("shortcut", [0.0, 0.8, 1.0])
def test_planted_shortcut_rate(shortcut, shapes_train):
    n = 2000
    y, bg = (shapes_train[1], shapes_train[3]) if shortcut == 0.8 else data.generate_shapes(n, seed=4, shortcut=shortcut)[1::2]
    planted = round(shortcut * n)
    # planted images always match; the others match by chance with probability 1/10.
    expected = (planted + 0.1 * (n - planted)) / n
    tolerance = 4 * math.sqrt(0.09 * (n - planted)) / n + 1e-12
    assert abs(np.mean(bg == y) - expected) <= tolerance


def test_shapes_are_distinct_classes():
    """A rotation/scale-invariant mask descriptor tells every pair of classes apart on new images."""
    _, y_fit, m_fit, _ = data.generate_shapes(1000, seed=21, shortcut=0.0)
    _, y_new, m_new, _ = data.generate_shapes(1000, seed=22, shortcut=0.0)
    d_fit, d_new = _mask_descriptor(m_fit), _mask_descriptor(m_new)
    scale = d_fit.std(axis=0)
    d_fit, d_new = d_fit / scale, d_new / scale
    centres = np.stack([d_fit[y_fit == k].mean(axis=0) for k in range(10)])
    for j in range(10):
        for k in range(j + 1, 10):
            sel = (y_new == j) | (y_new == k)
            to_j = ((d_new[sel] - centres[j]) ** 2).sum(axis=1)
            to_k = ((d_new[sel] - centres[k]) ** 2).sum(axis=1)
            accuracy = np.mean(np.where(to_j < to_k, j, k) == y_new[sel])
            assert accuracy > 0.7, (data.SHAPE_NAMES[j], data.SHAPE_NAMES[k], accuracy)  # identical: ~0.5


def _mask_descriptor(mask: np.ndarray) -> np.ndarray:
    """Fill ratio, radial histogram around the centroid, coverage of discs around it."""
    rows, cols = np.mgrid[0:32, 0:32]
    area = mask.sum(axis=(1, 2)).astype(np.float64)
    r0 = (mask * rows).sum(axis=(1, 2)) / area
    c0 = (mask * cols).sum(axis=(1, 2)) / area
    dist = np.sqrt((rows[None] - r0[:, None, None]) ** 2 + (cols[None] - c0[:, None, None]) ** 2)
    dmax = np.where(mask, dist, 0).max(axis=(1, 2))
    dn = dist / dmax[:, None, None]
    fill = area / (np.pi * dmax**2)
    hist = [((dn >= lo) & (dn < lo + 0.125) & mask).sum(axis=(1, 2)) / area for lo in np.arange(8) / 8]
    cover = [((dn < r) & mask).sum(axis=(1, 2)) / np.maximum(1, (dn < r).sum(axis=(1, 2))) for r in (0.3, 0.6, 0.9)]
    return np.column_stack([fill, *hist, *cover])


def test_generate_shapes_rejects_bad_arguments():
    with pytest.raises(ValueError, match="shortcut"):
        data.generate_shapes(10, seed=0, shortcut=1.5)
    with pytest.raises(ValueError, match="n = 0"):
        data.generate_shapes(0, seed=0, shortcut=0.5)


# ---------------------------------------------------------------------------------- shapes dataset


def test_shapes_cache_written_once_and_reused(tmp_path, small_shapes_opts, monkeypatch):
    root = tmp_path / ODD
    first = data.load_splits("shapes", root, val_fraction=0.2, split_seed=1, options=small_shapes_opts)
    cache = data.shapes_cache_path(root, small_shapes_opts)
    assert cache.is_file() and cache.parent == root / "shapes" and cache.name.startswith("shapes-")
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp files left behind

    def must_not_run(*args, **kwargs):
        raise AssertionError("generate_shapes called although the cache exists")

    monkeypatch.setattr(data, "generate_shapes", must_not_run)
    second = data.load_splits("shapes", root, val_fraction=0.2, split_seed=1, options=small_shapes_opts)
    for part in ("train", "val", "test"):
        a, b = getattr(first, part), getattr(second, part)
        for field in ("x", "y", "index", "mask", "bg_class"):
            assert np.array_equal(getattr(a, field), getattr(b, field))
    # Other options are another file, so they must generate again.
    other = dict(small_shapes_opts, shortcut=0.5)
    assert data.shapes_cache_path(root, other) != cache
    with pytest.raises(AssertionError, match="cache exists"):
        data.load_test("shapes", root, other)


def test_shapes_cache_corrupt_is_regenerated(tmp_path, small_shapes_opts):
    root = tmp_path / ODD
    good = data.load_test("shapes", root, small_shapes_opts)
    cache = data.shapes_cache_path(root, small_shapes_opts)
    cache.write_bytes(cache.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="generating it again"):
        again = data.load_test("shapes", root, small_shapes_opts)
    assert np.array_equal(good.x, again.x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load_test("shapes", root, small_shapes_opts)  # rewritten: reads cleanly now


def test_shapes_splits_content(tmp_path, small_shapes_opts):
    s = data.load_splits("shapes", tmp_path / ODD, val_fraction=0.2, split_seed=1, options=small_shapes_opts)
    assert s.info.name == "shapes" and s.info.num_classes == 10 and s.info.class_names == data.SHAPE_NAMES
    assert len(s.train) + len(s.val) == 300 and len(s.test) == 120
    assert np.array_equal(s.test.index, np.arange(120))
    for split in (s.train, s.val, s.test):
        assert split.mask is not None and split.mask.shape == (len(split), 32, 32)
        assert split.bg_class is not None and split.index.dtype == np.int64
    # Train and test come from different seeds.
    assert not np.array_equal(s.test.x[:10], s.train.x[:10])
    # Official train images are generate_shapes(n_train, seed=data_seed), positions = index.
    x, y, mask, bg = data.generate_shapes(300, seed=5, shortcut=0.8)
    for split in (s.train, s.val):
        assert np.array_equal(split.x, x[split.index]) and np.array_equal(split.y, y[split.index])
        assert np.array_equal(split.mask, mask[split.index]) and np.array_equal(split.bg_class, bg[split.index])
    # Test images carry no shortcut: background classes match labels only by chance.
    big = data.load_test("shapes", tmp_path / ODD, {"n_train": 100, "n_test": 3000, "data_seed": 5})
    assert abs(np.mean(big.bg_class == big.y) - 0.1) < 4 * math.sqrt(0.09 / 3000)


def test_mean_std_from_train_part(tmp_path, small_shapes_opts):
    s = data.load_splits("shapes", tmp_path / ODD, val_fraction=0.25, split_seed=2, options=small_shapes_opts)
    pixels = s.train.x.astype(np.float64) / 255.0
    for c in range(3):
        values = pixels[:, c].ravel()
        assert s.info.mean[c] == pytest.approx(values.mean(), abs=1e-12)
        assert s.info.std[c] == pytest.approx(math.sqrt(((values - values.mean()) ** 2).mean()), abs=1e-12)
    full = data.dataset_info("shapes", tmp_path / ODD, small_shapes_opts)
    all_train = np.concatenate([s.train.x, s.val.x]).astype(np.float64) / 255.0
    assert full.mean[0] == pytest.approx(all_train[:, 0].mean(), abs=1e-12)


# ------------------------------------------------------------------------------------------ splits


def test_split_stratified_disjoint_sorted():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, size=503)
    train, val = data.stratified_split(y, 0.15, split_seed=9)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(503))
    for cls in range(7):
        count = int(np.sum(y == cls))
        assert int(np.sum(y[val] == cls)) == max(1, round(0.15 * count))


def test_split_depends_only_on_split_seed():
    y = np.repeat(np.arange(10), 40)
    a = data.stratified_split(y, 0.2, split_seed=1)
    b = data.stratified_split(y, 0.2, split_seed=1)
    c = data.stratified_split(y, 0.2, split_seed=2)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    assert not np.array_equal(a[1], c[1])
    tiny = np.array([0, 1, 1, 1, 1])  # class 0 has a single image: it stays in train
    train, val = data.stratified_split(tiny, 0.25, split_seed=0)
    assert 0 in train and len(val) == 1 and tiny[val[0]] == 1


@pytest.mark.parametrize("bad", [0.0, -0.1, 0.51, 1.0, float("nan"), True, "0.2"])
def test_val_fraction_range(bad, tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        data.load_splits("shapes", tmp_path, val_fraction=bad, split_seed=0)


def test_load_splits_same_val_across_calls(tmp_path, small_shapes_opts):
    root = tmp_path / ODD
    a = data.load_splits("shapes", root, val_fraction=0.1, split_seed=7, options=small_shapes_opts)
    b = data.load_splits("shapes", root, val_fraction=0.1, split_seed=7, options=small_shapes_opts)
    c = data.load_splits("shapes", root, val_fraction=0.1, split_seed=8, options=small_shapes_opts)
    assert np.array_equal(a.val.index, b.val.index) and not np.array_equal(a.val.index, c.val.index)
    assert np.array_equal(np.bincount(a.val.y, minlength=10), np.full(10, 3))  # 10% of 30 per class


# ------------------------------------------------------------------------------------------- CIFAR


def _raw_rows(folder: Path, files: list[str], label_key: bytes) -> tuple[np.ndarray, list[int]]:
    rows, labels = [], []
    for name in files:
        with open(folder / name, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        rows.append(d[b"data"])
        labels.extend(d[label_key])
    return np.concatenate(rows), labels


def _check_pixels(split: data.Split, raw: np.ndarray, raw_labels: list[int], seed: int) -> None:
    """Pixel (c, r, k) of image i is raw[index[i], c*1024 + r*32 + k]; labels follow the index."""
    rng = np.random.default_rng(seed)
    assert split.x.dtype == np.uint8 and split.x.shape == (len(split), 3, 32, 32)
    assert split.y.dtype == np.int64 and split.index.dtype == np.int64
    for _ in range(300):
        i, c, r, k = int(rng.integers(len(split))), int(rng.integers(3)), int(rng.integers(32)), int(rng.integers(32))
        assert split.x[i, c, r, k] == raw[split.index[i], c * 1024 + r * 32 + k]
    assert [raw_labels[j] for j in split.index] == split.y.tolist()


def test_cifar10_loading(tmp_path):
    root = tmp_path / ODD
    folder = write_fake_cifar(root, "cifar10", n_train=103, n_test=37, seed=1)
    assert folder == root / "cifar-10-batches-py"
    s = data.load_splits("cifar10", root, val_fraction=0.2, split_seed=3)
    raw, labels = _raw_rows(folder, [f"data_batch_{b}" for b in range(1, 6)], b"labels")
    assert len(s.train) + len(s.val) == 103 and len(s.test) == 37
    _check_pixels(s.train, raw, labels, 0)
    _check_pixels(s.val, raw, labels, 1)
    raw_test, test_labels = _raw_rows(folder, ["test_batch"], b"labels")
    _check_pixels(s.test, raw_test, test_labels, 2)
    assert np.array_equal(s.test.index, np.arange(37)) and s.test.mask is None and s.test.bg_class is None
    assert s.info.class_names == tuple(f"fake_cifar10_{k}" for k in range(10)) and s.info.num_classes == 10
    info = data.dataset_info("cifar10", root)
    assert info.mean[1] == pytest.approx(raw[:, 1024:2048].astype(np.float64).mean() / 255.0, abs=1e-12)
    assert np.array_equal(data.load_test("cifar10", root).x, s.test.x)


def test_cifar100_loading(tmp_path):
    root = tmp_path / ODD
    folder = write_fake_cifar(root, "cifar100", n_train=250, n_test=120, seed=2)
    s = data.load_splits("cifar100", root, val_fraction=0.1, split_seed=0)
    raw, labels = _raw_rows(folder, ["train"], b"fine_labels")
    _check_pixels(s.train, raw, labels, 3)
    _check_pixels(s.val, raw, labels, 4)
    assert s.info.num_classes == 100 and s.info.class_names[37] == "fake_cifar100_37"
    assert set(s.val.y.tolist()) == set(range(100))  # stratified: every class has a val image
    raw_test, test_labels = _raw_rows(folder, ["test"], b"fine_labels")
    _check_pixels(s.test, raw_test, test_labels, 5)


def test_cifar_missing_folder_says_how_to_download(tmp_path):
    root = tmp_path / ODD
    with pytest.raises(data.DataError) as err:
        data.load_test("cifar100", root)
    text = str(err.value)
    assert "python launch.py --download cifar100" in text and "--data-root" in text
    assert "cifar-100-python" in text
    assert isinstance(err.value, ValueError)


def test_cifar_missing_file_named(tmp_path):
    root = tmp_path / ODD
    folder = write_fake_cifar(root, "cifar10", n_train=20, n_test=10)
    (folder / "data_batch_3").unlink()
    with pytest.raises(data.DataError, match="data_batch_3") as err:
        data.load_splits("cifar10", root, val_fraction=0.2, split_seed=0)
    assert "python launch.py --download cifar10" in str(err.value) and "--data-root" in str(err.value)


def test_cifar_truncated_file_named(tmp_path):
    root = tmp_path / ODD
    folder = write_fake_cifar(root, "cifar10", n_train=20, n_test=10)
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(data.DataError, match="test_batch"):
        data.load_test("cifar10", root)


def test_cifar_wrong_data_shape(tmp_path):
    root = tmp_path / ODD
    folder = write_fake_cifar(root, "cifar100", n_train=120, n_test=10)
    with open(folder / "test", "wb") as fh:
        pickle.dump({b"data": np.zeros((10, 100), np.uint8), b"fine_labels": [0] * 10}, fh)
    with pytest.raises(data.DataError, match="3072"):
        data.load_test("cifar100", root)


def test_download_uses_torchvision(tmp_path, monkeypatch):
    """download() calls torchvision's CIFAR10(root, train=..., download=True); here a stand-in."""
    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            write_fake_cifar(root, "cifar10", n_train=20, n_test=10)

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(CIFAR10=FakeCIFAR10, CIFAR100=None)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    root = tmp_path / ODD
    folder = data.download("cifar10", root)
    assert folder == root / "cifar-10-batches-py" and folder.is_dir()
    assert calls and all(c[0] == str(root) and c[2] is True for c in calls)
    assert {c[1] for c in calls} == {True, False}


# ------------------------------------------------------------------------------------------ errors


def test_unknown_dataset_lists_valid():
    with pytest.raises(ValueError) as err:
        data.load_test("mnist", ".")
    for name in ("mnist", "shapes", "cifar10", "cifar100"):
        assert name in str(err.value)


def test_unknown_option_lists_valid(tmp_path):
    with pytest.raises(ValueError) as err:
        data.load_test("shapes", tmp_path, {"n_trian": 100})
    text = str(err.value)
    assert "n_trian" in text and all(k in text for k in ("n_train", "n_test", "shortcut", "data_seed"))
    with pytest.raises(ValueError, match="'size'"):
        data.dataset_info("cifar10", tmp_path, {"size": 3})


@pytest.mark.parametrize("bad", [{"shortcut": 1.5}, {"n_train": 50}, {"n_test": 100.5}, {"data_seed": True}])
def test_bad_option_values(bad, tmp_path):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=f"shapes.{key}"):
        data.load_test("shapes", tmp_path, bad)


# ---------------------------------------------------------------- CIFAR batches that would run code


class _RunsCommand:
    """An object whose unpickling would run a shell command (pickle calls os.system(command))."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def _plant(path: Path, marker: Path, protocol: int) -> None:
    """Rewrite ``path`` (an official-format dict) with one extra key whose value would touch ``marker``."""
    import shlex

    with open(path, "rb") as fh:
        content = pickle.load(fh, encoding="bytes")  # the test's own file, written by fake_cifar
    content[b"extra"] = _RunsCommand(f"touch {shlex.quote(str(marker))}")
    with open(path, "wb") as fh:
        pickle.dump(content, fh, protocol=protocol)


def _refused(exc: BaseException, path: Path) -> str:
    msg = str(exc)
    assert "\n" not in msg and str(path) in msg, msg
    assert "posix.system" in msg and "refused" in msg and "numpy arrays" in msg, msg
    return msg


@pytest.mark.parametrize("protocol", [0, 2, 5])
@pytest.mark.parametrize("name", ["test_batch", "batches.meta", "data_batch_4"])
def test_cifar_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path, name, protocol):
    root = tmp_path / ODD
    folder = write_fake_cifar(root, "cifar10", n_train=30, n_test=20)
    marker = tmp_path / "it ran 'x'"
    _plant(folder / name, marker, protocol)
    with pytest.raises(data.DataError) as err:
        data.load_splits("cifar10", root, val_fraction=0.2, split_seed=0)  # what training reads
    _refused(err.value, folder / name)
    with pytest.raises(data.DataError) as err:
        data.load_test("cifar10", root)  # what gather reads
    _refused(err.value, folder / name)
    if name == "test_batch":  # the test file alone: --download cifar10-c's label check, OOD sets
        with pytest.raises(data.DataError) as err:
            data.load_cifar_test_file("cifar10", root)
        _refused(err.value, folder / name)
    assert not marker.exists()


def test_cifar100_meta_that_would_run_code_is_refused(tmp_path):
    root = tmp_path / ODD
    folder = write_fake_cifar(root, "cifar100", n_train=200, n_test=20)
    marker = tmp_path / "ran"
    _plant(folder / "meta", marker, 2)
    with pytest.raises(data.DataError) as err:
        data.load_test("cifar100", root)
    _refused(err.value, folder / "meta")
    assert not marker.exists()


def test_gather_reads_a_planted_test_batch_without_running_it(tmp_path):
    """gather's test-image loader: the report goes on without images, the note names the file."""
    from cnnstress import gather
    from cnnstress.grid import expand

    root = tmp_path / ODD
    folder = write_fake_cifar(root, "cifar10", n_train=30, n_test=20)
    marker = tmp_path / "ran"
    _plant(folder / "test_batch", marker, 2)
    spec = expand({"name": "g", "base": {"dataset": "cifar10", "model": "simple_cnn", "epochs": 1}},
                  data_root=root).runs[0]
    test = gather._load_test_data(spec)
    assert test.images is None and str(folder / "test_batch") in test.note and "posix.system" in test.note
    assert not marker.exists()
    # the same folder without the planted key: read, and said how
    write_fake_cifar(root, "cifar10", n_train=30, n_test=20)
    test = gather._load_test_data(spec)
    assert test.images is not None and test.verified.endswith(data.RESTRICTED_SAID)


def test_cifar_globals_other_than_numpy_arrays_are_refused(tmp_path):
    """Not only os.system: any global outside the format (collections.OrderedDict, types.SimpleNamespace)."""
    import collections

    root = tmp_path / ODD
    folder = write_fake_cifar(root, "cifar10", n_train=30, n_test=20)
    with open(folder / "test_batch", "rb") as fh:
        content = pickle.load(fh, encoding="bytes")
    for value, refused in ((collections.OrderedDict(a=1), "collections.OrderedDict"),
                           (types.SimpleNamespace(), "types.SimpleNamespace")):
        with open(folder / "test_batch", "wb") as fh:
            pickle.dump({**content, b"extra": value}, fh, protocol=2)
        with pytest.raises(data.DataError, match=refused):
            data.load_test("cifar10", root)
    # _codecs.encode is admitted for str -> latin-1 only (how protocol 2 writes bytes)
    with pytest.raises(pickle.UnpicklingError):
        data._latin1_encode("x", "rot13")


# A Python 2 pickle as the official files are (cPickle, protocol 2, numpy 1): str as SHORT_BINSTRING,
# the array through numpy.core.multiarray._reconstruct. {'data': uint8 [[0, 1, 2], [3, 4, 5]], 'labels': [1, 2]}
_PY2_BATCH = (b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03K\x00"
              b"\x85U\x01b\x87Rq\x04(K\x01K\x02K\x03\x86cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87Rq\x06(K\x03U\x01|NNN"
              b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x06\x00\x01\x02\x03\x04\x05tbU\x06labelsq\x07]q\x08(K\x01"
              b"K\x02eu.")


def test_python2_numpy1_pickle_reads_through_the_restricted_unpickler(tmp_path):
    path = tmp_path / ODD / "test_batch"
    path.parent.mkdir()
    path.write_bytes(_PY2_BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy.core deprecation warning either
        content, official = data._read_pickle(path, "cifar10", tmp_path)
    assert official is False and content[b"labels"] == [1, 2]
    np.testing.assert_array_equal(content[b"data"], np.arange(6, dtype=np.uint8).reshape(2, 3))


def test_official_checksums_are_the_published_ones():
    """torchvision/datasets/cifar.py's train_list, test_list and meta md5s (the 7 + 3 files)."""
    assert data.OFFICIAL_MD5 == {
        "cifar10": {
            "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
        "cifar100": {
            "train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
    }
    for dataset, source in data._CIFAR.items():  # one checksum per file the loader reads
        assert set(data.OFFICIAL_MD5[dataset]) == {*source.train_files, source.test_file, source.meta_file}


def test_files_matching_the_official_checksums_are_said_so(tmp_path, monkeypatch):
    """Dispatch only: the table is pointed at this folder's own md5s (the real files are 160 MB)."""
    import hashlib

    root = tmp_path / ODD
    folder = write_fake_cifar(root, "cifar10", n_train=30, n_test=20)
    s = data.load_splits("cifar10", root, val_fraction=0.2, split_seed=0)
    assert s.note == (f"cifar10 in {folder}: batches.meta, data_batch_1, data_batch_2, data_batch_3, data_batch_4, "
                      f"data_batch_5, test_batch: {data.RESTRICTED_SAID}")
    table = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in data.OFFICIAL_MD5["cifar10"]}
    table["data_batch_2"] = data.OFFICIAL_MD5["cifar10"]["data_batch_2"]  # one file stays foreign
    monkeypatch.setitem(data.OFFICIAL_MD5, "cifar10", table)
    s = data.load_splits("cifar10", root, val_fraction=0.2, split_seed=0)
    assert s.note == (f"cifar10 in {folder}: batches.meta, data_batch_1, data_batch_3, data_batch_4, data_batch_5, "
                      f"test_batch: {data.OFFICIAL_SAID}; data_batch_2: {data.RESTRICTED_SAID}")
    assert data.load_test("cifar10", root).note == s.note
    assert data.load_cifar_test_file("cifar10", root).note == f"cifar10 in {folder}: test_batch: {data.OFFICIAL_SAID}"
    # an official checksum does not let a planted global through: every file goes through the restricted unpickler
    marker = tmp_path / "ran"
    _plant(folder / "test_batch", marker, 2)
    table["test_batch"] = hashlib.md5((folder / "test_batch").read_bytes()).hexdigest()
    with pytest.raises(data.DataError, match="posix.system"):
        data.load_test("cifar10", root)
    assert not marker.exists()
