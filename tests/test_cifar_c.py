"""Tests for cnnstress.cifar_c: the official CIFAR-10-C / CIFAR-100-C reader on small files in the
published layout (a fake test set of N images -> blocks of N), and what goes wrong with them.

``write_fake_cifar_c`` is imported by the grid, worker and report tests too.
"""

from __future__ import annotations

import math
import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest

from cnnstress import cifar_c, data
from cnnstress.data import DataError

from conftest import loaded_by
from fake_cifar import write_fake_cifar


def fake_image_block(n: int, name: str, severity: int) -> np.ndarray:
    """(n, 32, 32, 3) uint8 that tells corruption, severity and image apart (the value at [i, 0, 0, c]
    is i + 7 severity + 3 c + the name's index, modulo 256, so a block mix-up shows)."""
    k = cifar_c.CORRUPTIONS.index(name)
    rng = np.random.default_rng(1000 * k + severity)
    block = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    block[:, 0, 0, :] = ((np.arange(n)[:, None] + 7 * severity + 3 * np.arange(3)[None, :] + k) % 256).astype(np.uint8)
    return block


def write_fake_cifar_c(root: Path, dataset: str = "cifar10", names: tuple[str, ...] | list[str] = cifar_c.CORRUPTIONS,
                       labels: np.ndarray | None = None) -> Path:
    """``<root>/CIFAR-10-C`` (or -100-) in the published layout for the fake clean test set under
    ``root`` (write_fake_cifar first) or for ``labels``: labels.npy five times the test labels as
    uint8, and one (5 N, 32, 32, 3) uint8 file per name."""
    if labels is None:
        labels = data.load_cifar_test_file(dataset, root).y
    n = labels.shape[0]
    folder = cifar_c.folder(dataset, root)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "labels.npy", np.tile(labels.astype(np.uint8), 5))
    for name in names:
        np.save(folder / f"{name}.npy", np.concatenate([fake_image_block(n, name, s) for s in cifar_c.SEVERITIES]))
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "data \"root\" it's"
    write_fake_cifar(r, "cifar10", n_train=50, n_test=40, seed=1)
    return r


# ------------------------------------------------------------------------------------------- names


def test_names_are_the_published_ones():
    assert len(cifar_c.BENCHMARK_CORRUPTIONS) == 15 and len(cifar_c.EXTRA_CORRUPTIONS) == 4
    assert len(set(cifar_c.CORRUPTIONS)) == 19
    assert set(cifar_c.BENCHMARK_CORRUPTIONS) == {
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
        "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"}
    assert set(cifar_c.EXTRA_CORRUPTIONS) == {"speckle_noise", "gaussian_blur", "spatter", "saturate"}
    s10, s100 = cifar_c.SETS["cifar10-c"], cifar_c.SETS["cifar100-c"]
    assert (s10.url, s10.md5, s10.folder) == ("https://zenodo.org/record/2535967/files/CIFAR-10-C.tar",
                                              "56bf5dcef84df0e2308c6dcbcbbd8499", "CIFAR-10-C")
    assert (s100.url, s100.md5, s100.folder) == ("https://zenodo.org/record/3555552/files/CIFAR-100-C.tar",
                                                 "11f0ed0f1191edbf9fa23466ae6021d3", "CIFAR-100-C")
    with pytest.raises(ValueError, match="cifar10, cifar100"):
        cifar_c.official_set("shapes")


def test_reference_curve_is_robustbench_standard():
    ref = cifar_c.REFERENCE_CIFAR10C
    assert [round(100 * a, 1) for a in ref["accuracy"]] == [86.9, 81.3, 74.9, 67.6, 56.5]
    assert np.mean(ref["accuracy"]) == pytest.approx(ref["mean_accuracy"], abs=5e-5)
    assert "RobustBench" in ref["label"] and "Standard" in ref["source"]


def test_module_is_numpy_only():
    assert loaded_by("cnnstress.cifar_c") == []


# ----------------------------------------------------------------------------------------- reading


