"""Your own images: an ImageFolder tree or an .npz of arrays, trained end to end, cached, and every
broken file refused at launch and by --dry-run as one line naming it."""

from __future__ import annotations

import html
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnstress import data
from cnnstress.grid import GridError, load_grid

from conftest import REPO, tiny_grid_text

CLASSES = ("cat", "dog", "zebra")


def launch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CNNSTRESS_FAULT"}
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def one_line(res: subprocess.CompletedProcess) -> str:
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and err.count("\n") == 0 and err, res.stderr
    return err


def make_folder(root: Path, per_class: int = 6, size: tuple[int, int] = (40, 36), mode: str = "RGB") -> Path:
    """root/{train,test}/<class>/*.png: each class a distinct colour plus noise (learnable)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", max(2, per_class // 2))):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                base = np.zeros((size[1], size[0], 3), np.uint8)
                base[..., c] = 200
                img = np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).convert(mode).save(folder / f"img {i:02d}'.png")
    return root


def grid_text(dataset_line: str, name: str = "own", lean: bool = True) -> str:
    text = tiny_grid_text(name, epochs=1, lean=lean, batch_size=8).replace('[variants.flip]\naugment = ["flip"]\n', "")
    return text.replace('dataset = "shapes"\ndataset_options = { n_train = 400, n_test = 200, shortcut = 0.8 }\n',
                        dataset_line)


@pytest.fixture
def folder(weird_dir: Path) -> Path:
    return make_folder(weird_dir / "my \"images\"")


def folder_grid(weird_dir: Path, root: str, lean: bool = True) -> Path:
    path = weird_dir / "own grid.toml"
    path.write_text(grid_text(f'dataset = "imagefolder"\ndataset_options = {{ root = {json.dumps(root)} }}\n', lean=lean))
    return path


# ------------------------------------------------------------------------------------ ImageFolder


def test_test_index_is_torchvisions_imagefolder_order(folder):
    from torchvision.datasets import ImageFolder

    (folder / "test" / "dog" / "sub").mkdir()  # nested folders are walked as torchvision walks them
    Image.new("RGB", (33, 33)).save(folder / "test" / "dog" / "sub" / "a.png")
    (folder / "test" / "dog" / "notes.txt").write_text("not an image")
    split = data.load_test("imagefolder", folder.parent, {"root": str(folder)})
    reference = ImageFolder(str(folder / "test"))
    assert reference.classes == list(CLASSES)
    assert split.y.tolist() == [label for _, label in reference.samples]
    assert split.index.tolist() == list(range(len(reference.samples)))
    first = np.asarray(Image.open(reference.samples[0][0]).convert("RGB").resize((35, 32), Image.BILINEAR))
    assert split.x.shape == (len(reference.samples), 3, 32, 32) and split.x.dtype == np.uint8
    assert np.array_equal(split.x[0], first[:, 2:34].transpose(2, 0, 1))  # 40x36 -> 35x32, centre crop from x = round(1.5)
    info = data.dataset_info("imagefolder", folder.parent, {"root": str(folder)})
    assert info.class_names == CLASSES and info.num_classes == 3


def test_cache_is_reused_and_rebuilt_when_a_file_changes(folder):
    opts = {"root": str(folder)}
    first = data.load_test("imagefolder", folder, opts)
    [cache] = (folder / data.CACHE_DIR).glob("test-32-*.npz")
    mtime = cache.stat().st_mtime_ns
    again = data.load_test("imagefolder", folder, opts)
    assert cache.stat().st_mtime_ns == mtime and np.array_equal(first.x, again.x)  # read, not rewritten
    changed = folder / "test" / "cat" / "img 00'.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(changed)
    os.utime(changed, ns=(1, 1))
    rebuilt = data.load_test("imagefolder", folder, opts)
    assert np.array_equal(rebuilt.x[0], np.broadcast_to(np.array([1, 2, 3], np.uint8)[:, None, None], (3, 32, 32)))
    assert len(list((folder / data.CACHE_DIR).glob("test-32-*.npz"))) == 2  # a new name; the old one is unused


def test_a_damaged_cache_is_decoded_again_with_a_warning(folder):
    opts = {"root": str(folder)}
    first = data.load_test("imagefolder", folder, opts)
    [cache] = (folder / data.CACHE_DIR).glob("test-32-*.npz")
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.warns(UserWarning, match="image cache .* is unreadable"):
        again = data.load_test("imagefolder", folder, opts)
    assert np.array_equal(first.x, again.x)


def test_an_imagefolder_trains_and_gathers_end_to_end_with_a_relative_root(folder, weird_dir):
    grid = folder_grid(weird_dir, "my \"images\"", lean=False)  # relative to the grid file's folder, not the cwd
    out = weird_dir / "o u t"
    res = launch("--grid", str(grid), "--cluster", "debug", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    [rd] = (out / "own" / "runs").iterdir()
    spec = json.loads((rd / "spec.json").read_text())
    assert spec["dataset"]["params"]["root"] == str(folder) and spec["num_classes"] == 3
    summary = json.loads((out / "own" / "report" / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["done"]
    # gather and --status re-read the sweep's copy of the grid: the root still resolves to the same folder
    assert load_grid(out / "own" / "grid.toml", out_root=out).runs[0].run_id == rd.name
    status = launch("--grid", str(out / "own" / "grid.toml"), "--out", str(out), "--status")
    assert status.returncode == 0, status.stderr


@pytest.mark.parametrize("size", [8, 15, 129, 256])
def test_image_size_outside_16_to_128_is_one_line_naming_the_key(folder, weird_dir, size):
    grid = weird_dir / "g.toml"
    grid.write_text(grid_text(f'dataset = "imagefolder"\ndataset_options = {{ root = {json.dumps(str(folder))}, '
                              f"image_size = {size} }}\n"))
    with pytest.raises(GridError) as info:
        load_grid(grid, out_root=weird_dir / "o")
    line = str(info.value)
    assert "\n" not in line and "image_size" in line and "16" in line and "128" in line and str(size) in line, line


@pytest.mark.parametrize("size", [16, 24, 64, 128])
def test_image_sizes_16_to_128_are_accepted(folder, weird_dir, size):
    grid = weird_dir / "g.toml"
    grid.write_text(grid_text(f'dataset = "imagefolder"\ndataset_options = {{ root = {json.dumps(str(folder))}, '
                              f"image_size = {size} }}\n"))
    [run] = load_grid(grid, out_root=weird_dir / "o").runs
    assert run.dataset.params["image_size"] == size


def _corrupt(folder: Path) -> Path:
    bad = folder / "train" / "dog" / "img 03'.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    return bad


def _garbage(folder: Path) -> Path:
    bad = folder / "test" / "cat" / "zz.jpg"
    bad.write_bytes(b"not a jpeg at all")
    return bad


def _empty_class(folder: Path) -> Path:
    empty = folder / "train" / "dog"
    for f in empty.iterdir():
        f.unlink()
    return empty


def _mixed_modes(folder: Path) -> Path:
    grey = folder / "test" / "zebra" / "img 01'.png"
    Image.open(grey).convert("L").save(grey)
    return grey


def _bad_mode(folder: Path) -> Path:
    rgba = folder / "test" / "zebra" / "img 01'.png"
    Image.open(rgba).convert("RGBA").save(rgba)
    return rgba


@pytest.mark.parametrize("damage, says", [
    (_corrupt, "not a readable image"),
    (_garbage, "not a readable image"),
    (_empty_class, "empty class folder"),
    (_mixed_modes, "image mode L, but"),
    (_bad_mode, "image mode RGBA; allowed: RGB or L"),
])
def test_a_broken_imagefolder_is_one_line_at_launch_and_dry_run(folder, weird_dir, damage, says):
    named = damage(folder)
    grid = folder_grid(weird_dir, str(folder))
    out = weird_dir / "o u t"
    for extra in (("--dry-run",), ("--cluster", "debug")):
        res = launch("--grid", str(grid), "--out", str(out), *extra)
        line = one_line(res)
        assert res.returncode == 2 and str(named) in line and says in line, line
    assert not (out / "own" / "runs").exists()  # nothing written, nothing run


def test_a_missing_root_is_one_line_naming_it(weird_dir):
    grid = folder_grid(weird_dir, "nowhere")
    res = launch("--grid", str(grid), "--out", str(weird_dir / "o"), "--dry-run")
    line = one_line(res)
    assert res.returncode == 2 and f"{weird_dir / 'nowhere'}: no such folder" in line


def test_only_one_class_folder_is_refused(weird_dir):
    root = make_folder(weird_dir / "r")
    for split in ("train", "test"):
        for name in CLASSES[1:]:
            for f in (root / split / name).iterdir():
                f.unlink()
            (root / split / name).rmdir()
    with pytest.raises(GridError, match="1 class folder.*allowed: at least 2"):
        load_grid(folder_grid(weird_dir, str(root)), out_root=weird_dir / "o")


# ----------------------------------------------------------------------------------------- arrays


def make_npz(path: Path, **change) -> Path:
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8),
        "y_train": np.arange(24) % 3,
        "x_test": rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8),
        "y_test": np.arange(9) % 3,
        "class_names": np.array(list(CLASSES)),
        "mask_test": rng.random((9, 32, 32)) < 0.3,
    }
    arrays.update(change)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_arrays_load_as_nchw_with_names_and_masks(weird_dir):
    path = make_npz(weird_dir / "my data.npz")
    test = data.load_test("arrays", weird_dir, {"path": str(path)})
    with np.load(path) as npz:
        assert np.array_equal(test.x, npz["x_test"].transpose(0, 3, 1, 2)) and np.array_equal(test.mask, npz["mask_test"])
    assert data.dataset_info("arrays", weird_dir, {"path": str(path)}).class_names == CLASSES


def test_arrays_train_end_to_end(weird_dir):
    make_npz(weird_dir / "my data.npz", class_names=None)
    grid = weird_dir / "arrays grid.toml"
    grid.write_text(grid_text('dataset = "arrays"\ndataset_options = { path = "my data.npz" }\n', name="arr"))
    out = weird_dir / "o u t"
    res = launch("--grid", str(grid), "--cluster", "debug", "--out", str(out), "--no-gather")
    assert res.returncode == 0, res.stderr[-3000:]
    [rd] = (out / "arr" / "runs").iterdir()
    assert json.loads((rd / "spec.json").read_text())["num_classes"] == 3


@pytest.mark.parametrize("change, says", [
    ({"x_train": np.zeros((24, 32, 32, 3), np.float32)}, "x_train is float32 (24, 32, 32, 3); allowed: uint8"),
    ({"x_test": np.zeros((9, 3, 32, 32), np.uint8)}, "x_test is uint8 (9, 3, 32, 32); allowed: uint8 (N, H, W, 3)"),
    ({"x_test": np.zeros((9, 64, 64, 3), np.uint8)}, "x_train images are 32x32 but x_test's are 64x64; allowed: one size"),
    ({"x_test": np.zeros((9, 32, 48, 3), np.uint8)}, "x_test images are 32x48; allowed: square, S x S with S in 16..128"),
    ({"x_test": np.zeros((9, 8, 8, 3), np.uint8)}, "x_test images are 8x8; allowed: square, S x S with S in 16..128"),
    ({"x_train": np.zeros((24, 160, 160, 3), np.uint8)}, "x_train images are 160x160; allowed: square, S x S with S in 16..128"),
    ({"y_test": np.arange(9) % 3 + 1}, "y_test holds labels in [1, 3]; allowed: integers in [0, 3)"),
    ({"y_train": -(np.arange(24) % 3)}, "y_train holds labels in [-2, 0]"),
    ({"y_train": np.zeros(23, np.int64)}, "y_train is int64 (23,); allowed: integers of shape (24,)"),
    ({"y_test": None}, "no array 'y_test'"),
    ({"mask_test": np.zeros((9, 32, 32), np.uint8)}, "mask_test is uint8"),
])
def test_a_bad_npz_is_one_line_at_dry_run(weird_dir, change, says):
    path = make_npz(weird_dir / "bad.npz", **change)
    grid = weird_dir / "g.toml"
    grid.write_text(grid_text(f'dataset = "arrays"\ndataset_options = {{ path = {json.dumps(str(path))} }}\n'))
    res = launch("--grid", str(grid), "--out", str(weird_dir / "o"), "--dry-run")
    line = one_line(res)
    assert res.returncode == 2 and str(path) in line and says in line, line


def test_a_missing_npz_is_one_line(weird_dir):
    grid = weird_dir / "g.toml"
    grid.write_text(grid_text('dataset = "arrays"\ndataset_options = { path = "gone.npz" }\n'))
    with pytest.raises(GridError, match=r"gone.npz: no such file"):
        load_grid(grid, out_root=weird_dir / "o")


# ------------------------------------------------------------------------------ image sides 16..128


def test_image_size_is_the_option_the_arrays_or_32(folder, weird_dir):
    assert data.image_size("imagefolder", weird_dir, {"root": str(folder), "image_size": 48}) == 48
    assert data.image_size("imagefolder", weird_dir, {"root": str(folder)}) == 32
    assert data.image_size("shapes", weird_dir) == 32 and data.image_size("cifar10", weird_dir) == 32
    rng = np.random.default_rng(2)
    path = make_npz(weird_dir / "big arrays.npz", x_train=rng.integers(0, 256, (24, 64, 64, 3), dtype=np.uint8),
                    x_test=rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8), mask_test=rng.random((9, 64, 64)) < 0.3)
    assert data.image_size("arrays", weird_dir, {"path": str(path)}) == 64
    splits = data.load_splits("arrays", weird_dir, val_fraction=0.2, split_seed=0, options={"path": str(path)})
    assert splits.train.x.shape[1:] == (3, 64, 64) and splits.test.mask.shape == (9, 64, 64)
    with np.load(path) as npz:
        assert np.array_equal(splits.test.x, npz["x_test"].transpose(0, 3, 1, 2))
    bad = make_npz(weird_dir / "bad mask.npz", x_train=rng.integers(0, 256, (24, 64, 64, 3), dtype=np.uint8),
                   x_test=rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8))  # mask_test stays 32x32
    with pytest.raises(data.DataError, match=r"mask_test is bool \(9, 32, 32\); allowed: bool \(9, 64, 64\)"):
        data.check_arrays(bad)


def test_imagefolder_decodes_at_the_image_size(folder):
    split = data.load_test("imagefolder", folder, {"root": str(folder), "image_size": 64})
    assert split.x.shape[1:] == (3, 64, 64)
    path = folder / "test" / CLASSES[0] / "img 00'.png"  # 40x36 -> shorter side 64: 71x64, centre crop
    first = np.asarray(Image.open(path).convert("RGB").resize((71, 64), Image.BILINEAR))
    left = int(round((71 - 64) / 2.0))
    assert np.array_equal(split.x[0], first[:, left:left + 64].transpose(2, 0, 1))
    assert list((folder / data.CACHE_DIR).glob("test-64-*.npz"))


def _mislabelled_folder(root: Path, side: int = 72, per_class: int = 4) -> Path:
    """Train: each class a colour; test: each class drawn in the next class's colour (so the model
    fails on it, and the report has failure cases to show)."""
    rng = np.random.default_rng(5)
    for split, n, shift in (("train", per_class, 0), ("test", 2, 1)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = np.zeros((side, side + 8, 3), np.uint8)
                img[..., (c + shift) % 3] = 200
                img[side // 4: side // 2, side // 4: side // 2] = 255  # a square for Grad-CAM to find
                img = np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / name / f"img {i:02d}'.png")
    return root


def test_a_64_px_imagefolder_trains_is_stress_tested_and_reported(weird_dir):
    import h5py
    from rich.console import Console

    from cnnstress import gather, store
    from cnnstress.worker import run, run_dir_for

    root = _mislabelled_folder(weird_dir / "six ty four")
    grid_path = weird_dir / "sixty four.toml"
    grid_path.write_text(f"""
