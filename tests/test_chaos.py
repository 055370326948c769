"""bench/chaos.py. Without a cluster, in seconds: the fault schedule as a function of its
seed, the [slurm].setup hook that hands an array task its CNNSTRESS_FAULT once, the two detectors of
a run trained twice at once (/proc and log.txt), the verification of a sweep against its reference,
the report check, the table and the sentence. With the live dev cluster (``slurm`` marker): the
``--quick`` soak itself, which must end with nothing lost, duplicated or different."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cnnstress import atomic, faults, states, store
from cnnstress.grid import load_grid

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import chaos  # noqa: E402


# ------------------------------------------------------------------------------------------------
# the schedule
# ------------------------------------------------------------------------------------------------


def _plain(schedule):
    return [(f.kind, f.at, f.pick, f.param, f.backend, f.task) for f in schedule]


def test_the_schedule_is_a_function_of_its_seed():
    a = chaos.draw_schedule(15, 30, 40, 2)
    assert _plain(a) == _plain(chaos.draw_schedule(15, 30, 40, 2))
    assert _plain(a) != _plain(chaos.draw_schedule(16, 30, 40, 2))
    assert [f.index for f in a] == list(range(30))
    assert [f.at for f in a] == sorted(f.at for f in a)


@pytest.mark.parametrize("seed", [0, 1, 15, 99])
def test_every_kind_comes_once_and_caps_and_task_budgets_hold(seed):
    runs, n = 40, 30
    schedule = chaos.draw_schedule(seed, n, runs, 2)
    assert len(schedule) == n
    kinds = [f.kind for f in schedule]
    assert set(kinds) == set(chaos.KINDS)
    for kind, cap in chaos.fault_caps(n, chaos.BACKENDS).items():
        assert kinds.count(kind) <= cap, kind
    task = [f for f in schedule if f.task_fault]
    assert len({(f.backend, f.task) for f in task}) == len(task)  # one fault per array task
    for b in chaos.BACKENDS:
        assert sum(f.backend == b for f in task) <= runs // 2
    assert all(0 <= f.task < runs and f.at == 0 and f.backend in chaos.BACKENDS for f in task)
    assert all(0.03 <= f.at <= 0.85 and f.task == -1 for f in schedule if not f.task_fault)
    assert all(f.kind in ("enospc", "oom", "sigkill") for f in task)
    assert all(f.param for f in schedule if f.kind in ("enospc", "oom", "sigstop", "trunc_ckpt", "trunc_results"))
    assert all(0 <= f.pick < 1 for f in schedule)


def test_fewer_faults_than_kinds_are_distinct_kinds():
    for seed in range(5):
        schedule = chaos.draw_schedule(seed, 6, 4, 2)
        assert len({f.kind for f in schedule}) == 6
    assert chaos.draw_schedule(1, 0, 4, 2) == []


def test_task_faults_outgrow_no_sweep():
    """With 2 runs per sweep only one task of each may carry a fault; the rest become external
    SIGKILLs or are dropped, never a second fault in one task."""
    schedule = chaos.draw_schedule(3, 30, 2, 2)
    task = [f for f in schedule if f.task_fault]
    assert len(task) <= 2 and len({(f.backend, f.task) for f in task}) == len(task)


@pytest.mark.parametrize("seed", range(6))
def test_task_fault_items_are_what_faults_py_acts_on(monkeypatch, seed):
    for f in chaos.draw_schedule(seed, 30, 40, 3):
        if not f.task_fault:
            continue
        action, point, nth = f.param.split(":")
        assert action in ("enospc", "oom", "kill") and int(nth) >= 1
        if action == "kill":
            assert point in ("checkpoint.pt", "results.h5")
            continue
        monkeypatch.setenv("CNNSTRESS_FAULT", f"slow:epoch:0,{f.param}")
        monkeypatch.setattr(faults, "_counts", {})
        for _ in range(int(nth) - 1):
            faults.maybe_fail(point)
        with pytest.raises(OSError if action == "enospc" else MemoryError) as e:
            faults.maybe_fail(point)
        if action == "enospc":
            assert e.value.errno == errno.ENOSPC


# ------------------------------------------------------------------------------------------------
# the grids and the fault hook
# ------------------------------------------------------------------------------------------------


def test_the_three_grids_expand_to_the_same_runs(tmp_path):
    cfg = chaos.Config(runs=6, epochs=2)
    hook = chaos.fault_hook(tmp_path / "faults dir's \"x\"")
    ids = {}
    for name, setup in (("chaos-slurm", [hook]), ("chaos-sbatch", [hook]), ("chaos-reference", [])):
        path = tmp_path / f"{name}.toml"
        path.write_text(chaos.grid_text(name, cfg, setup))
        grid = load_grid(path, out_root=tmp_path / "out", data_root=tmp_path / "data")
        ids[name] = [r.run_id for r in grid.runs]
        assert list(grid.slurm.setup) == setup
        assert len(grid.runs) == 6 and {r.variant for r in grid.runs} == {"baseline", "flip"}
        assert all(r.train.epochs == 2 and r.runtime.checkpoint_every_min == 0 for r in grid.runs)
        assert all(not r.stress.corruptions for r in grid.runs)
    assert ids["chaos-slurm"] == ids["chaos-sbatch"] == ids["chaos-reference"]


def _hook(fault_dir: Path, env: dict[str, str]) -> str:
    """Source the hook the way slurm/array.sbatch sources [slurm].setup (set -euo pipefail, +u)."""
    setup = fault_dir.parent / "setup.sh"
    setup.write_text(chaos.fault_hook(fault_dir) + "\n")
    script = f'set -euo pipefail; set +u; source {chaos.shlex.quote(str(setup))}; set -u; printf "%s" "${{CNNSTRESS_FAULT-unset}}"'
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CNNSTRESS_FAULT"))}
    res = subprocess.run(["bash", "-c", script], env={**base, **env}, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_the_hook_hands_a_task_its_fault_once(tmp_path):
    fault_dir = tmp_path / "out's \"dir\"" / "faults" / "slurm"
    fault_dir.mkdir(parents=True)
    (fault_dir / "task-3").write_text("enospc:results.h5:1\n")
    task3 = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "77", "CNNSTRESS_FAULT": "slow:epoch:1"}
    assert _hook(fault_dir, task3) == "slow:epoch:1,enospc:results.h5:1"
    assert sorted(p.name for p in fault_dir.iterdir()) == ["task-3.taken-77"]
    assert _hook(fault_dir, task3) == "slow:epoch:1"  # requeued, or a later round's task 3: no fault
    (fault_dir / "task-4").write_text("oom:epoch:2\n")
    assert _hook(fault_dir, {"SLURM_ARRAY_TASK_ID": "4", "SLURM_JOB_ID": "80"}) == "oom:epoch:2"  # none inherited
    assert _hook(fault_dir, {"SLURM_ARRAY_TASK_ID": "5"}) == "unset"
    assert _hook(fault_dir, {"SLURM_JOB_ID": "90"}) == "unset"  # the gather job: no task id


# ------------------------------------------------------------------------------------------------
# a run trained twice at once: /proc and log.txt
# ------------------------------------------------------------------------------------------------

HOLD = "import sys, time; f = open(sys.argv[1], 'a'); print('ready', flush=True); time.sleep(60)"
HOLD_AND_FORK = ("import os, sys, time; f = open(sys.argv[1], 'a'); pid = os.fork(); "
                 "print('ready', pid, flush=True) if pid else None; time.sleep(60)")


def _holders(code: str, log: Path, n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", code, str(log)], stdout=subprocess.PIPE, text=True) for _ in range(n)]
    for p in procs:
        p.said = p.stdout.readline().split()
        assert p.said[:1] == ["ready"]
    return procs


def _end(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        for pid in [int(x) for x in p.said[1:]]:  # a forked child
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.kill()
        p.wait(timeout=10)


def test_log_holders_sees_two_processes_with_one_runs_log_open(tmp_path):
    sweep = tmp_path / "sweep's \"dir\""
    run = sweep / "runs" / "r1"
    run.mkdir(parents=True)
    (sweep / "runs" / "r2").mkdir()
    roots = [os.path.realpath(sweep) + os.sep]
    assert chaos.log_holders(roots) == {}
    one = _holders(HOLD, run / "log.txt", 1)
    try:
        assert chaos.log_holders(roots) == {os.path.realpath(run): {one[0].pid}}
        assert chaos.log_holders([os.path.realpath(tmp_path / "elsewhere") + os.sep]) == {}
        two = _holders(HOLD, run / "log.txt", 1)
        try:
            watch = chaos.Watch([sweep], every=0.05)
            watch.sample()
            assert watch.double == {os.path.realpath(run): {one[0].pid, two[0].pid}}
            assert watch.max_at_once == 2
        finally:
            _end(two)
    finally:
        _end(one)


def test_a_forked_child_holding_the_inherited_log_is_not_a_second_trainer(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    procs = _holders(HOLD_AND_FORK, run / "log.txt", 1)
    try:
        child = int(procs[0].said[1])
        assert chaos._ppid(child) == procs[0].pid
        holders = chaos.log_holders([os.path.realpath(tmp_path) + os.sep])
        assert holders == {os.path.realpath(run): {procs[0].pid}}
    finally:
        _end(procs)


def _line(text: str, t: str = "12:00:00") -> str:
    return f"[{t}] {text}"


RUN = _line("run baseline-s1-abc: simple_cnn on shapes, 2 epochs, device cpu (x86_64, 1 threads), amp off, deterministic=True")
EP1 = _line("epoch   1/2  lr 0.003  train loss 1.0 acc 0.3  val loss 1.0 acc 0.3  1.2s")
EP2 = _line("epoch   2/2  lr 0.003  train loss 0.9 acc 0.4  val loss 0.9 acc 0.4  1.2s")
DONE = _line("done: test accuracy 0.4000; results.h5 sha256 0123456789ab; 9s in all")


def test_log_attempts_one_after_another_are_fine():
    text = "\n".join([
        RUN, EP1,  # killed during epoch 2
        _line("removed leftover temp file .checkpoint.pt.tmp-12-0123abcd from an interrupted write"),
        RUN, _line("resumed from checkpoint after epoch 1 (Slurm restart 1)"), EP2,
        _line("checkpoint after epoch 2 written (SIGTERM received)"), DONE,
        _line("DONE.json does not match results.h5 (truncated); redoing the run"),
        RUN, _line("WARNING: checkpoint.pt is unusable (EOFError: x); falling back"),
        _line("resumed from checkpoint after epoch 2"), DONE,
        RUN, _line("FAILED: MemoryError: injected out-of-memory at epoch"),
        RUN, EP1, EP2, DONE,
    ])
    assert chaos.log_attempts(text) == (5, [])
    assert chaos.log_attempts("") == (0, [])


@pytest.mark.parametrize("lines", [
    [RUN, EP1, RUN, EP2, EP1, EP2, DONE, DONE],  # A goes on after B started
    [RUN, _line("resumed from checkpoint after epoch 1"), RUN, EP2, EP2, DONE],  # both resumed from epoch 1
    [RUN, EP1, EP2, DONE, EP2],  # a line after done
    [RUN, EP1, EP2, DONE, DONE],
])
def test_log_attempts_that_interleave_are_found(lines):
    _, problems = chaos.log_attempts("\n".join(lines))
    assert problems


# ------------------------------------------------------------------------------------------------
# verification against the reference
# ------------------------------------------------------------------------------------------------


def _write_report(sweep: Path, run_ids, overrides: dict[str, tuple[str, str]] | None = None) -> None:
    rows, lines = [], ["run_id,status,state"]
    for rid, st in chaos.disk_states(sweep, run_ids).items():
        status, state = (overrides or {}).get(rid, (states.summary_status(st.status), st.status))
        rows.append({"run_id": rid, "status": status, "state": state})
        lines.append(f"{rid},{status},{state}")
    (sweep / "report").mkdir(exist_ok=True)
    (sweep / "report" / "summary.json").write_text(json.dumps({"runs": rows}))
    (sweep / "report" / "runs.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def twin_sweeps(tmp_path_factory):
    """A synthetic sweep written twice with the real store (same specs, same arrays): the soak's
    sweep and its reference."""
    import synth

    root = tmp_path_factory.mktemp("twins")
    made = {}
    for name in ("chaos-slurm", "chaos-reference"):
        made[name] = synth.make_sweep(root / name, name=name, seeds=(1, 2), n_test=100, corruptions=(),
                                      faithfulness=False, train_subset=False)
    ids = [r.run_id for r in made["chaos-slurm"].runs]
    assert ids == [r.run_id for r in made["chaos-reference"].runs]
    return made["chaos-slurm"].sweep_dir, made["chaos-reference"].sweep_dir / "runs", ids


def _copy_sweep(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_an_undisturbed_copy_passes_every_check(twin_sweeps, tmp_path):
    sweep_src, ref_runs, ids = twin_sweeps
    sweep = _copy_sweep(sweep_src, tmp_path / "chaos-slurm")
    _write_report(sweep, ids)
    res = chaos.verify_sweep("slurm", sweep, ref_runs, ids, double_live=[], rounds=1)
    assert (res.done, res.equal, res.runs) == (4, 4, 4) and res.ok, res
    assert res.report_ok and not res.temp_files and not res.done_without_results and not res.interleaved


def test_each_kind_of_damage_is_counted(twin_sweeps, tmp_path):
    sweep_src, ref_runs, ids = twin_sweeps
    sweep = _copy_sweep(sweep_src, tmp_path / "chaos-sbatch")
    a, b, c, d = (sweep / "runs" / rid for rid in ids)
    # a: republished with one logit changed (a valid, finished run that differs)
    with store.open_results(a / "results.h5") as r:
        arrays = {k: r.read(k) for k in r.keys()}
        attrs = dict(r.attrs)
    arrays["test/logits"] = arrays["test/logits"].copy()
    arrays["test/logits"][0, 0] = np.nextafter(arrays["test/logits"][0, 0], np.float32(np.inf))
    attrs.pop("schema_version", None)
    store.write_done(a, {"test_accuracy": 0.5}, store.publish_results(a, arrays, attrs))
    # b: results.h5 gone, DONE.json stays; c: results.h5 truncated after DONE.json; d: a temp file left
    (b / "results.h5").unlink()
    os.truncate(c / "results.h5", 100)
    (d / ".checkpoint.pt.tmp-4242-0123abcd").write_bytes(b"x")
    (d / "log.txt").write_text("\n".join([RUN, EP1, RUN, EP2, EP1, EP2, DONE, DONE]))
    _write_report(sweep, ids)
    res = chaos.verify_sweep("sbatch", sweep, ref_runs, ids, double_live=[os.path.realpath(d)], rounds=2)
    assert res.done == 2 and res.equal == 1 and list(res.different) == [a.name]
    assert "test/logits" in res.different[a.name]
    assert sorted(res.lost) == sorted([b.name, c.name]) and all(v.startswith("broken") for v in res.lost.values())
    assert res.done_without_results == sorted([b.name, c.name])
    assert res.temp_files == [f"runs/{d.name}/.checkpoint.pt.tmp-4242-0123abcd"]
    assert res.double_live == [d.name] and list(res.interleaved) == [d.name]
    assert res.report_ok  # the report says what the folders say: broken runs as failed
    assert not res.ok
    line = chaos.sentence([], [res], 60)
    assert "2/4 done" in line and "1/4 bitwise equal" in line and "1 trained twice at once" in line
    assert "1 temp files left" in line and "2 DONE.json without a matching results.h5" in line
    assert line.endswith("FAILED.")


def test_the_report_check_compares_rows_with_folders(twin_sweeps, tmp_path):
    sweep_src, _, ids = twin_sweeps
    sweep = _copy_sweep(sweep_src, tmp_path / "s")
    assert chaos.report_matches(sweep, ids)[0] is False  # no report at all
    _write_report(sweep, ids)
    assert chaos.report_matches(sweep, ids) == (True, "4 rows match")
    _write_report(sweep, ids, {ids[1]: ("failed", "failed")})  # a stale report: the run was redone since
    ok, detail = chaos.report_matches(sweep, ids)
    assert not ok and ids[1] in detail
    _write_report(sweep, ids[:3])
    assert chaos.report_matches(sweep, ids)[0] is False


def test_temp_names_are_the_atomic_writers(tmp_path):
    name = atomic.temp_path(tmp_path / "results.h5").name
    assert chaos.TEMP_RE.match(name) and atomic._TEMP_RE.pattern == chaos.TEMP_RE.pattern
    (tmp_path / "report" / "figures").mkdir(parents=True)
    (tmp_path / "report" / "figures" / ".a.png.tmp-1-abcdef01").write_bytes(b"")
    (tmp_path / "results.h5.tmp").write_bytes(b"")  # not one of ours
    assert [p.name for p in chaos.temp_files(tmp_path)] == [".a.png.tmp-1-abcdef01"]


# ------------------------------------------------------------------------------------------------
# the table, the sentence, the command line
# ------------------------------------------------------------------------------------------------


def test_the_tables_and_the_sentence(capsys):
    fs = chaos.draw_schedule(2, 12, 4, 2)
    for i, f in enumerate(fs):
        f.status = "injected" if i % 4 else "no target"
        f.seen = True if f.kind == "enospc" else None
    ok = chaos.SweepResult("slurm", "/x", 4, done=4, equal=4, rounds=2, report_ok=True, attempts=6, retrained=2)
    other = replace(ok, backend="sbatch", rounds=3, report_rebuilt=True)
    chaos.print_tables(fs, [ok, other], {"rounds": "4", "load": "fine"})
    out = capsys.readouterr().out
    for label in ("faults injected", "what survived", "bitwise equal", "rebuilt", "load: fine"):
        assert label in out
    line = chaos.sentence(fs, [ok, other], 600)
    injected = sum(f.status == "injected" for f in fs)
    assert line.startswith(f"chaos soak: {injected} faults of ")
    assert "8/8 done after 3 rounds, 8/8 bitwise equal" in line and "0 trained twice at once" in line
    assert "2/2 reports matching" in line and "10.0 min" in line
    assert line.endswith("nothing lost, duplicated or different.")
    assert "when the rounds ran out" in chaos.sentence(fs, [ok, replace(other, rounds=0, done=3)], 1)


def test_fault_counts_and_seen():
    fs = [chaos.Fault(0, "enospc", 0, 0.1, "enospc:results.h5:1", "slurm", 2, "injected", "r1"),
          chaos.Fault(1, "sigkill", 0.2, 0.1, "", status="injected", target="r2"),
          chaos.Fault(2, "sigkill", 0.3, 0.1, "", status="no target")]
    assert chaos.fault_seen(fs[0], "[1] FAILED: OSError: [Errno 28] No space left on device: 'results.h5'") is True
    assert chaos.fault_seen(fs[0], "[1] done: ...") is False
    assert chaos.fault_seen(fs[1], "anything") is None  # an external SIGKILL leaves no line of its own
    counts = chaos.fault_counts(fs)
    assert counts["sigkill"] == {"planned": 2, "injected": 1, "missed": 1, "seen": 0, "checkable": 0}


def test_the_command_line(monkeypatch, capsys, tmp_path):
    cfg = chaos.config_from_args(["--quick", "--out", str(tmp_path)])
    assert (cfg.runs, cfg.faults, cfg.out) == (chaos.QUICK["runs"], chaos.QUICK["faults"], tmp_path)
    assert chaos.config_from_args(["--runs", "10", "--backends", "sbatch"]).backends == ("sbatch",)
    for bad in (["--runs", "5"], ["--backends", "local"], ["--rounds", "0"]):
        with pytest.raises(SystemExit):
            chaos.config_from_args(bad)
    capsys.readouterr()
    monkeypatch.setattr(chaos, "dev_cluster_problem", lambda: "no live Slurm controller (test)")
    monkeypatch.delenv("CNNSTRESS_REQUIRE_SLURM", raising=False)
    assert chaos.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("chaos soak not run: no live Slurm controller")
    monkeypatch.setenv("CNNSTRESS_REQUIRE_SLURM", "1")
    assert chaos.main(["--quick", "--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_daemon_without_a_record_is_not_touched(monkeypatch, tmp_path):
    monkeypatch.setattr(chaos, "PID_RECORDS", tmp_path)
    with pytest.raises(chaos.ChaosError, match="no pid record for slurmd"):
        chaos.restart_daemon("slurmd")
    (tmp_path / "slurmd.pid").write_text(str(os.getpid()))  # this process is no slurmd
    with pytest.raises(chaos.ChaosError, match="is not running"):
        chaos.restart_daemon("slurmd")


# ------------------------------------------------------------------------------------------------
# the live dev cluster
# ------------------------------------------------------------------------------------------------


@pytest.mark.slurm
def test_quick_soak_on_the_dev_cluster_loses_nothing(tmp_path):
    problem = chaos.dev_cluster_problem()
    if problem:
        if os.environ.get("CNNSTRESS_REQUIRE_SLURM") == "1":
            pytest.fail(f"CNNSTRESS_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)
    out = tmp_path / "chaos \"quick\" out's"
    t0 = time.time()
    res = subprocess.run([sys.executable, "bench/chaos.py", "--quick", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=1200)
    tail = res.stdout[-6000:] + res.stderr[-3000:]
    assert res.returncode == 0, tail
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("chaos soak: ") and last.endswith("nothing lost, duplicated or different."), tail
    record = json.loads((out / "chaos.json").read_text())
    assert record["sentence"] == last
    assert {f["kind"] for f in record["faults"]} == set(chaos.KINDS)  # --quick plans one of each
    injected = [f for f in record["faults"] if f["status"] == "injected"]
    assert len(injected) >= len(chaos.KINDS) // 2, [(f["kind"], f["status"], f["detail"]) for f in record["faults"]]
    for r in record["results"]:
        assert r["done"] == r["equal"] == r["runs"] == chaos.QUICK["runs"], r
        assert not r["double_live"] and not r["interleaved"] and not r["temp_files"] and r["report_ok"], r
    print(f"quick chaos soak: {time.time() - t0:.0f} s; {last}")