def test_load_corruption_returns_the_severity_block_in_split_layout(root):
    write_fake_cifar_c(root, names=["fog", "jpeg_compression"])
    test = data.load_cifar_test_file("cifar10", root)
    for name in ("fog", "jpeg_compression"):
        for s in (1, 3, 5):
            x = cifar_c.load_corruption("cifar10", root, name, s)
            assert x.dtype == np.uint8 and x.shape == test.x.shape == (40, 3, 32, 32) and x.flags.c_contiguous
            np.testing.assert_array_equal(x, fake_image_block(40, name, s).transpose(0, 3, 1, 2))
    # explicit labels give the same, without the clean file
    np.testing.assert_array_equal(cifar_c.load_corruption("cifar10", root, "fog", 2, test_labels=test.y),
                                  cifar_c.load_corruption("cifar10", root, "fog", 2))


def test_missing_files_name_the_file_and_the_download_command(root):
    with pytest.raises(DataError) as e:
        cifar_c.load_corruption("cifar10", root, "snow", 1)
    msg = str(e.value)
    assert "python launch.py --download cifar10-c" in msg and "labels.npy" in msg
    assert shlex.quote(str(root)) in msg
    write_fake_cifar_c(root, names=["fog"])
    with pytest.raises(DataError, match=r"snow\.npy is missing.*--download cifar10-c"):
        cifar_c.load_corruption("cifar10", root, "snow", 1)
    assert cifar_c.missing_files("cifar10", root, ["fog", "snow"]) == [cifar_c.corruption_file("cifar10", root, "snow")]


def test_a_truncated_file_is_a_clear_error(root):
    folder = write_fake_cifar_c(root, names=["fog"])
    path = folder / "fog.npy"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"fog\.npy is truncated: \d+ bytes.*--download cifar10-c"):
        cifar_c.load_corruption("cifar10", root, "fog", 5)
    path.write_bytes(b"not a numpy file at all")
    with pytest.raises(DataError, match=r"fog\.npy is not a readable \.npy file"):
        cifar_c.load_corruption("cifar10", root, "fog", 1)


def test_labels_that_are_not_the_test_labels_are_refused(root):
    folder = write_fake_cifar_c(root, names=["fog"])
    labels = np.load(folder / "labels.npy")
    wrong = labels.copy()
    wrong[2 * 40 + 5] = (wrong[2 * 40 + 5] + 1) % 10  # severity 3, test image 5
    np.save(folder / "labels.npy", wrong)
    with pytest.raises(DataError, match="labels of severity 3 differ from the test labels \\(first at test image 5"):
        cifar_c.load_corruption("cifar10", root, "fog", 1)
    # files written for another test set (other size) are refused too
    np.save(folder / "labels.npy", np.tile(labels[:30], 5))
    with pytest.raises(DataError, match="holds 150 labels but the test split has 40 images"):
        cifar_c.load_corruption("cifar10", root, "fog", 1)


def test_images_of_another_shape_or_dtype_are_refused(root):
    folder = write_fake_cifar_c(root, names=["fog"])
    np.save(folder / "fog.npy", np.zeros((5 * 40, 32, 32, 3), dtype=np.float32))
    with pytest.raises(DataError, match=r"holds float32 \(200, 32, 32, 3\), expected uint8 \(200, 32, 32, 3\)"):
        cifar_c.load_corruption("cifar10", root, "fog", 1)
    np.save(folder / "fog.npy", np.zeros((5 * 40, 3, 32, 32), dtype=np.uint8))  # CHW: not the published layout
    with pytest.raises(DataError, match="expected uint8"):
        cifar_c.load_corruption("cifar10", root, "fog", 1)


def test_bad_name_or_severity(root):
    write_fake_cifar_c(root, names=["fog"])
    with pytest.raises(ValueError, match="unknown official corruption 'jpeg'.*jpeg_compression"):
        cifar_c.load_corruption("cifar10", root, "jpeg", 1)
    for sev in (0, 6, True, 2.0):
        with pytest.raises(ValueError, match="severity"):
            cifar_c.load_corruption("cifar10", root, "fog", sev)


def test_check_files_reads_headers_and_says_what_it_compared(root, tmp_path):
    write_fake_cifar_c(root)
    said = cifar_c.check_files("cifar10", root)
    assert "19 corruptions x 5 severities of 40 images" in said and "labels match cifar10's test split" in said
    # without the clean dataset the labels are only compared with each other
    other = tmp_path / "only C"
    write_fake_cifar_c(other, labels=data.load_cifar_test_file("cifar10", root).y)
    said = cifar_c.check_files("cifar10", other)
    assert "not compared" in said and "--download cifar10" in said


