"""Tests of cnnstress.oodsets (out-of-distribution image sets) and the data.py hooks they use."""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_cifar import write_fake_cifar
from PIL import Image

from cnnstress import data, oodsets
from cnnstress.data import DataError

REPO = Path(__file__).resolve().parents[1]
SPACED = "ood data's dir"  # a data root with a space and a quote


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------- data.py stays the same


@pytest.mark.parametrize(
    "n, seed, shortcut, expected",
    [
        # recorded from generate_shapes before the shapes-table parameter was added; 1100 images
        # span two generation chunks
        (1100, 3, 0.8, "7ff4137649d7ed529b841543dfc490353941cf344df8f58761e3fe9afe63366c"),
        (37, 11, 0.0, "eb0b93014ce93bc1df699a5e54677b44e27dffdba77fa6d23fed07e5b48ed5e4"),
    ],
)
def test_generate_shapes_output_is_unchanged(n, seed, shortcut, expected):
    out = data.generate_shapes(n, seed=seed, shortcut=shortcut)
    assert _digest(out) == expected
    assert _digest(data.generate_shapes(n, seed=seed, shortcut=shortcut, shapes=data.SHAPES)) == expected


def test_generate_shapes_rejects_bad_tables():
    with pytest.raises(ValueError, match="1 to 10"):
        data.generate_shapes(5, seed=0, shortcut=0.0, shapes=())
    with pytest.raises(ValueError, match="1 to 10"):
        data.generate_shapes(5, seed=0, shortcut=0.0, shapes=data.SHAPES + oodsets.NOVEL_SHAPES)


def test_import_does_not_pull_in_torch():
    code = "import sys, cnnstress.oodsets; assert 'torch' not in sys.modules and 'torchvision' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# ------------------------------------------------------------------------------- generated sets


@pytest.mark.parametrize("name", ["shapes_novel", "uniform_noise", "smooth_noise"])
def test_generated_sets_shape_dtype_and_determinism(name, tmp_path):
    x, attrs = oodsets.load_ood_set(name, "shapes", tmp_path, n=60, seed=4)
    assert x.dtype == np.uint8 and x.shape == (60, 3, 32, 32) and x.flags.c_contiguous
    test = data.generate_shapes(3, seed=0, shortcut=0.0)[0]
    assert x.shape[1:] == test.shape[1:]  # the layout of Split.x
    again, attrs_again = oodsets.load_ood_set(name, "shapes", tmp_path, n=60, seed=4)
    assert np.array_equal(x, again) and attrs == attrs_again
    other, _ = oodsets.load_ood_set(name, "shapes", tmp_path, n=60, seed=5)
    assert not np.array_equal(x, other)
    assert attrs["name"] == name and attrs["count"] == 60 and attrs["seed"] == 4 and attrs["dataset"] == "shapes"
    assert attrs["kind"] == ("near" if name == "shapes_novel" else "far")
    for value in attrs.values():  # fit for HDF5 attributes
        assert isinstance(value, (str, int)) and not isinstance(value, bool)
    assert not list(tmp_path.iterdir())  # nothing written under the data root


def test_noise_sets_for_cifar_have_the_same_layout(tmp_path):
    for name in ("uniform_noise", "smooth_noise"):
        x, _ = oodsets.load_ood_set(name, "cifar100", tmp_path, n=5, seed=0)
        assert x.shape == (5, 3, 32, 32) and x.dtype == np.uint8
    # the set's own name is mixed into the seed: two sets with one seed do not share draws
    a, _ = oodsets.load_ood_set("uniform_noise", "shapes", tmp_path, n=5, seed=0)
    b = np.random.default_rng(0).integers(0, 256, size=a.shape, dtype=np.uint8)
    assert not np.array_equal(a, b)


