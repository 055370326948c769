"""Atomic files live in their own module, so that writers that never read results.h5 (the report's
drawing, the launcher, the cluster side) do not load h5py through store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cnnstress import atomic, store

from conftest import loaded_by


def test_the_report_and_atomic_writers_load_neither_h5py_nor_torch():
    assert loaded_by("cnnstress.atomic, cnnstress.report.figures, cnnstress.report.html, cnnstress.report.sections") == []


def test_store_re_exports_the_same_writers(tmp_path):
    assert store.atomic_write_json is atomic.atomic_write_json and store.cleanup_temp_files is atomic.cleanup_temp_files
    (tmp_path / ".x.json.tmp-1-0123abcd").write_text("left by a killed writer")
    assert atomic.atomic_write_json(tmp_path / "x.json", {"b": 1, "a": [1.5]})
    assert (tmp_path / "x.json").read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'
    assert not atomic.atomic_write_json(tmp_path / "x.json", {"a": [1.5], "b": 1}, if_changed=True)
    assert [p.name for p in atomic.cleanup_temp_files(tmp_path)] == [".x.json.tmp-1-0123abcd"]


def test_store_hands_on_no_private_helper_of_atomic():
    """What other modules use of atomic is public there; store keeps no underscore names of it."""
    private = [n for n in vars(atomic) if n.startswith("_") and not n.startswith("__") and callable(vars(atomic)[n])]
    assert private and [n for n in private if getattr(store, n, None) is vars(atomic)[n]] == []


# --- symbolic links: never written through -------------------------------------------------------

PRECIOUS = b"someone else's file\n"
LONG_AGO = 1_000_000_000  # a fixed mtime: an append or a truncate would move it


def _outside(weird: Path) -> Path:
    """A file outside the folder written to, with known bytes and mtime."""
    target = weird / "outside 'the sweep'" / "target \"file\".txt"
    target.parent.mkdir()
    target.write_bytes(PRECIOUS)
    os.utime(target, ns=(LONG_AGO * 10**9, LONG_AGO * 10**9))
    return target


def _untouched(target) -> bool:
    st = target.stat()
    return target.read_bytes() == PRECIOUS and st.st_mtime_ns == LONG_AGO * 10**9


@pytest.mark.parametrize("flags", [os.O_RDWR | os.O_CREAT, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                   os.O_WRONLY | os.O_TRUNC])
def test_open_in_place_refuses_a_link_with_one_line_naming_it(weird_dir, flags):
    run = weird_dir / "run"
    run.mkdir()
    target = _outside(weird_dir)
    link = run / "claim.lock"
    link.symlink_to(target)
    with pytest.raises(atomic.LinkRefused) as err:
        atomic.open_in_place(link, flags)
    assert str(err.value) == (f"{link} is a symbolic link; cnnstress does not write through links in a run or "
                              "sweep folder: remove it")
    assert _untouched(target) and link.is_symlink()
    # a link to nothing yet: O_CREAT would have made the file wherever it points
    dangling = run / "log.txt"
    dangling.symlink_to(weird_dir / "outside 'the sweep'" / "made by a write")
    with pytest.raises(atomic.LinkRefused, match="log.txt is a symbolic link"):
        atomic.open_in_place(dangling, flags | os.O_CREAT)
    assert not (weird_dir / "outside 'the sweep'" / "made by a write").exists()


def test_open_in_place_writes_a_real_file_as_before(weird_dir):
    fd = atomic.open_in_place(weird_dir / "log.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"one\n")
    os.close(fd)
    assert (weird_dir / "log.txt").read_bytes() == b"one\n"
    assert os.get_inheritable(atomic.open_in_place(weird_dir / "log.txt", os.O_RDONLY)) is False


@pytest.mark.parametrize("if_changed", [False, True])
def test_a_replaced_file_replaces_the_link_not_its_target(weird_dir, if_changed):
    """progress.json, DONE.json, launches.jsonl, ...: temp-and-replace swaps the link itself for a
    real file, even when the new bytes equal the target's (if_changed must not keep the link)."""
    target = _outside(weird_dir)
    for data in (b'{"epoch": 1}\n', PRECIOUS):
        link = weird_dir / "progress.json"
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        assert atomic.atomic_write_bytes(link, data, if_changed=if_changed)
        assert not link.is_symlink() and link.read_bytes() == data
        assert _untouched(target)
        # the same through the chunked path
        link.unlink()
        link.symlink_to(target)
        assert atomic.atomic_write_bytes(link, iter([data[:3], data[3:]]), if_changed=if_changed)
        assert not link.is_symlink() and link.read_bytes() == data and _untouched(target)


def test_refuse_links_names_the_first_linked_folder(weird_dir):
    sweep = weird_dir / "sweep"
    (sweep / "runs").mkdir(parents=True)
    elsewhere = weird_dir / "elsewhere"
    elsewhere.mkdir()
    (sweep / "runs" / "r1").symlink_to(elsewhere)
    with pytest.raises(atomic.LinkRefused, match="runs/r1 is a symbolic link"):
        atomic.refuse_links(sweep, sweep / "runs" / "r1")
    atomic.refuse_links(sweep, sweep / "runs" / "r2")  # not there yet: nothing to refuse
    (sweep / "runs").rename(weird_dir / "real runs")
    (sweep / "runs").symlink_to(weird_dir / "real runs")
    with pytest.raises(atomic.LinkRefused, match="sweep/runs is a symbolic link"):
        atomic.refuse_links(sweep, sweep / "runs" / "r2")