def test_cifar100_layout(tmp_path):
    root = tmp_path / "c100"
    write_fake_cifar(root, "cifar100", n_train=200, n_test=120, seed=2)
    write_fake_cifar_c(root, "cifar100", names=["saturate"])
    assert cifar_c.folder("cifar100", root).name == "CIFAR-100-C"
    x = cifar_c.load_corruption("cifar100", root, "saturate", 4)
    np.testing.assert_array_equal(x, fake_image_block(120, "saturate", 4).transpose(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------- download


def test_download_uses_torchvision_with_the_published_url_and_md5(root, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, download_root, extract_root=None, filename=None, md5=None, remove_finished=False):
        calls.append((url, Path(download_root), filename, md5))
        write_fake_cifar_c(Path(download_root))

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    folder, said = cifar_c.download("cifar10-c", root)
    assert calls == [("https://zenodo.org/record/2535967/files/CIFAR-10-C.tar", root, "CIFAR-10-C.tar",
                      "56bf5dcef84df0e2308c6dcbcbbd8499")]
    assert folder == root / "CIFAR-10-C" and "labels match" in said
    cifar_c.download("cifar10-c", root)  # already there and in order: nothing fetched
    assert len(calls) == 1
    (folder / "spatter.npy").write_bytes(b"\x93NUMPY")  # damaged: fetched again
    cifar_c.download("cifar10-c", root)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="cifar10-c, cifar100-c"):
        cifar_c.download("cifar10", root)


def test_launch_download_cifar10_c(root, monkeypatch, capsys):
    """python launch.py --download cifar10-c: fetched through torchvision's helper, checked, and said."""
    import torchvision.datasets.utils as tv_utils

    from cnnstress import launcher

    def fake_download(url, download_root, extract_root=None, filename=None, md5=None, remove_finished=False):
        write_fake_cifar_c(Path(download_root))

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    assert launcher.main(["--download", "cifar10-c", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "labels match cifar10's test split" in out and "cifar10-c is in" in out and "CIFAR-10-C" in out

    def failing(*a, **k):
        raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", failing)
    assert launcher.main(["--download", "cifar100-c", "--data-root", str(root)]) == 2
    assert "downloading cifar100-c into" in capsys.readouterr().err


# ------------------------------------------------------------------------- the check at launch


def _official_grid(tmp_path: Path) -> Path:
    grid = tmp_path / "my 'grid'.toml"
    grid.write_text('name = "g"\n[base]\ndataset = "cifar10"\nmodel = "simple_cnn"\nepochs = 1\n'
                    '[stress]\nsource = "official"\ncorruptions = ["fog", "spatter"]\n')
    return grid


def _launch_check(grid_path: Path, root: Path) -> str:
    """launcher.missing_files, the function launch and --dry-run call, on the grid's runs."""
    from cnnstress import launcher
    from cnnstress.grid import load_grid

    return launcher.missing_files(load_grid(grid_path, data_root=root))


def _launch(grid_path: Path, root: Path, tmp_path: Path, *extra: str) -> tuple[int, str]:
    """launch.py in a subprocess (--cluster local): its exit status and stderr."""
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run([sys.executable, "launch.py", "--grid", str(grid_path), "--data-root", str(root),
                          "--out", str(tmp_path / "o u t"), "--cluster", "local", *extra],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    return out.returncode, out.stderr


def test_launch_and_dry_run_refuse_damaged_files_in_one_line(root, tmp_path):
    grid = _official_grid(tmp_path)
    folder = write_fake_cifar_c(root, names=["fog", "spatter"])
    assert _launch_check(grid, root) == ""
    fog = folder / "fog.npy"
    good = fog.read_bytes()
    cases = {
        "truncated": (lambda: fog.write_bytes(good[:-1]), r"fog\.npy is truncated: \d+ bytes"),
        "bytes appended": (lambda: fog.write_bytes(good + b"\0"), r"fog\.npy has \d+ bytes, 1 more than its header"),
        "wrong shape": (lambda: np.save(fog, np.zeros((200, 32, 32, 1), np.uint8)),
                        r"fog\.npy holds uint8 \(200, 32, 32, 1\), expected uint8 \(200, 32, 32, 3\)"),
        "too few images": (lambda: np.save(fog, np.zeros((199, 32, 32, 3), np.uint8)), r"fog\.npy holds uint8 \(199,"),
        "wrong dtype": (lambda: np.save(fog, np.zeros((200, 32, 32, 3), np.int16)), r"fog\.npy holds int16"),
        "header damaged (tokenize.TokenError)": (lambda: fog.write_bytes(good[:8] + bytes([40]) + good[9:]),
                                                 r"fog\.npy is not a readable \.npy file \(TokenError"),
    }
    for what, (damage, said) in cases.items():
        damage()
        msg = _launch_check(grid, root)
        assert "\n" not in msg and re.search(said, msg) and "--download cifar10-c" in msg, (what, msg)
        fog.write_bytes(good)
    labels = folder / "labels.npy"
    good_labels = labels.read_bytes()
    np.save(labels, np.zeros((200, 2), np.uint8))
    assert "labels.npy holds uint8 (200, 2), expected integer labels" in _launch_check(grid, root)
    np.save(labels, np.zeros(200, np.float32))
    assert "labels.npy holds float32" in _launch_check(grid, root)
    labels.write_bytes(good_labels)
    # through launch.py: exit 2 and one line on stderr, launching or dry-running, nothing written
    fog.write_bytes(good[:8] + bytes([40]) + good[9:])
    for extra in ((), ("--dry-run",)):
        rc, err = _launch(grid, root, tmp_path, *extra)
        assert rc == 2 and err.strip().count("\n") == 0 and "Traceback" not in err, err
        assert str(fog) in err and "not a readable .npy file" in err and "--download cifar10-c" in err
    assert not (tmp_path / "o u t").exists()
    fog.write_bytes(good)
    assert _launch(grid, root, tmp_path, "--dry-run")[0] == 0


@pytest.mark.parametrize("file", ["labels.npy", "fog.npy"])
def test_every_single_byte_header_corruption_passes_cleanly_or_names_the_file(root, tmp_path, file):
    grid = _official_grid(tmp_path)
    folder = write_fake_cifar_c(root, names=["fog", "spatter"])
    path = folder / file
    good = path.read_bytes()
    header_len = 10 + int.from_bytes(good[8:10], "little")  # magic, version, length, then the dict
    outcomes = {"pass": 0, "refused": 0}
    for pos in range(header_len):
        for value in sorted({0, 0xFF, good[pos] ^ 0x01, good[pos] ^ 0x80, ord("("), ord("'"), ord("\t"), ord("L")} - {good[pos]}):
            path.write_bytes(good[:pos] + bytes([value]) + good[pos + 1:])
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                msg = _launch_check(grid, root)  # never raises: a pass or one line naming the file
            assert not warned, (pos, value, [str(w.message) for w in warned])  # nothing printed but that line
            if msg:
                assert "\n" not in msg and str(path) in msg and "--download cifar10-c" in msg, (pos, value, msg)
                outcomes["refused"] += 1
            else:  # a corruption that leaves an equivalent header (a padding space, '|u1' -> '|i1' labels)
                shape, dtype = cifar_c._header(path, "cifar10", root)
                assert dtype.kind in "iu" and math.prod(shape) * dtype.itemsize == len(good) - header_len
                outcomes["pass"] += 1
    assert outcomes["refused"] > 5 * header_len  # most single-byte corruptions are caught


def test_download_refetches_a_file_whose_header_is_damaged(root, monkeypatch):
    """A header whose parsing raised tokenize.TokenError used to stop --download before it refetched."""
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, download_root, extract_root=None, filename=None, md5=None, remove_finished=False):
        calls.append(url)
        write_fake_cifar_c(Path(download_root))

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    folder = write_fake_cifar_c(root)
    good = (folder / "fog.npy").read_bytes()
    (folder / "fog.npy").write_bytes(good[:8] + bytes([40]) + good[9:])
    with pytest.raises(DataError, match=r"fog\.npy is not a readable \.npy file \(TokenError"):
        cifar_c.check_files("cifar10", root)
    folder_back, said = cifar_c.download("cifar10-c", root)
    assert len(calls) == 1 and (folder / "fog.npy").read_bytes() == good and "labels match" in said
    (folder / "labels.npy").write_bytes((folder / "labels.npy").read_bytes()[:-3])  # truncated labels
    cifar_c.download("cifar10-c", root)
    assert len(calls) == 2
