"""Atomic files live in their own module, so that writers that never read results.h5 (the report's
drawing, the launcher, the cluster side) do not load h5py through store (issue 11.5)."""

from __future__ import annotations


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
