"""The one vocabulary of run states."""

from __future__ import annotations


from cnnstress import states
from cnnstress.cluster import base, slurm, status

from conftest import loaded_by


def test_what_a_launch_starts_and_what_summary_json_says():
    assert set(states.to_start(rerun_failed=False)) == {"failed", "broken", "partial", "missing"}
    # --rerun-failed leaves partial runs alone: they may still be running elsewhere
    assert set(states.to_start(rerun_failed=True)) == {"failed", "broken", "missing"}
    assert {n for n, s in states.STATES.items() if s.busy} == {"running", "pending"}
    assert {n: states.summary_status(n) for n in states.ALL} == {
        "done": "done", "failed": "failed", "broken": "failed", "partial": "missing", "missing": "missing",
        "running": "missing", "pending": "missing"}
    assert states.summary_status("something new") == "missing"
    assert {s.summary_status for s in states.STATES.values()} == set(states.SUMMARY_STATUSES)


def test_the_cluster_side_speaks_the_same_vocabulary():
    assert tuple(status.RUN_STATUSES) == states.ALL


def test_states_module_is_torch_and_h5py_free():
    assert loaded_by("cnnstress.states, cnnstress.layout") == []


def test_gather_reports_states_in_the_same_vocabulary():
    from cnnstress import gather

    assert gather.RUN_STATUSES == states.SUMMARY_STATUSES
    assert set(gather.RUN_STATES) == {n for n in states.ALL if not states.STATES[n].busy}


def test_the_gather_job_imports_no_launcher():
    """No cycle: the cluster's gather job calls the gather side, not the command line."""
    assert loaded_by("cnnstress.cluster, cnnstress.gather", ("cnnstress.launcher",)) == []


def test_the_gather_job_rebuilds_the_report_from_the_launch_arguments(tmp_path):
    from synth import make_sweep

    s = make_sweep(tmp_path, seeds=(1,), corruptions=())
    args = base.gather_arguments(s.sweep_dir / "grid.toml", tmp_path, tmp_path / "data", [])
    assert slurm.GatherTask()(args).startswith("report written: ")
    assert (s.sweep_dir / "report" / "index.html").exists()
    assert (s.sweep_dir / "report" / "summary.json").exists()