def test_noise_statistics(tmp_path):
    u, _ = oodsets.load_ood_set("uniform_noise", "shapes", tmp_path, n=200, seed=1)
    s, _ = oodsets.load_ood_set("smooth_noise", "shapes", tmp_path, n=200, seed=1)
    assert abs(u.mean() - 127.5) < 1.0 and abs(u.std() - 73.9) < 1.0
    counts = np.bincount(u.reshape(-1), minlength=256)
    assert counts.min() > 0.7 * counts.mean()
    # smooth noise: every image spans 0..255, and neighbouring pixels differ far less than in
    # i.i.d. noise (about 85 grey levels there)
    assert (s.reshape(200, -1).min(1) == 0).all() and (s.reshape(200, -1).max(1) == 255).all()
    diff_s = np.abs(np.diff(s.astype(np.int16), axis=3)).mean()
    diff_u = np.abs(np.diff(u.astype(np.int16), axis=3)).mean()
    assert diff_u > 80 and diff_s < 0.15 * diff_u


def test_default_count(tmp_path):
    x, attrs = oodsets.load_ood_set("uniform_noise", "shapes", tmp_path)
    assert x.shape[0] == oodsets.DEFAULT_COUNT == attrs["count"]


# ----------------------------------------------------------------------------------- shapes_novel


def test_shapes_novel_differs_from_class_images_only_in_the_shape():
    """Same generator seed: the novel table changes the shape and nothing else (backgrounds,
    positions, colours and sensor noise are bitwise the same outside both shapes)."""
    x_cls, _, m_cls, bg_cls = data.generate_shapes(300, seed=9, shortcut=0.0)
    x_nov, y_nov, m_nov, bg_nov = data.generate_shapes(300, seed=9, shortcut=0.0, shapes=oodsets.NOVEL_SHAPES)
    assert np.array_equal(bg_cls, bg_nov)
    assert np.bincount(y_nov).tolist() == [60] * len(oodsets.NOVEL_SHAPES)
    # pixels whose anti-aliased coverage is zero in both shapes: the masks mark coverage >= 0.5,
    # and a thin tip can cover part of a pixel two pixels from the mask, so grow both by two
    grown = m_cls | m_nov
    for _ in range(2):
        grown = grown | np.roll(grown, 1, 1) | np.roll(grown, -1, 1)
        grown = grown | np.roll(grown, 1, 2) | np.roll(grown, -1, 2)
    outside = ~grown[:, None].repeat(3, axis=1)
    assert outside.mean() > 0.5
    assert np.array_equal(x_cls[outside], x_nov[outside])
    assert not np.array_equal(x_cls, x_nov)