name = "sixty-four"
[base]
dataset = "imagefolder"
dataset_options = {{ root = {json.dumps(str(root))}, image_size = 64 }}
model = "simple_cnn"
model_options = {{ width = 4 }}
epochs = 1
checkpoint_every_min = 0
batch_size = 4
eval_batch_size = 100
optimizer = {{ name = "adam", lr = 0.003 }}
augment = ["crop", "flip", "cutout"]
[variants.baseline]
[grid]
seed = [1]
[stress]
corruptions = ["gaussian_blur", "pixelate", "fog"]
severities = [5]
faithfulness_samples = 6
train_embedding_samples = 0
ood = true
ood_samples = 8
[report]
confidence_threshold = 0.01
""")
    grid = load_grid(grid_path, out_root=weird_dir / "o u t")
    [spec] = grid.runs
    assert run(spec, echo=False)["status"] == "done"
    rd = run_dir_for(spec)
    store.validate_results(rd / "results.h5")
    with h5py.File(rd / "results.h5", "r") as f:
        assert int(f.attrs["image_size"]) == 64
        # simple_cnn's block3 map is the image side / 4: 16x16 at 64 px (8x8 at 32)
        assert f["test/gradcam/pred"].shape == (6, 16, 16) and f["test/gradcam/true"].shape == (6, 16, 16)
        for name in ("gaussian_blur", "pixelate", "fog"):
            assert f[f"stress/{name}/5/logits"].shape == (6, 3)
        assert f["ood/uniform_noise/logits"].shape == (8, 3) and f["ood/smooth_noise/logits"].shape == (8, 3)
        assert f["faithfulness/deletion_gradcam"].shape[0] == 6
        described = json.loads(f.attrs["ood_sets"])
    assert described["uniform_noise"]["image_size"] == 64
    log = (rd / "log.txt").read_text()
    assert "Grad-CAM at block3 (16, 16)" in log and "spatial parameters scaled from 32 to 64 px" in log

    # figures=False: the mosaics at 64 px are drawn in tests/test_report.py (drawing all 15 here doubles the time)
    index = gather.gather(Path(spec.paths.out_root) / spec.sweep, grid=grid,
                          console=Console(file=io.StringIO(), width=200), figures=False)
    page = html.unescape(index.read_text(encoding="utf-8"))
    assert "The corrupted test sets were generated at 64 px: their parameters were CIFAR-10-C's at 32 px, the " \
           "spatial ones scaled to 64 px" in page
    assert "before upsampling to the images' 64×64" in page
    summary = json.loads((index.parent / "summary.json").read_text())
    assert summary["canonical_cases"], "the mislabelled test images are canonical failures"
    # their Grad-CAM maps were upsampled to the 64 px images (16x16 -> 64x64) without an error
    assert "Canonical failure cases" in page and "no image is a high-confidence failure" not in page


def test_24_px_arrays_run_every_generated_corruption_and_the_sanity_check(weird_dir):
    import h5py
    from rich.console import Console

    from cnnstress import gather
    from cnnstress.worker import run, run_dir_for

    rng = np.random.default_rng(3)

    def images(n: int, labels: np.ndarray) -> np.ndarray:
        x = rng.integers(0, 60, (n, 24, 24, 3), dtype=np.uint8)
        x[np.arange(n), :, :, labels] += 150  # class = the brightest channel
        return x

    y_train, y_test = np.arange(24) % 3, np.arange(9) % 3
    path = make_npz(weird_dir / "twenty four.npz", x_train=images(24, y_train), y_train=y_train,
                    x_test=images(9, y_test), y_test=y_test, mask_test=rng.random((9, 24, 24)) < 0.3)
    grid_path = weird_dir / "g.toml"
    grid_path.write_text(grid_text(f'dataset = "arrays"\ndataset_options = {{ path = {json.dumps(str(path))} }}\n',
                                   name="twenty-four")
                         .replace("corruptions = []", 'corruptions = ["all"]\nseverities = [5]\nsanity = true\n'
                                                      "sanity_samples = 3"))
    grid = load_grid(grid_path, out_root=weird_dir / "o u t")
    [spec] = grid.runs
    assert spec.stress.corruptions == list(data.catalog.CORRUPTIONS)
    assert run(spec, echo=False)["status"] == "done"
    with h5py.File(run_dir_for(spec) / "results.h5", "r") as f:
        assert int(f.attrs["image_size"]) == 24
        assert f["test/gradcam/pred"].shape == (9, 6, 6)  # simple_cnn's block3: 24 / 4
        for name in data.catalog.CORRUPTIONS:
            assert np.isfinite(f[f"stress/{name}/5/logits"][()]).all()
        assert any(k.startswith("sanity") for k in f)
    index = gather.gather(Path(spec.paths.out_root) / spec.sweep, grid=grid,
                          console=Console(file=io.StringIO(), width=200), figures=False)
    assert "generated at 24 px" in html.unescape(index.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------- parallel decode


def _mixed_files(root: Path) -> list[Path]:
    """PNG and JPEG, RGB and L, landscape, portrait and square, some already at 32."""
    rng = np.random.default_rng(5)
    root.mkdir(parents=True)
    files = []
    for i, (w, h, mode, ext) in enumerate([(40, 36, "RGB", "png"), (31, 77, "L", "png"), (32, 32, "RGB", "jpg"),
                                            (90, 45, "L", "jpg"), (33, 32, "RGB", "webp")] * 3):
        path = root / f"im {i:02d}.{ext}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode).save(path)
        files.append(path)
    return files


@pytest.mark.parametrize("pool", ["thread", "process", "auto"])
def test_parallel_decode_is_the_serial_decode_byte_for_byte(weird_dir, pool):
    files = _mixed_files(weird_dir / "mixed")
    serial = np.stack([data._decode(f, 32) for f in files])
    got = data.decode_images(files, 32, pool=pool, workers=3)
    assert got.dtype == np.uint8 and got.shape == serial.shape and np.array_equal(got, serial)


def test_parallel_decode_names_the_first_bad_file(weird_dir):
    files = _mixed_files(weird_dir / "mixed")
    files[7].write_bytes(b"\x89PNG\r\n\x1a\n broken")
    files[11].write_bytes(b"broken too")
    for pool in ("thread", "process"):
        with pytest.raises(data.DataError, match=rf"{files[7].name}: not a readable image"):
            data.decode_images(files, 32, pool=pool, workers=2)


def test_runs_that_start_together_decode_once_and_share_the_cache(weird_dir, monkeypatch):
    import threading
    import time

    files = _mixed_files(weird_dir / "shared")
    calls = []
    real = data.decode_images

    def slow_decode(fs, size, **kw):
        calls.append(len(fs))
        time.sleep(0.3)  # long enough for the other reader to find no cache and wait for the lock
        return real(fs, size, **kw)

    monkeypatch.setattr(data, "decode_images", slow_decode)
    out: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: out.append(data.decode_cached(weird_dir / "shared", "x", 32, files)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [len(files)] and len(out) == 3 and all(np.array_equal(o, out[0]) for o in out)
    cache = weird_dir / "shared" / data.CACHE_DIR
    assert len(list(cache.glob("x-32-*.npz"))) == 1 and not list(cache.glob("*.tmp"))


def test_a_read_only_folder_decodes_without_lock_or_cache(weird_dir, monkeypatch):
    files = _mixed_files(weird_dir / "ro")
    monkeypatch.setattr(data, "_write_atomic_npz", lambda *a: (_ for _ in ()).throw(PermissionError(13, "denied")))
    real_open = os.open

    def no_lock(path, *a, **kw):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "denied", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(os, "open", no_lock)
    with pytest.warns(UserWarning, match="could not cache decoded images"):
        x = data.decode_cached(weird_dir / "ro", "x", 32, files)
    assert np.array_equal(x, np.stack([data._decode(f, 32) for f in files]))


def test_the_process_pool_works_from_a_script_without_a_main_guard(weird_dir):
    """multiprocessing's spawn and forkserver run the calling script's top level again in each child
    (here: the decode again, forever); the pool's fresh interpreters do not."""
    files = _mixed_files(weird_dir / "unguarded")
    script = weird_dir / "my script.py"
    script.write_text(f"import sys, json\nsys.path.insert(0, {str(REPO)!r})\nimport torch\nfrom pathlib import Path\n"
                      "from cnnstress import data\n"
                      f"files = [Path(p) for p in {json.dumps([str(f) for f in files])}]\n"
                      "x = data.decode_images(files, 32, pool='process', workers=2)\n"
                      "print('same' if (x == __import__('numpy').stack([data._decode(f, 32) for f in files])).all() else 'differs')\n")
    res = subprocess.run([sys.executable, str(script)], cwd=weird_dir, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "same", res.stderr[-2000:]