def _border_hue_value(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: hue and value of the median colour of the 1-pixel border (background)."""
    border = np.concatenate([x[:, :, 0, :], x[:, :, -1, :], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], axis=2)
    med = np.median(border, axis=2) / 255.0
    hv = np.array([colorsys.rgb_to_hsv(*rgb)[::2] for rgb in med])
    return hv[:, 0], hv[:, 1]


def test_shapes_novel_shares_background_statistics_with_the_test_set(tmp_path):
    n = 1000
    novel, attrs = oodsets.load_ood_set("shapes_novel", "shapes", tmp_path, n=n, seed=0)
    assert attrs["shapes"] == ",".join(oodsets.NOVEL_SHAPE_NAMES)
    test = data.generate_shapes(n, seed=data._test_seed(0), shortcut=0.0)[0]  # the default test split
    hue_n, val_n = _border_hue_value(novel)
    hue_t, val_t = _border_hue_value(test)
    # the 10 background hue classes are uniform in both (hue jitter is +-0.02 around k/10)
    hist_n = np.bincount(np.rint(hue_n * 10).astype(int) % 10, minlength=10) / n
    hist_t = np.bincount(np.rint(hue_t * 10).astype(int) % 10, minlength=10) / n
    assert 0.5 * np.abs(hist_n - hist_t).sum() < 0.08  # total variation; sampling noise ~0.05
    assert hist_n.min() > 0.06 and hist_t.min() > 0.06
    assert abs(val_n.mean() - val_t.mean()) < 0.03
    # overall pixel statistics (background + shape) close as well
    assert np.abs(novel.mean(axis=(0, 2, 3)) - test.mean(axis=(0, 2, 3))).max() < 6.0
    # dark and light backgrounds in the same proportion (about one half)
    assert abs((val_n < 0.55).mean() - (val_t < 0.55).mean()) < 0.07


_GRID = np.linspace(-1.3, 1.3, 105)
_V, _U = np.meshgrid(_GRID, _GRID, indexing="ij")


def _max_iou_over_poses(novel_fn, class_fn) -> float:
    """Largest IoU of the novel shape with the class shape rotated (5 degree steps) and scaled."""
    a = novel_fn(_U, _V)
    best = 0.0
    for angle in np.arange(0, 360, 5) * math.pi / 180:
        c, s = math.cos(angle), math.sin(angle)
        for scale in (0.85, 1.0, 1.15):
            b = class_fn((_U * c + _V * s) / scale, (_V * c - _U * s) / scale)
            best = max(best, float((a & b).sum() / (a | b).sum()))
    return best


def test_novel_shapes_are_none_of_the_classes_under_any_rotation_or_scale():
    # the check can see a look-alike: an X is the plus rotated by 45 degrees
    def x_cross(u, v):
        return data._plus((u + v) / math.sqrt(2), (v - u) / math.sqrt(2))

    assert _max_iou_over_poses(x_cross, data._plus) > 0.9
    worst = {
        novel: max(_max_iou_over_poses(fn, cls_fn) for _, cls_fn in data.SHAPES) for novel, fn in oodsets.NOVEL_SHAPES
    }
    assert max(worst.values()) < 0.6, worst
    # and the novel shapes are not one another either (closest pair: hourglass vs letter_h, 0.62)
    for i, (_, fa) in enumerate(oodsets.NOVEL_SHAPES):
        for _, fb in oodsets.NOVEL_SHAPES[i + 1:]:
            assert _max_iou_over_poses(fa, fb) < 0.7


def test_novel_masks_differ_from_every_class_mask_at_identical_params():
    """One-shape tables: the same seed gives the same pose, so the masks compare shape to shape."""
    n = 40
    class_masks = {name: data.generate_shapes(n, seed=2, shortcut=0.0, shapes=((name, fn),))[2] for name, fn in data.SHAPES}
    for novel, fn in oodsets.NOVEL_SHAPES:
        m = data.generate_shapes(n, seed=2, shortcut=0.0, shapes=((novel, fn),))[2]
        # as visible as the class shapes: at least 20 pixels each
        assert m.sum(axis=(1, 2)).min() >= 20
        for name, cm in class_masks.items():
            iou = (m & cm).sum(axis=(1, 2)) / (m | cm).sum(axis=(1, 2))
            assert iou.mean() < 0.6, (novel, name, iou.mean())


# ------------------------------------------------------------------------------------------ CIFAR


def test_cifar100_as_ood_for_cifar10_from_official_files(tmp_path):
    root = tmp_path / SPACED
    assert oodsets.available_sets("cifar10", root) == ["uniform_noise", "smooth_noise"]
    write_fake_cifar(root, "cifar100", n_train=20, n_test=30, seed=1)
    assert oodsets.available_sets("cifar10", root) == ["cifar100", "uniform_noise", "smooth_noise"]
    expected = data.load_test("cifar100", root).x
    x, attrs = oodsets.load_ood_set("cifar100", "cifar10", root, n=10, seed=0)
    assert x.dtype == np.uint8 and x.shape == (10, 3, 32, 32)
    assert np.array_equal(x, expected[:10])
    assert attrs["count"] == 10 and attrs["source_count"] == 30 and attrs["kind"] == "near"
    assert "images 0..9" in attrs["source"]
    everything, attrs = oodsets.load_ood_set("cifar100", "cifar10", root, n=1000, seed=0)
    assert np.array_equal(everything, expected) and attrs["count"] == 30
    # only the test file is read: no train file needed
    (root / "cifar-100-python" / "train").unlink()
    assert np.array_equal(oodsets.load_ood_set("cifar100", "cifar10", root, n=10)[0], expected[:10])


def test_cifar10_as_ood_for_cifar100(tmp_path):
    root = tmp_path / SPACED
    write_fake_cifar(root, "cifar10", n_train=20, n_test=12, seed=2)
    assert oodsets.available_sets("cifar100", root) == ["cifar10", "uniform_noise", "smooth_noise"]
    x, attrs = oodsets.load_ood_set("cifar10", "cifar100", root, n=5)
    assert np.array_equal(x, data.load_test("cifar10", root).x[:5]) and attrs["dataset"] == "cifar100"


def test_available_sets_for_shapes(tmp_path):
    assert oodsets.available_sets("shapes", tmp_path) == ["shapes_novel", "uniform_noise", "smooth_noise"]
    assert oodsets.sets_for("cifar10") == ["cifar100", "uniform_noise", "smooth_noise"]
    with pytest.raises(ValueError, match="unknown dataset"):
        oodsets.available_sets("mnist", tmp_path)


# ----------------------------------------------------------------------------------------- errors


def test_unknown_set_lists_the_valid_ones(tmp_path):
    with pytest.raises(DataError, match="unknown OOD set 'svhn'; valid sets for shapes: shapes_novel, uniform_noise, smooth_noise"):
        oodsets.load_ood_set("svhn", "shapes", tmp_path)
    with pytest.raises(DataError, match="'shapes_novel' is not for dataset 'cifar10'; valid sets for cifar10: cifar100, "):
        oodsets.load_ood_set("shapes_novel", "cifar10", tmp_path)
    with pytest.raises(DataError, match="valid sets for cifar10"):
        oodsets.load_ood_set("cifar10", "cifar10", tmp_path)


def test_missing_cifar_names_the_file_and_the_download_command(tmp_path):
    root = tmp_path / SPACED
    with pytest.raises(DataError) as info:
        oodsets.load_ood_set("cifar100", "cifar10", root, n=5)
    message = str(info.value)
    assert str(root / "cifar-100-python" / "test") in message
    assert "python launch.py --download cifar100 --data-root" in message
    assert "'" + str(root).replace("'", "'\"'\"'") + "'" in message  # shell-quoted, space and quote kept


def test_corrupt_cifar_file_is_a_data_error(tmp_path):
    root = tmp_path / SPACED
    folder = write_fake_cifar(root, "cifar100", n_train=10, n_test=10)
    (folder / "test").write_bytes(b"\x80\x02not a pickle")
    assert oodsets.available_sets("cifar10", root)[0] == "cifar100"  # present, not read
    with pytest.raises(DataError, match="corrupt or truncated"):
        oodsets.load_ood_set("cifar100", "cifar10", root)


@pytest.mark.parametrize("n", [0, -3, 2.5, True, "10"])
def test_bad_count(n, tmp_path):
    with pytest.raises(ValueError, match="n = "):
        oodsets.load_ood_set("uniform_noise", "shapes", tmp_path, n=n)


def test_bad_seed(tmp_path):
    with pytest.raises(ValueError, match="seed = "):
        oodsets.load_ood_set("uniform_noise", "shapes", tmp_path, n=3, seed=-1)


def test_load_cifar_test_file_rejects_other_datasets(tmp_path):
    with pytest.raises(ValueError, match="not a CIFAR dataset"):
        data.load_cifar_test_file("shapes", tmp_path)


# ------------------------------------------------------------------------------ other image sides


@pytest.mark.parametrize("side", [16, 64, 128])
def test_noise_sets_at_the_dataset_side(side, tmp_path):
    for dataset in ("imagefolder", "arrays"):
        assert oodsets.sets_for(dataset) == ["uniform_noise", "smooth_noise"]  # what your own images get
    u, attrs = oodsets.load_ood_set("uniform_noise", "imagefolder", tmp_path, n=40, seed=2, size=side)
    assert u.shape == (40, 3, side, side) and u.dtype == np.uint8 and attrs["image_size"] == side
    s, attrs = oodsets.load_ood_set("smooth_noise", "arrays", tmp_path, n=40, seed=2, size=side)
    assert s.shape == (40, 3, side, side) and attrs["image_size"] == side and attrs["grid"] == oodsets.SMOOTH_GRID
    # the same 4x4 grid upsampled to the side (torch's bilinear, half-pixel centres), stretched to 0..255
    import torch
    import torch.nn.functional as F

    grid = oodsets._set_rng("smooth_noise", 2).random((40, 3, oodsets.SMOOTH_GRID, oodsets.SMOOTH_GRID))
    up = F.interpolate(torch.from_numpy(grid), size=(side, side), mode="bilinear", align_corners=False).numpy()
    lo, hi = up.min(axis=(1, 2, 3), keepdims=True), up.max(axis=(1, 2, 3), keepdims=True)
    ref = (up - lo) / (hi - lo) * 255.0
    assert np.abs(s.astype(np.float64) - ref).max() <= 0.5 + 1e-6


def test_sets_at_32_px_are_unchanged_by_the_size_argument(tmp_path):
    for name in ("uniform_noise", "smooth_noise", "shapes_novel"):
        a, attrs = oodsets.load_ood_set(name, "shapes", tmp_path, n=20, seed=3)
        b, attrs_b = oodsets.load_ood_set(name, "shapes", tmp_path, n=20, seed=3, size=32)
        assert np.array_equal(a, b) and attrs == attrs_b and "image_size" not in attrs


def test_a_32_px_set_at_another_side_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"^OOD set 'shapes_novel' has 32x32 images but shapes's are 64x64; allowed: "):
        oodsets.load_ood_set("shapes_novel", "shapes", tmp_path, n=4, seed=0, size=64)


# ---------------------------------------------------------------------------------- your own sets


def _own_folder(folder: Path, n: int = 5) -> Path:
    """Images of several sizes and modes, flat and in a sub-folder (PNG and JPEG)."""
    rng = np.random.default_rng(1)
    (folder / "more shapes").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(folder / f"img {i}.png")
        Image.fromarray(rng.integers(0, 256, (33, 31), dtype=np.uint8), "L").save(folder / "more shapes" / f"b{i}.jpg")
    return folder


def _own_grid(folder: Path, sets: list[str], dataset: str = 'dataset = "shapes"\ndataset_options = { n_train = 200, n_test = 100, shortcut = 0.8 }\n',
              samples: int = 6) -> Path:
    from grids import tiny_grid_text

    text = tiny_grid_text("ownood", epochs=1, n_train=200, n_test=100, lean=True).replace(
        '[variants.flip]\naugment = ["flip"]\n', "")
    text = text.replace('dataset = "shapes"\ndataset_options = { n_train = 200, n_test = 100, shortcut = 0.8 }\n', dataset)
    text += f"ood = true\nood_sets = {json.dumps(sets)}\nood_samples = {samples}\n"
    path = folder / "ood grid.toml"
    path.write_text(text)
    return path


def test_own_folder_set_is_decoded_like_an_imagefolder_and_cached(weird_dir):
    folder = _own_folder(weird_dir / "my 'textures'")
    files = sorted([*folder.glob("*.png"), *(folder / "more shapes").glob("*.jpg")])
    entry = {"set": "folder_x", "kind": "folder", "path": str(folder), "sha256": oodsets.own_set_digest("folder", folder)}
    x, attrs = oodsets.load_own_set(entry, "shapes", 32, 100)
    expected = np.stack([data._decode(f, 32) for f in files])  # the imagefolder decode, file by file
    assert x.dtype == np.uint8 and x.shape == (10, 3, 32, 32) and np.array_equal(x, expected)
    assert attrs["count"] == 10 and attrs["kind"] == "own" and "my 'textures'" in attrs["description"]
    caches = list((folder / data.CACHE_DIR).glob("ood-32-*.npz"))
    assert len(caches) == 1
    again, _ = oodsets.load_own_set(entry, "shapes", 32, 4)  # read from the cache (not walked as images)
    assert np.array_equal(again, expected[:4])
    assert oodsets.own_set_digest("folder", folder) == entry["sha256"]  # the cache is not part of the content


def test_own_npz_set_is_nhwc_to_nchw_and_refuses_another_size(weird_dir):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    path = weird_dir / "far away.npz"
    np.savez(path, x=x)
    entry = {"set": "npz_far_away", "kind": "npz", "path": str(path), "sha256": oodsets.own_set_digest("npz", path)}
    got, attrs = oodsets.load_own_set(entry, "cifar10", 32, 5)
    assert np.array_equal(got, x[:5].transpose(0, 3, 1, 2)) and attrs["source_count"] == 7
    np.savez(path, x=rng.integers(0, 256, (7, 28, 28, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"far away\.npz: x images are 28x28; allowed: 32x32"):
        oodsets.check_own_set(entry, 32)
    with pytest.raises(DataError, match="changed since the grid was read"):  # content differs from the recorded one
        oodsets.load_own_set(entry, "cifar10", 32, 5)


def test_own_set_names_are_readable_and_unique():
    taken: set[str] = set()
    names = []
    for kind, path in (("folder", "/a/My Textures"), ("folder", "/b/my-textures"), ("npz", "/c/Far.Away.npz")):
        names.append(oodsets.own_set_name(kind, path, taken))
        taken.add(names[-1])
    assert names == ["folder_my_textures", "folder_my_textures_2", "npz_far_away"]


def test_grid_records_resolved_paths_and_content_not_location(weird_dir, tmp_path):
    import shutil

    from cnnstress.grid import load_grid

    _own_folder(weird_dir / "textures")
    np.savez(weird_dir / "set.npz", x=np.zeros((3, 32, 32, 3), np.uint8))
    grid = _own_grid(weird_dir, ["folder:textures", "npz:set.npz", "uniform_noise"])
    spec = load_grid(grid).runs[0]
    own = spec.stress.ood["own"]
    assert [e["set"] for e in own] == ["folder_textures", "npz_set"] and spec.stress.ood["sets"] == ["uniform_noise"]
    assert own[0]["path"] == str(weird_dir / "textures") and own[1]["path"] == str(weird_dir / "set.npz")
    assert all("path" not in e and "set" not in e for e in spec.identity()["stress"]["ood"]["own"])
    # the same files elsewhere: the same runs
    moved = tmp_path / "elsewhere"
    shutil.copytree(weird_dir, moved)
    assert load_grid(moved / "ood grid.toml").runs[0].run_id == spec.run_id
    # one image changed: a new run
    img = moved / "textures" / "img 0.png"
    Image.fromarray(np.full((40, 50, 3), 7, np.uint8)).save(img)
    assert load_grid(moved / "ood grid.toml").runs[0].run_id != spec.run_id
    # a grid without sets of your own keeps its run ids (no "own" key at all)
    plain = load_grid(_own_grid(weird_dir, ["uniform_noise"])).runs[0]
    assert "own" not in plain.stress.ood


def test_own_sets_work_beside_any_dataset(weird_dir):
    from cnnstress.grid import load_grid

    np.savez(weird_dir / "set.npz", x=np.zeros((3, 32, 32, 3), np.uint8))
    grid = _own_grid(weird_dir, ["npz:set.npz"], dataset='dataset = "cifar10"\n')
    spec = load_grid(grid).runs[0]
    assert spec.stress.ood == {"sets": [], "samples": 6, "own": [
        {"set": "npz_set", "kind": "npz", "path": str(weird_dir / "set.npz"),
         "sha256": hashlib.sha256((weird_dir / "set.npz").read_bytes()).hexdigest()}]}


def _launch(grid: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch.py"), "--grid", str(grid), *args], cwd=grid.parent,
                          capture_output=True, text=True, timeout=300)


def _corrupt(folder: Path) -> str:
    (folder / "more shapes" / "b2.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return "b2.jpg: not a readable image"


def _rgba(folder: Path) -> str:
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(folder / "img 1.png")
    return "img 1.png: image mode RGBA; allowed: RGB or L"


@pytest.mark.parametrize("damage", [_corrupt, _rgba])
def test_a_broken_own_folder_is_one_line_at_dry_run_and_launch(weird_dir, damage):
    folder = _own_folder(weird_dir / "textures")
    says = damage(folder)
    grid = _own_grid(weird_dir, ["folder:textures"])
    for args in (("--dry-run",), ("--cluster", "local", "--out", str(weird_dir / "out"))):
        res = _launch(grid, *args)
        err = res.stderr.strip()
        assert res.returncode == 2 and "\n" not in err and "Traceback" not in res.stderr, res.stderr
        assert "[stress].ood_sets" in err and says in err, err
    assert not (weird_dir / "out").exists()


@pytest.mark.parametrize("entry, make, says", [
    ("folder:nowhere", None, "nowhere: no such folder"),
    ("folder:empty", "empty", "empty: no images in it"),
    ("npz:nothing.npz", None, "nothing.npz: no such file"),
    ("npz:wrong.npz", "wrong", "wrong.npz: x is uint8 (4, 32, 32); allowed: uint8 (K, H, W, 3)"),
    ("npz:wrong.npz", "nox", "wrong.npz: no array 'x'"),
    ("npz:wrong.npz", "small", "wrong.npz: x images are 16x16; allowed: 32x32"),
    ("npz:wrong.npz", "garbage", "wrong.npz: not a readable .npz"),
])
def test_a_bad_own_set_is_one_line_naming_it(weird_dir, entry, make, says):
    if make == "empty":
        (weird_dir / "empty" / "sub").mkdir(parents=True)
        (weird_dir / "empty" / "notes.txt").write_text("no images here")
    elif make == "wrong":
        np.savez(weird_dir / "wrong.npz", x=np.zeros((4, 32, 32), np.uint8))
    elif make == "nox":
        np.savez(weird_dir / "wrong.npz", images=np.zeros((4, 32, 32, 3), np.uint8))
    elif make == "small":
        np.savez(weird_dir / "wrong.npz", x=np.zeros((4, 16, 16, 3), np.uint8))
    elif make == "garbage":
        (weird_dir / "wrong.npz").write_bytes(b"PK\x03\x04 truncated")
    res = _launch(_own_grid(weird_dir, [entry]), "--dry-run")
    err = res.stderr.strip()
    assert res.returncode == 2 and "\n" not in err and "Traceback" not in res.stderr, res.stderr
    assert "[stress].ood_sets" in err and says in err, err


def test_own_sets_are_scored_and_named_in_the_report(weird_dir):
    import h5py

    from cnnstress.grid import load_grid

    _own_folder(weird_dir / "my textures")
    np.savez(weird_dir / "far.npz", x=np.random.default_rng(3).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8))
    grid = _own_grid(weird_dir, ["folder:my textures", "npz:far.npz"])
    out = weird_dir / "out"
    res = _launch(grid, "--cluster", "local", "--out", str(out), "--data-root", str(REPO / "scratch" / "test-data"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    spec = load_grid(grid, out_root=out).runs[0]
    with h5py.File(out / "ownood" / "runs" / spec.run_id / "results.h5", "r") as r:
        assert set(r["ood"]) == {"folder_my_textures", "npz_far"}  # only your own: no built-in set besides
        assert r["ood/folder_my_textures/logits"].shape == (6, 10) and r["ood/npz_far/logits"].shape == (6, 10)
    html = (out / "ownood" / "report" / "index.html").read_text()
    assert "folder_my_textures (your own set, 6 images): your folder" in html and "my textures" in html
