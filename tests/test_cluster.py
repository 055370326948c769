"""Slurm submission without a Slurm cluster: parameter mapping, golden sbatch texts, dry runs,
array splitting, run status, and the static sbatch scripts, with fake Slurm commands on PATH."""

from __future__ import annotations

import difflib
import json
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnstress import atomic, launcher, store
from cnnstress.cluster import base, local, sbatch, slurm, slurmctl, status
from cnnstress.cluster.slurmctl import JobInfo, Launch
from cnnstress.config import RunSpec
from cnnstress.grid import load_grid
from cnnstress.launcher import main

from conftest import REPO, loaded_by, tiny_grid_text
from grids import LEAN_STRESS, dev_slurm_text
from test_atomic import _outside, _untouched

GOLDEN = Path(__file__).parent / "golden"

FULL_SLURM = """
[slurm]
partition = "gpu"
account = "proj-42"
qos = "normal"
constraint = "a100|h100"
time_min = 90
gpus_per_task = 1
cpus_per_task = 6
mem_gb = 1.5
array_parallelism = 2
max_num_timeout = 4
signal_delay_s = 90
gather_time_min = 20
gather_cpus = 3
gather_mem_gb = 4
setup = ["module load cuda/12.1", "echo \\"hello $USER\\""]
additional = { mail_type = "END", reservation = "res1" }
"""

DEV_SLURM = dev_slurm_text()


def _grid(folder: Path, slurm: str = DEV_SLURM, seeds: str = "[1]", name: str = "tiny") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grid file's.toml"
    path.write_text(tiny_grid_text(name=name, extra=slurm).replace("seed = [1]", f"seed = {seeds}"))
    return path


# ------------------------------------------------------------------------------------------------
# fake Slurm commands
# ------------------------------------------------------------------------------------------------

FAKE = r'''#!{python}
import json, os, sys
state_dir = {state!r}
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
with open(os.path.join(state_dir, "calls.jsonl"), "a") as fh:
    fh.write(json.dumps([name, *args]) + "\n")
state = json.load(open(os.path.join(state_dir, "state.json")))
if name == "scontrol":
    if not state["up"]:
        print("slurm_load_ctl_conf error: Unable to contact slurm controller (connect failure)", file=sys.stderr)
        sys.exit(1)
    if args[:1] == ["ping"]:
        print("Slurmctld(primary) at fake is UP")
    elif args[:2] == ["show", "config"]:
        print("ClusterName             = fake\nMaxArraySize            = %d" % state["max_array"])
    sys.exit(0)
if name == "sbatch":
    state["next"] += 1
    json.dump(state, open(os.path.join(state_dir, "state.json"), "w"))
    if args and args[-1].endswith(".sh") and os.path.exists(args[-1]):
        with open(os.path.join(state_dir, "script-%d.sh" % state["next"]), "w") as out:
            out.write(open(args[-1]).read())
    print(state["next"] if "--parsable" in args else "Submitted batch job %d" % state["next"])
    sys.exit(0)
if name == "squeue":
    sys.stdout.write(state.get("squeue", ""))
    sys.exit(0)
if name == "sacct":
    print("Slurm accounting storage is disabled", file=sys.stderr)
    sys.exit(1)
sys.exit(0)  # srun
'''


class FakeSlurm:
    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        self.state = {"up": True, "max_array": 1001, "next": 100, "squeue": ""}
        self.save()
        for name in ("scontrol", "sbatch", "squeue", "sacct", "srun"):
            path = self.bin / name
            path.write_text(FAKE.format(python=sys.executable, state=str(root)))
            path.chmod(0o755)

    def save(self) -> None:
        (self.root / "state.json").write_text(json.dumps(self.state))

    def set(self, **kw) -> None:
        self.state = json.loads((self.root / "state.json").read_text())
        self.state.update(kw)
        self.save()

    def calls(self, name: str | None = None) -> list[list[str]]:
        path = self.root / "calls.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        return [r[1:] for r in rows if name is None or r[0] == name]

    def script(self, job: int) -> str:
        return (self.root / f"script-{job}.sh").read_text()


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> FakeSlurm:
    fake = FakeSlurm(tmp_path / "fake slurm")
    monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ['PATH']}")
    return fake


# ------------------------------------------------------------------------------------------------
# [slurm] -> submitit parameters
# ------------------------------------------------------------------------------------------------


def test_slurm_table_maps_to_submitit_parameters(tmp_path):
    grid = load_grid(_grid(tmp_path, FULL_SLURM), out_root=tmp_path / "o")
    params = slurm.submitit_parameters(grid.slurm, grid.name)
    assert params == {
        "job_name": "cnnstress-tiny", "time": 90, "cpus_per_task": 6, "mem": "1536MB", "gpus_per_node": 1,
        "partition": "gpu", "account": "proj-42", "qos": "normal", "constraint": "a100|h100",
        "array_parallelism": 2, "signal_delay_s": 90,
        "setup": ["module load cuda/12.1", 'echo "hello $USER"'],
        "additional_parameters": {"requeue": True, "chdir": str(base.PACKAGE_ROOT), "mail_type": "END",
                                  "reservation": "res1"},
    }
    # --max-parallel overrides array_parallelism
    assert slurm.submitit_parameters(grid.slurm, grid.name, 7)["array_parallelism"] == 7
    gather = slurm.gather_parameters(grid.slurm, grid.name, "afterany:5:6")
    assert {k: gather[k] for k in ("job_name", "time", "cpus_per_task", "mem", "dependency")} == {
        "job_name": "cnnstress-tiny-gather", "time": 20, "cpus_per_task": 3, "mem": "4GB", "dependency": "afterany:5:6"}
    assert "gpus_per_node" not in gather and "constraint" not in gather


def test_dev_cluster_table_requests_no_gpu_and_whole_gigabytes(tmp_path):
    grid = load_grid(_grid(tmp_path), out_root=tmp_path / "o")
    params = slurm.submitit_parameters(grid.slurm, grid.name)
    assert "gpus_per_node" not in params and "setup" not in params and "account" not in params
    assert params["mem"] == "1GB" and params["partition"] == "debug"
    text = slurm.submitit_script_text(tmp_path / "f", params, 3, map_count=2)
    assert "gpus" not in text and "gres" not in text
    assert "#SBATCH --mem=1GB" in text and "#SBATCH --array=0-1%2" in text and "#SBATCH --requeue" in text


@pytest.mark.parametrize("key", ["array", "output", "signal", "time", "gres", "dependency", "chdir", "nodes",
                                 "ntasks", "ntasks_per_node", "mem_per_cpu", "gpus"])
def test_additional_cannot_override_what_cnnstress_sets(tmp_path, key, capsys):
    path = _grid(tmp_path, DEV_SLURM + f'additional = {{ {key} = "x" }}\n')
    grid = load_grid(path, out_root=tmp_path / "o")
    with pytest.raises(ValueError, match=rf"\[slurm\]\.additional\.{key}: cannot be set here"):
        slurm.submitit_parameters(grid.slurm, grid.name)
    # the launcher refuses before writing or submitting anything
    assert main(["--grid", str(path), "--cluster", "slurm", "--out", str(tmp_path / "o")]) == 2
    assert f"additional.{key}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # and the sbatch fallback (whose command lines put additional options before its own)
    assert main(["--grid", str(path), "--cluster", "sbatch", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_every_option_cnnstress_sets_itself_is_reserved(tmp_path):
    # Whatever the generated scripts carry (submitit's #SBATCH lines, the fallback's argv) is
    # cnnstress's: [slurm].additional could otherwise replace it. wckey (submitit's default
    # accounting tag) is the only line a user's own value may replace harmlessly.
    grid = _golden_grid(tmp_path)
    folder = tmp_path / "f"
    texts = [slurm.submitit_script_text(folder, slurm.submitit_parameters(grid.slurm, grid.name), 4, 4),
             slurm.submitit_script_text(folder, slurm.gather_parameters(grid.slurm, grid.name, "afterany:1"), 0,
                                          None)]
    arrays, gather = sbatch.sbatch_plan(grid.runs, grid.slurm, grid.name, tmp_path / "s", sys.executable, [], 10)
    options = {line.split()[1] for text in texts for line in text.splitlines() if line.startswith("#SBATCH --")}
    options |= {a for argv in [arrays[0][0], gather] for a in argv if a.startswith("--")}
    names = {o[2:].split("=")[0].replace("-", "_") for o in options}
    user = set(dict(grid.slurm.additional))  # the golden grid's own mail_type and reservation
    assert names - user - {"wckey"} <= set(slurmctl.RESERVED_SBATCH), names - set(slurmctl.RESERVED_SBATCH)


def test_submitit_script_carries_every_mapped_parameter(tmp_path):
    grid = load_grid(_grid(tmp_path, FULL_SLURM), out_root=tmp_path / "o")
    text = slurm.submitit_script_text(tmp_path / "f", slurm.submitit_parameters(grid.slurm, grid.name), 4, 3)
    lines = set(text.splitlines())
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --account=proj-42",
                 "#SBATCH --qos=normal", "#SBATCH --constraint='a100|h100'", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --mem=1536MB", "#SBATCH --time=90",
                 "#SBATCH --signal=USR2@90", "#SBATCH --requeue", "#SBATCH --mail-type=END",
                 "#SBATCH --reservation=res1", "#SBATCH --job-name=cnnstress-tiny", "module load cuda/12.1"):
        assert line in lines, line


# ------------------------------------------------------------------------------------------------
# golden files
# ------------------------------------------------------------------------------------------------


def _normalise(text: str, tmp_path: Path) -> str:
    # the interpreter first: it may live inside the repository (.venv). The manifest's hash covers
    # specs that hold tmp_path, so it differs from one test run to the next.
    text = (text.replace(shlex.quote(sys.executable), "<PYTHON>").replace(sys.executable, "<PYTHON>")
            .replace(str(tmp_path), "<TMP>").replace(str(base.PACKAGE_ROOT), "<REPO>"))
    return re.sub(r"\b[0-9a-f]{64}\b", "<SHA256>", re.sub(r"manifest-[0-9a-f]{16}\.jsonl", "manifest-<SHA>.jsonl", text))


def assert_golden(name: str, text: str) -> None:
    """Compare with tests/golden/<name>; record it when the file does not exist."""
    path = GOLDEN / name
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"tests/golden/{name}", "generated now"))
        pytest.fail(f"the generated text differs from tests/golden/{name}; if the change is intended, "
                    f"delete tests/golden/{name} and rerun to re-record it.\n{diff}")


def _golden_grid(tmp_path: Path):
    path = _grid(tmp_path / "grids", FULL_SLURM, seeds="[1, 2]", name="golden")
    return load_grid(path, out_root=tmp_path / "out dir's \"q\"", data_root=tmp_path / "data")


def test_sbatch_command_lines_match_golden_file(tmp_path):
    grid = _golden_grid(tmp_path)
    sweep = tmp_path / "out dir's \"q\"" / grid.name
    ids = [r.run_id for r in grid.runs]
    todo = [grid.runs[0], grid.runs[2], grid.runs[3]]  # run 1 is finished
    args = base.gather_arguments(sweep / "grid.toml", tmp_path / "out dir's \"q\"", tmp_path / "data",
                                    ["epochs=3", "optimizer.lr=0.01"])
    arrays, gather = sbatch.sbatch_plan(todo, grid.slurm, grid.name, sweep, sys.executable, args, 2)
    # the launch's own manifest holds just these 3 runs; MaxArraySize 2: lines 0-1 | 2
    assert [(off, [r.run_id for task in tasks for r in task]) for _, tasks, off in arrays] == [(0, [ids[0], ids[2]]), (2, [ids[3]])]
    text = "".join(slurmctl.shell_join(argv) + "\n" for argv, _, _ in arrays) + slurmctl.shell_join(gather) + "\n"
    assert_golden("sbatch_argv.txt", _normalise(text, tmp_path))
    # the command lines are argv lists: each quoted path is one argument
    manifest, data, sha = sbatch.launch_manifest(todo, sweep)
    assert manifest.parent == sweep / "sbatch" and data.decode().splitlines() == [r.to_json() for r in todo]
    setup, setup_data = sbatch.setup_file(sweep, grid.slurm.setup)
    assert setup.parent == sweep / "sbatch" and setup_data.decode().splitlines()[1:] == list(grid.slurm.setup)
    assert arrays[1][0][-6:] == [str(manifest), sys.executable, "2", "4", str(setup), sha]


@pytest.mark.parametrize("total, n, expect", [(2, 1, [2]), (2, 2, [1, 1]), (7, 3, [3, 2, 2]), (100, 4, [25] * 4),
                                               (2, 3, [1, 1, 1])])
def test_array_parallelism_is_shared_by_the_arrays_of_one_launch(total, n, expect):
    shares = slurmctl.share_parallelism(total, n)
    assert shares == expect and (sum(shares) == total or total < n)


def test_setup_file_is_named_by_its_lines_and_never_rewritten(tmp_path):
    # a relaunch with other [slurm].setup lines must not change what queued tasks of an earlier
    # launch source when they start
    first = sbatch.write_setup_file(tmp_path, ["module load cuda/12"])
    second = sbatch.write_setup_file(tmp_path, ["module load cuda/13"])
    assert first != second and first.read_text().endswith("module load cuda/12\n")
    assert second.read_text().endswith("module load cuda/13\n")
    assert sbatch.write_setup_file(tmp_path, ["module load cuda/12"]) == first  # same lines, same file
    assert not first.stat().st_mode & 0o222  # read-only
    assert sbatch.write_setup_file(tmp_path, []) is None


def test_submitit_scripts_match_golden_files(tmp_path):
    grid = _golden_grid(tmp_path)
    folder = tmp_path / "out dir's \"q\"" / grid.name / "submitit" / "slurm-20250101-000000-1"
    array = slurm.submitit_script_text(folder, slurm.submitit_parameters(grid.slurm, grid.name), 4, 4)
    assert_golden("submitit_array.sh", _normalise(array, tmp_path))
    gather = slurm.submitit_script_text(folder, slurm.gather_parameters(grid.slurm, grid.name, "afterany:101:102"),
                                          0, None)
    assert_golden("submitit_gather.sh", _normalise(gather, tmp_path))


def test_golden_mismatch_says_how_to_rerecord(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "GOLDEN", tmp_path)
    assert_golden("x.txt", "one\n")  # recorded
    assert (tmp_path / "x.txt").read_text() == "one\n"
    with pytest.raises(pytest.fail.Exception, match=r"delete tests/golden/x.txt and rerun to re-record"):
        assert_golden("x.txt", "two\n")


# ------------------------------------------------------------------------------------------------
# launcher against fake Slurm commands
# ------------------------------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def test_sbatch_dry_run_prints_the_command_lines_and_writes_nothing(tmp_path, fake_slurm, capsys):
    out = tmp_path / "out dir's \"q\""
    path = _grid(tmp_path, FULL_SLURM, seeds="[1, 2]")
    args = ["--grid", str(path), "--cluster", "sbatch", "--dry-run", "--out", str(out), "--set", "epochs=1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("sbatch ")]
    assert len(lines) == 2  # one array (4 runs < MaxArraySize) + the gather job
    array, gather = (shlex.split(line) for line in lines)
    sweep = out / "tiny"
    runs = load_grid(path, overrides=["epochs=1"], out_root=out).runs
    manifest, _, sha = sbatch.launch_manifest(runs, sweep)
    setup, _ = sbatch.setup_file(sweep, load_grid(path, overrides=["epochs=1"], out_root=out).slurm.setup)
    assert array[-6:] == [str(manifest), sys.executable, "0", "4", str(setup), sha]
    # each positional argument with its name, and where MaxArraySize came from
    assert (f"  array.sbatch arguments: MANIFEST={shlex.quote(str(manifest))}  PYTHON={shlex.quote(sys.executable)}  "
            f"OFFSET=0  MAX_REQUEUES=4  SETUP_FILE={shlex.quote(str(setup))}  MANIFEST_SHA256={sha}") in printed
    assert "  gather.sbatch arguments: PYTHON=" in printed and "LAUNCH_ARGS...=--grid " in printed
    assert "(MaxArraySize 1001, read from scontrol show config)" in " ".join(printed.split())
    assert "--array=0-3%2" in array and f"--output={sweep}/slurm-logs/%A_%a.out" in array
    assert "--dependency=afterany:<ARRAY_IDS>" in gather and gather[-2:] == ["--set", "epochs=1"]
    assert not out.exists()  # nothing written under the output root
    assert fake_slurm.calls("sbatch") == []  # nothing submitted
    # the plan printed is what a real launch submits
    assert main([a for a in args if a != "--dry-run"]) == 0
    submitted = fake_slurm.calls("sbatch")
    assert submitted[0] == array[1:]
    assert submitted[1] == [a.replace("<ARRAY_IDS>", "101") for a in gather[1:]]


def test_controller_that_does_not_answer_gives_a_clear_error(tmp_path, fake_slurm, capsys):
    fake_slurm.set(up=False)
    with pytest.raises(slurmctl.SlurmError, match=r"does not answer .*Unable to contact slurm controller"):
        slurmctl.check_controller()
    out = tmp_path / "out"
    for kind in ("slurm", "sbatch"):
        assert main(["--grid", str(_grid(tmp_path)), "--cluster", kind, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "the Slurm controller does not answer" in err and "slurm/dev-cluster.sh up" in err
    assert fake_slurm.calls("sbatch") == [] and not out.exists()


def test_missing_scontrol_is_the_same_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no Slurm commands at all
    with pytest.raises(slurmctl.SlurmError, match="scontrol: command not found.*dev-cluster.sh up"):
        slurmctl.check_controller()


def test_slurm_launch_splits_at_max_array_size_and_submits_one_gather_job(tmp_path, fake_slurm, capsys):
    fake_slurm.set(max_array=2)
    out = tmp_path / "out dir's \"q\""
    path = _grid(tmp_path, DEV_SLURM.replace("max_num_timeout = 4", "max_num_timeout = 5") + "array_parallelism = 2\n",
                 seeds="[1, 2]")
    t0 = time.time()
    assert main(["--grid", str(path), "--cluster", "slurm", "--out", str(out)]) == 0
    assert time.time() - t0 < 30  # returns at once
    printed = capsys.readouterr().out
    grid = load_grid(path, out_root=out)
    launches = slurmctl.read_launches(out / "tiny")
    assert len(launches) == 1
    launch = launches[0]
    # 4 runs, MaxArraySize 2: arrays 101 and 102 (two tasks each), gather 103 after both
    assert launch.arrays == ["101", "102"] and launch.gather == "103"
    assert launch.runs == {grid.runs[0].run_id: "101_0", grid.runs[1].run_id: "101_1",
                           grid.runs[2].run_id: "102_0", grid.runs[3].run_id: "102_1"}
    # array_parallelism = 2 for the launch: the two arrays run at once, so one task each
    assert "#SBATCH --array=0-1%1" in fake_slurm.script(101) and "#SBATCH --array=0-1%1" in fake_slurm.script(102)
    gather_script = fake_slurm.script(103)
    assert "#SBATCH --dependency=afterany:101:102" in gather_script and "--array" not in gather_script
    assert "101" in printed and "103" in printed and launch.folder in printed.replace("\n", "")
    # what each task will run: TrainTask with the run's spec, requeued at most max_num_timeout times
    folder = Path(launch.folder)
    assert folder.parent == out / "tiny" / "submitit" and folder.name.startswith("slurm-")
    with open(folder / "101_1_submitted.pkl", "rb") as fh:
        delayed = pickle.load(fh)
    assert isinstance(delayed.function, slurm.TrainTask)
    assert json.loads(delayed.args[0]) == grid.runs[1].to_dict()
    assert delayed._timeout_countdown == 5
    with open(folder / "103_submitted.pkl", "rb") as fh:
        gather = pickle.load(fh)
    assert isinstance(gather.function, slurm.GatherTask)
    assert gather.args[0][:2] == ["--grid", str(out / "tiny" / "grid.toml")]
    # a second launch while every task is still queued submits nothing more
    fake_slurm.set(squeue="".join(f"{j}|PENDING|Priority\n" for j in launch.runs.values()))
    assert main(["--grid", str(path), "--cluster", "slurm", "--out", str(out)]) == 0
    assert "nothing to submit" in capsys.readouterr().out
    assert len(fake_slurm.calls("sbatch")) == 3 and len(slurmctl.read_launches(out / "tiny")) == 1
    # once they have left the queue (no accounting), a launch goes to a new submitit folder
    fake_slurm.set(squeue="")
    assert main(["--grid", str(path), "--cluster", "slurm", "--out", str(out)]) == 0
    second = slurmctl.read_launches(out / "tiny")[-1]
    assert second.folder != launch.folder and Path(second.folder).parent == folder.parent


def test_new_launch_folders_never_repeat(tmp_path):
    folders = {slurm.new_launch_folder(tmp_path, "slurm") for _ in range(5)}
    assert len(folders) == 5 and all(f.is_dir() for f in folders)


# ------------------------------------------------------------------------------------------------
# array splitting (pure)
# ------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(0, 300), max_size=80), st.integers(1, 40))
def test_split_indices_keeps_every_task_id_below_max_array_size(indices, limit):
    arrays = slurmctl.split_indices(sorted(indices), limit)
    covered = [off + t for off, tasks in arrays for t in tasks]
    assert covered == sorted(indices)  # every line once, in order
    for off, tasks in arrays:
        assert tasks and tasks[0] == 0 and all(0 <= t < limit for t in tasks)
    # greedy: the next array starts at the first line the previous one could not reach
    for (off, _), (nxt, _) in zip(arrays, arrays[1:]):
        assert nxt >= off + limit
    # no array more than needed: at least ceil(span / limit) and at most one per line
    if indices:
        assert len(arrays) <= len(indices)


@given(st.integers(0, 5000), st.integers(1, 1001))
def test_chunk_items_covers_each_item_once(n, limit):
    chunks = slurmctl.chunk_items(n, limit)
    assert [i for c in chunks for i in c] == list(range(n))
    assert all(1 <= len(c) <= limit for c in chunks)
    assert len(chunks) == -(-n // limit)


@given(st.sets(st.integers(0, 200), min_size=1, max_size=60))
def test_array_ranges_round_trip(ids):
    text = slurmctl.array_ranges(sorted(ids))
    back = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        back.update(range(int(lo), int(hi or lo) + 1))
    assert back == ids
    assert len(text.split(",")) == sum(1 for i in ids if i - 1 not in ids)  # one part per run of ids


def test_max_array_size_parsing():
    assert slurmctl.parse_max_array_size("AuthType = x\nMaxArraySize            = 40001\nMaxJobCount = 3") == 40001
    assert slurmctl.parse_max_array_size("nothing here") == slurmctl.DEFAULT_MAX_ARRAY_SIZE
    with pytest.raises(ValueError, match="at least 1"):
        slurmctl.split_indices([1], 0)


# ------------------------------------------------------------------------------------------------
# run status
# ------------------------------------------------------------------------------------------------

DONE = store.RunState("done", "", {"restarts": 1})
FAILED = store.RunState("failed", "RuntimeError: boom")
PARTIAL = store.RunState("partial", "checkpoint.pt present, no DONE.json")
MISSING = store.RunState("missing", "")


@pytest.mark.parametrize("disk, job, claim, expect", [
    (DONE, JobInfo("7_1", "RUNNING"), None, ("done", "")),
    (FAILED, JobInfo("7_1", "PENDING", "Priority"), None, ("pending", "job 7_1 pending (Priority)")),
    (MISSING, JobInfo("7_1", "REQUEUED"), None, ("pending", "job 7_1 requeued")),
    (PARTIAL, JobInfo("7_1", "RUNNING"), None, ("running", "job 7_1")),
    (PARTIAL, None, {"pid": 12, "host": "n1"}, ("running", "claimed by pid 12 on n1")),
    (FAILED, JobInfo("7_1", "FAILED", "exit 1:0"), None, ("failed", "RuntimeError: boom")),
    (store.RunState("broken", "sha256 mismatch"), None, None, ("broken", "sha256 mismatch")),
    (PARTIAL, JobInfo("7_1", "TIMEOUT"), None, ("failed", "job 7_1 ended TIMEOUT without DONE.json; checkpoint after epoch 3")),
    (MISSING, JobInfo("7_1", "OUT_OF_MEMORY", "exit 0:125"), None, ("failed", "job 7_1 ended OUT_OF_MEMORY, exit 0:125 without DONE.json")),
    (PARTIAL, None, None, ("partial", "checkpoint.pt present, no DONE.json")),
    (MISSING, None, None, ("missing", "")),
])
def test_classify(disk, job, claim, expect):
    epoch = 3 if disk is PARTIAL else 0
    assert status.classify(disk, job, claim, epoch) == expect


GONE = "its Slurm job 7_1 ended without a result (no accounting to say why)"


@pytest.mark.parametrize("disk, claim, squeue_ok, expect", [
    (PARTIAL, None, True, ("failed", GONE + "; checkpoint after epoch 3")),
    (MISSING, None, True, ("failed", GONE)),
    (FAILED, None, True, ("failed", "RuntimeError: boom")),  # the worker's own reason is better
    (DONE, None, True, ("done", "")),
    (PARTIAL, {"pid": 12, "host": "n1"}, True, ("running", "claimed by pid 12 on n1")),
    (PARTIAL, None, False, ("partial", "checkpoint.pt present, no DONE.json")),  # squeue did not answer
])
def test_classify_a_recorded_job_that_left_squeue(disk, claim, squeue_ok, expect):
    epoch = 3 if disk is PARTIAL else 0
    assert status.classify(disk, None, claim, epoch, "7_1", squeue_ok) == expect


def test_status_from_files_and_squeue_without_accounting(tmp_path, fake_slurm):
    grid = load_grid(_grid(tmp_path, seeds="[1, 2]"), out_root=tmp_path / "o")
    sweep = tmp_path / "o" / "tiny"
    runs = grid.runs  # 4 runs
    for r in runs:
        (sweep / "runs" / r.run_id).mkdir(parents=True)
    store.write_failed(sweep / "runs" / runs[0].run_id, "DataError: no data")
    (sweep / "runs" / runs[1].run_id / "checkpoint.pt").write_bytes(b"x")
    store.atomic_write_json(sweep / "runs" / runs[1].run_id / "progress.json", {"epoch": 2, "epochs": 2})
    (sweep / "runs" / runs[2].run_id / "checkpoint.pt").write_bytes(b"x")
    slurmctl.record_launch(sweep, Launch("slurm", str(sweep / "submitit" / "s1"), ["7"], "8",
                                        {r.run_id: f"7_{i}" for i, r in enumerate(runs)}))
    # run 1 still running, run 3 queued; runs 0 and 2 have left squeue and sacct does not answer
    fake_slurm.set(squeue="7_1|RUNNING|None\n7_3|PENDING|Resources\n8|PENDING|Dependency\n")
    statuses, notes = status.run_statuses(runs, sweep)
    got = {s.run_id: (s.status, s.job_id) for s in statuses}
    # run 2's job has left squeue (MinJobAge) without DONE.json: failed, so --rerun-failed takes it
    assert got == {runs[0].run_id: ("failed", "7_0"), runs[1].run_id: ("running", "7_1"),
                   runs[2].run_id: ("failed", "7_2"), runs[3].run_id: ("pending", "7_3")}
    assert statuses[2].detail.startswith("its Slurm job 7_2 ended without a result (no accounting to say why)")
    failed = statuses[0]
    assert "DataError: no data" in failed.detail and f"{sweep}/submitit/s1/7_0_0_log.err" in failed.detail
    assert statuses[1].epoch == 2 and statuses[1].epochs == 2
    assert any("sacct unavailable" in n for n in notes)
    # squeue -t all still knows the ended job's state: a partial run whose job timed out is failed
    fake_slurm.set(squeue="7_2|TIMEOUT|None\n")
    statuses, _ = status.run_statuses(runs, sweep)
    assert statuses[2].status == "failed" and "ended TIMEOUT" in statuses[2].detail
    # the status command prints them all
    assert main(["--grid", str(_grid(tmp_path, seeds="[1, 2]")), "--status", "--out", str(tmp_path / "o")]) == 3


def test_status_without_slurm_commands_uses_files_only(tmp_path, monkeypatch):
    grid = load_grid(_grid(tmp_path), out_root=tmp_path / "o")
    sweep = tmp_path / "o" / "tiny"
    (sweep / "runs" / grid.runs[0].run_id).mkdir(parents=True)
    slurmctl.record_launch(sweep, Launch("sbatch", str(sweep / "slurm-logs"), ["7"], "8",
                                        {r.run_id: f"7_{i}" for i, r in enumerate(grid.runs)}))
    store.write_failed(sweep / "runs" / grid.runs[0].run_id, "x")
    monkeypatch.setenv("PATH", str(tmp_path))
    statuses, notes = status.run_statuses(grid.runs, sweep)
    assert [s.status for s in statuses] == ["failed", "missing"]
    assert f"{sweep}/slurm-logs/7_0.out" in statuses[0].detail
    assert any("squeue failed" in n for n in notes)


def test_status_survives_a_launch_record_of_an_unknown_backend_and_a_progress_file_that_is_not_an_object(tmp_path):
    """A launches.jsonl line written by a backend this version lacks (another version's, or a typo)
    and a progress.json holding a list: --status judges those runs from their files, with a note."""
    grid = load_grid(_grid(tmp_path), out_root=tmp_path / "o")
    sweep = tmp_path / "o" / "tiny"
    for r in grid.runs:
        (sweep / "runs" / r.run_id).mkdir(parents=True)
    store.write_failed(sweep / "runs" / grid.runs[0].run_id, "DataError: no data")
    (sweep / "runs" / grid.runs[1].run_id / "progress.json").write_text("[3]")
    slurmctl.record_launch(sweep, Launch("pbs", str(sweep / "pbs logs"), ["7"], "8",
                                        {r.run_id: f"7_{i}" for i, r in enumerate(grid.runs)}))
    statuses, notes = status.run_statuses(grid.runs, sweep)
    assert [(s.status, s.epoch, s.log) for s in statuses] == [("failed", 0, ""), ("missing", 0, "")]
    assert notes == ["launches.jsonl names an unknown backend 'pbs'; its jobs are judged from files"]
    assert store.progress_epochs(sweep / "runs" / grid.runs[1].run_id) == 0


def test_launches_jsonl_round_trip_and_bad_lines(tmp_path):
    a = Launch("slurm", "/x/f1", ["1"], "2", {"r1": "1_0", "r2": "1_1"}, "t1")
    b = Launch("sbatch", "/x/logs", ["5"], "6", {"r2": "5_0"}, "t2")
    slurmctl.record_launch(tmp_path, a)
    with open(tmp_path / "launches.jsonl", "a") as fh:
        fh.write("{not json\n")
    slurmctl.record_launch(tmp_path, b)
    got = slurmctl.read_launches(tmp_path)
    assert [x.to_dict() for x in got] == [a.to_dict(), b.to_dict()]
    latest = slurmctl.latest_jobs(got)
    assert {k: v[0] for k, v in latest.items()} == {"r1": "1_0", "r2": "5_0"}


def test_rerun_failed_selects_only_failed_broken_and_missing(tmp_path, monkeypatch):
    grid = load_grid(_grid(tmp_path, seeds="[1, 2, 3]"), out_root=tmp_path / "o")  # 6 runs
    states = ["done", "running", "pending", "failed", "broken", "partial"]
    fake = [status.RunStatus(r.run_id, s) for r, s in zip(grid.runs, states)]
    monkeypatch.setattr(status, "run_statuses", lambda *a, **k: (fake, []))
    todo, done, busy = launcher._select(grid, tmp_path, rerun_failed=True, ask_slurm=True)
    assert [r.run_id for r in todo] == [grid.runs[3].run_id, grid.runs[4].run_id]
    assert done == 1 and [b.status for b in busy] == ["running", "pending"]
    todo, _, _ = launcher._select(grid, tmp_path, rerun_failed=False, ask_slurm=True)
    assert [r.run_id for r in todo] == [r.run_id for r in grid.runs[3:]]  # partial ones resume too


# ------------------------------------------------------------------------------------------------
# the static sbatch scripts (run with bash, fake scontrol and python)
# ------------------------------------------------------------------------------------------------

FAKE_PY = r'''#!/usr/bin/env bash
printf '%s\n' "$@" > "$FAKE_OUT/argv"
trap 'echo "worker got $1"' USR2
for i in $(seq 1 100); do [[ -e "$FAKE_OUT/go" ]] && exit 7; sleep 0.1; done
exit 9
'''


def _script_env(tmp_path: Path, fake_slurm: FakeSlurm, **extra: str) -> tuple[dict[str, str], Path]:
    out = tmp_path / "fake out"
    out.mkdir()
    py = tmp_path / "py thon"
    py.write_text(FAKE_PY)
    py.chmod(0o755)
    env = {**os.environ, "FAKE_OUT": str(out), "SLURM_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "3", **extra}
    return env, py


@pytest.mark.parametrize("restarts, requeued", [("0", True), ("2", False)])
def test_array_script_requeues_on_usr2_up_to_the_cap_and_keeps_the_worker_status(tmp_path, fake_slurm, restarts,
                                                                                  requeued):
    env, py = _script_env(tmp_path, fake_slurm, SLURM_RESTART_COUNT=restarts)
    manifest = tmp_path / "mani fest's.jsonl"
    manifest.write_text("{}\n" * 20)
    proc = subprocess.Popen(["bash", str(REPO / "slurm" / "array.sbatch"), str(manifest), str(py), "10", "2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out_dir = Path(env["FAKE_OUT"])
    deadline = time.time() + 60
    while time.time() < deadline and not (out_dir / "argv").exists():
        time.sleep(0.05)
    # the worker runs, so the script is past `trap requeue USR2`: the signal goes to the trap
    assert (out_dir / "argv").exists(), "the worker never started"
    proc.send_signal(signal.SIGUSR2)
    time.sleep(0.5)
    (out_dir / "go").touch()
    output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 7, output  # the worker's own status, after the trap ran
    assert (out_dir / "argv").read_text().splitlines() == ["-m", "cnnstress.worker", "--manifest", str(manifest),
                                                           "--index", "13"]
    assert (fake_slurm.calls("scontrol") == [["requeue", "4242"]]) == requeued, output
    assert ("cap of 2 reached" in output) != requeued


def test_array_script_refuses_bad_arguments(tmp_path, fake_slurm):
    env, py = _script_env(tmp_path, fake_slurm)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("{}\n")
    script = str(REPO / "slurm" / "array.sbatch")
    for argv, msg in (([str(manifest)], "usage"), ([str(tmp_path / "nope"), str(py)], "not a readable file"),
                      ([str(manifest), str(py), "1;rm"], "OFFSET must be a whole number")):
        res = subprocess.run(["bash", script, *argv], env=env, capture_output=True, text=True)
        assert res.returncode == 2 and msg in res.stderr
    res = subprocess.run(["bash", script, str(manifest), str(py)], env={**env, "SLURM_ARRAY_TASK_ID": ""},
                         capture_output=True, text=True)
    assert res.returncode == 2 and "not running as a job array task" in res.stderr


def test_array_script_index_past_the_manifest_is_refused_by_the_worker(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("{}\n{}\n")
    env = {**os.environ, "SLURM_JOB_ID": "1", "SLURM_ARRAY_TASK_ID": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run(["bash", str(REPO / "slurm" / "array.sbatch"), str(manifest), sys.executable, "1"],
                         env=env, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "index 2 is outside the manifest's 2 runs" in res.stderr


def test_gather_script_runs_the_launcher_with_the_launch_arguments(tmp_path, fake_slurm):
    env, py = _script_env(tmp_path, fake_slurm)
    (Path(env["FAKE_OUT"]) / "go").touch()
    setup = tmp_path / "setup's.sh"
    setup.write_text('echo "setup ran $UNSET_VARIABLE_OK"\n')
    res = subprocess.run(["bash", str(REPO / "slurm" / "gather.sbatch"), str(py), str(setup), "--grid", "a b.toml",
                          "--set", "x=1"], env=env, capture_output=True, text=True)
    assert res.returncode == 7 and "setup ran" in res.stdout
    assert (Path(env["FAKE_OUT"]) / "argv").read_text().splitlines() == [
        "-m", "cnnstress.launcher", "--grid", "a b.toml", "--set", "x=1", "--gather"]


def _task_line(argv: list[str], task: int, env: dict[str, str], fake_py: Path) -> RunSpec:
    """Run slurm/array.sbatch as task `task` of the array submitted with `argv` (the real script,
    with a stand-in python that records its arguments) and return the manifest line it hands to
    the worker."""
    script_at = argv.index(str(REPO / "slurm" / "array.sbatch"))
    script_args = [*argv[script_at + 1:]]
    script_args[1] = str(fake_py)
    res = subprocess.run(["bash", argv[script_at], *script_args], env={**env, "SLURM_ARRAY_TASK_ID": str(task)},
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 7, res.stderr
    worker_argv = (Path(env["FAKE_OUT"]) / "argv").read_text().splitlines()
    manifest, index = worker_argv[3], int(worker_argv[5])
    return RunSpec.from_json(Path(manifest).read_text().splitlines()[index])


def test_sbatch_relaunch_with_a_changed_grid_leaves_queued_tasks_on_their_runs(tmp_path, fake_slurm):
    # Launch 1 queues 4 runs; launch 2 of the same sweep adds seed 0 (runs sorted before the
    # queued ones). Every queued task of launch 1 must still train the run recorded for it.
    out = tmp_path / "out"
    env, py = _script_env(tmp_path, fake_slurm)
    (Path(env["FAKE_OUT"]) / "go").touch()
    first = _grid(tmp_path / "g1", seeds="[1, 2]")
    assert main(["--grid", str(first), "--cluster", "sbatch", "--out", str(out)]) == 0
    [launch1] = slurmctl.read_launches(out / "tiny")
    argv1 = ["sbatch", *fake_slurm.calls("sbatch")[0]]
    fake_slurm.set(squeue="".join(f"{j}|PENDING|Priority\n" for j in launch1.runs.values()))
    second = _grid(tmp_path / "g2", seeds="[0, 1, 2]")
    assert main(["--grid", str(second), "--cluster", "sbatch", "--out", str(out)]) == 0
    launch2 = slurmctl.read_launches(out / "tiny")[-1]
    assert len(launch2.runs) == 2 and not set(launch2.runs) & set(launch1.runs)
    # the sweep's manifest.jsonl now follows the new grid: its lines have moved
    sweep_ids = [RunSpec.from_json(x).run_id for x in (out / "tiny" / "manifest.jsonl").read_text().splitlines()]
    assert [sweep_ids.index(r) for r in launch1.runs] != list(range(4))
    for run_id, job in launch1.runs.items():
        assert _task_line(argv1, int(job.split("_")[1]), env, py).run_id == run_id
    argv2 = ["sbatch", *fake_slurm.calls("sbatch")[2]]
    for run_id, job in launch2.runs.items():
        assert _task_line(argv2, int(job.split("_")[1]), env, py).run_id == run_id
    # a manifest edited after submission is refused loudly instead of training another run
    manifest = Path(argv1[argv1.index(str(REPO / "slurm" / "array.sbatch")) + 1])
    manifest.chmod(0o644)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(reversed(lines)) + "\n")
    res = subprocess.run(["bash", str(REPO / "slurm" / "array.sbatch"), *argv1[-6:]],
                         env={**env, "SLURM_ARRAY_TASK_ID": "0"}, capture_output=True, text=True)
    assert res.returncode == 2 and "changed after submission" in res.stderr


def test_rerun_failed_resubmits_a_run_whose_job_left_squeue_without_a_result(tmp_path, fake_slurm, capsys):
    path = _grid(tmp_path)
    out = tmp_path / "o"
    grid = load_grid(path, out_root=out)
    assert main(["--grid", str(path), "--cluster", "sbatch", "--out", str(out)]) == 0
    [first] = slurmctl.read_launches(out / "tiny")
    # run 0 trained an epoch and its job was killed; Slurm has forgotten it; no accounting
    rd = out / "tiny" / "runs" / grid.runs[0].run_id
    rd.mkdir(parents=True)
    (rd / "checkpoint.pt").write_bytes(b"x")
    fake_slurm.set(squeue=f"{first.runs[grid.runs[1].run_id]}|RUNNING|None\n")
    assert main(["--grid", str(path), "--status", "--out", str(out)]) == 3  # a failed run
    assert f"its Slurm job {first.runs[grid.runs[0].run_id]} ended without a result" in capsys.readouterr().out
    assert main(["--grid", str(path), "--cluster", "sbatch", "--out", str(out), "--rerun-failed"]) == 0
    assert list(slurmctl.read_launches(out / "tiny")[-1].runs) == [grid.runs[0].run_id]


def test_concurrent_launches_never_lose_a_launches_line(tmp_path):
    # Two launches of one sweep may finish submitting at the same moment; each must keep its line
    # (a lost line is a job --status and --wait never learn about).
    n = 40
    code = ("import sys; from pathlib import Path; from cnnstress.cluster.slurmctl import Launch, record_launch\n"
            "for i in range(int(sys.argv[2])):\n"
            "    record_launch(Path(sys.argv[1]), Launch('sbatch', sys.argv[3], [str(i)], None, {f'{sys.argv[3]}-{i}': str(i)}))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(n), name], cwd=REPO)
             for name in ("a", "b", "c")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    got = slurmctl.read_launches(tmp_path)
    assert sorted(k for x in got for k in x.runs) == sorted(f"{w}-{i}" for w in "abc" for i in range(n))
    assert len((tmp_path / "launches.jsonl").read_text().splitlines()) == 3 * n


# ------------------------------------------------------------------------------------------------
# local execution: one GPU per run, named as the parent's CUDA_VISIBLE_DEVICES names it
# ------------------------------------------------------------------------------------------------

FAKE_WORKER = r'''
import json, os, sys, time
from cnnstress.config import RunSpec
spec = RunSpec.from_json(open(sys.argv[sys.argv.index("--spec") + 1]).read())
t0 = time.time()
time.sleep(1.0)
with open(os.path.join(os.environ["FAKE_GPU_OUT"], spec.run_id + ".json"), "w") as fh:
    json.dump({"device": os.environ.get("CUDA_VISIBLE_DEVICES"), "t0": t0, "t1": time.time()}, fh)
print(json.dumps({"run_id": spec.run_id, "status": "done"}))
'''


@pytest.mark.parametrize("visible, expect", [("2,3", ["2", "3"]), ("GPU-a1b2, GPU-c3d4", ["GPU-a1b2", "GPU-c3d4"]),
                                             ("1,-1,2", ["1"]), ("", [])])
def test_visible_gpus_are_the_parents_own_entries(visible, expect, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert local.visible_gpus() == expect


def test_nvidia_smi_list_gives_uuids_and_mig_instances():
    text = ("GPU 0: NVIDIA A100 (UUID: GPU-aa11)\n  MIG 1g.5gb Device 0: (UUID: MIG-bb22)\n"
            "  MIG 1g.5gb Device 1: (UUID: MIG-cc33)\nGPU 1: NVIDIA H100 (UUID: GPU-dd44)\n")
    assert local.parse_nvidia_smi_list(text) == ["MIG-bb22", "MIG-cc33", "GPU-dd44"]
    assert local.parse_nvidia_smi_list("") == []


@pytest.mark.parametrize("visible, max_parallel, devices, at_once", [
    ("2,3", 4, {"2", "3"}, 2),  # capped to the 2 GPUs, each run pinned to a physical one the parent has
    ("", 2, {""}, 2),  # no GPU: CPU runs, as many at once as asked
])
def test_local_runs_get_the_parents_gpus_one_each(tmp_path, monkeypatch, visible, max_parallel, devices, at_once):
    from rich.console import Console

    grid = load_grid(_grid(tmp_path, seeds="[1, 2]"), out_root=tmp_path / "o")  # 4 runs
    worker = tmp_path / "fake worker.py"
    worker.write_text(FAKE_WORKER)
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("FAKE_GPU_OUT", str(record))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    # this machine has no GPU: torch's count (asked in a child) stands in for the parent's two
    monkeypatch.setattr(local, "torch_gpu_count", lambda python=None: len([v for v in visible.split(",") if v]))
    console = Console(record=True, width=200)
    outcomes = local.run_local(grid.runs, tmp_path / "o" / "tiny", console, max_parallel, poll_s=0.05,
                                 task=local.LocalTrainTask([sys.executable, str(worker)]))
    assert [o.word for o in outcomes] == ["done"] * 4, [o.detail for o in outcomes]
    seen = [json.loads((record / f"{r.run_id}.json").read_text()) for r in grid.runs]
    assert {s["device"] for s in seen} == devices
    # no two runs share a GPU at the same time; no more runs at once than asked (or GPUs)
    for i, a in enumerate(seen):
        overlapping = [b for b in seen[i + 1:] if b["t0"] < a["t1"] and a["t0"] < b["t1"]]
        assert len(overlapping) < at_once
        if visible:
            assert all(b["device"] != a["device"] for b in overlapping)
    text = console.export_text()
    assert ("capped to 2: one run per visible GPU (2, 3)" in text) == bool(visible)


def _fake_python(tmp_path: Path, prints: str) -> str:
    """A stand-in for the child that asks torch: prints ``prints`` and leaves a marker."""
    exe = tmp_path / "fake python"
    marker = tmp_path / "asked"
    exe.write_text(f"#!/bin/sh\ntouch '{marker}'\necho {prints}\n")
    exe.chmod(0o755)
    return str(exe)


def test_local_gpu_census_counts_as_torch_does_and_warns_when_runs_would_fall_back_to_the_cpu(tmp_path, monkeypatch):
    """GPUs are counted by torch in a child process (nvidia-smi may be missing, torch may
    be a CPU build), and a machine that has a GPU torch cannot use says so loudly."""
    driver = tmp_path / "nvidiactl"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvidia-smi
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # no sign of a GPU: torch is not even asked
    census = local.local_gpu_census(_fake_python(tmp_path, "2"), device_files=[str(driver)])
    assert census == local.GpuCensus([], None, "") and not (tmp_path / "asked").exists()
    driver.write_text("")
    # the driver is there and torch sees two GPUs: indices, as CUDA numbers them
    assert local.local_gpu_census(_fake_python(tmp_path, "2"), device_files=[str(driver)]).devices == ["0", "1"]
    # the driver is there, torch sees none: loud, names the evidence
    census = local.local_gpu_census(_fake_python(tmp_path, "0"), device_files=[str(driver)])
    assert census.devices == [] and census.torch_count == 0
    assert "WARNING: this machine has a GPU (the NVIDIA driver is loaded" in census.warning
    assert "every run will train on the CPU" in census.warning
    # CUDA_VISIBLE_DEVICES entries are kept as far as torch sees them
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-ab12")
    assert local.local_gpu_census(_fake_python(tmp_path, "1"), device_files=[]).devices == ["3"]
    census = local.local_gpu_census(_fake_python(tmp_path, "0"), device_files=[])
    assert census.devices == [] and "CUDA_VISIBLE_DEVICES=3,GPU-ab12" in census.warning
    # CUDA_VISIBLE_DEVICES='' means the CPU on purpose: no child, no warning
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    (tmp_path / "asked").unlink()
    assert local.local_gpu_census(_fake_python(tmp_path, "2"), device_files=[str(driver)]) == local.GpuCensus([], None, "")
    assert not (tmp_path / "asked").exists()


def test_an_invalid_cuda_visible_devices_is_named_not_taken_for_a_gpu(tmp_path, monkeypatch):
    """CUDA_VISIBLE_DEVICES=garbage on a machine without a GPU was reported as 'this machine has a GPU
    ... a CPU-only torch build'. Only the driver's files are evidence of a GPU; the value is named as
    what it is, on a machine with a GPU and on one without."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvidia-smi
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "garbage")
    driver = tmp_path / "nvidiactl"
    without = local.local_gpu_census(_fake_python(tmp_path, "0"), device_files=[str(driver)])
    assert without.devices == [] and "this machine has a GPU" not in without.warning
    assert "CUDA_VISIBLE_DEVICES=garbage is not a valid device list ('garbage' is not a GPU index" in without.warning
    assert "this machine shows no NVIDIA GPU either" in without.warning and "\n" not in without.warning
    driver.write_text("")
    with_gpu = local.local_gpu_census(_fake_python(tmp_path, "0"), device_files=[str(driver)])
    assert "is not a valid device list" in with_gpu.warning and "hides every GPU of this machine" in with_gpu.warning
    # a valid-looking list on a machine without a driver: no claim of a GPU either
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    census = local.local_gpu_census(_fake_python(tmp_path, "0"), device_files=[str(tmp_path / "absent")])
    assert "this machine has a GPU" not in census.warning and "shows no NVIDIA driver" in census.warning


def test_torch_gpu_count_asks_the_real_torch_in_a_child():
    assert local.torch_gpu_count() == torch_device_count_here()


def torch_device_count_here() -> int:
    import torch

    return torch.cuda.device_count()


# ------------------------------------------------------------------------------------------------
# the backend interface: the registry is the only list, and the launcher calls only the interface
# ------------------------------------------------------------------------------------------------


def test_every_registered_backend_implements_the_interface():
    from cnnstress import cluster

    assert set(cluster.BACKENDS) == {"local", "debug", "slurm", "sbatch"}
    for name in cluster.BACKENDS:
        chosen = cluster.backend(name)
        assert isinstance(chosen, base.Backend) and chosen.name == name
    assert [cluster.backend(n).batch for n in ("local", "debug", "slurm", "sbatch")] == [False, False, True, True]
    with pytest.raises(ValueError, match="valid: local, debug, slurm, sbatch"):
        cluster.backend("kubernetes")


class _RecordingBackend(base.Backend):
    """A backend as a plugin author would write one: it 'runs' each run by writing nothing, and
    says so in the one handle every backend returns."""

    name = "record"

    def __init__(self):
        self.calls = []

    def check(self, slurm, sweep):
        if slurm.partition == "forbidden":
            raise ValueError("[slurm].partition: 'forbidden' is not allowed here")

    def plan(self, runs, ctx):
        return [f"would record {len(runs)} runs of {ctx.sweep}"]

    def submit(self, runs, ctx):
        self.calls.append([r.run_id for r in runs])
        return base.Handle(self, ctx.sweep_dir, tuple(r.run_id for r in runs),
                           {r.run_id: base.Outcome(r.run_id, "done") for r in runs})


def test_a_new_backend_is_one_class_and_one_registry_line(tmp_path, monkeypatch, capsys):
    from cnnstress import cluster

    recording = _RecordingBackend()
    monkeypatch.setitem(cluster.BACKENDS, "record", "tests:unused")  # the one registry line
    monkeypatch.setitem(cluster._LOADED, "record", recording)  # (instead of importing a module)
    grid = _grid(tmp_path)
    out = tmp_path / "o u t's"
    assert main(["--grid", str(grid), "--cluster", "record", "--out", str(out), "--dry-run"]) == 0
    assert "would record 2 runs of tiny" in capsys.readouterr().out
    assert main(["--grid", str(grid), "--cluster", "record", "--out", str(out), "--no-gather"]) == 0
    assert len(recording.calls) == 1 and len(recording.calls[0]) == 2
    rc = main(["--grid", str(grid), "--cluster", "record", "--out", str(out), "--set", "slurm.partition=forbidden"])
    assert rc == 2 and "[slurm].partition: 'forbidden'" in capsys.readouterr().err
    assert len(recording.calls) == 1  # refused before anything ran


class _QueueBackend(base.Backend):
    """A toy scheduler: submit queues the runs and returns; wait 'runs' them, as a batch system
    would, leaving the states it was told to."""

    name = "queue"

    def __init__(self, end_state: str = "done"):
        self.end_state, self.queued, self.waited = end_state, {}, 0

    def plan(self, runs, ctx):
        return []

    def submit(self, runs, ctx):
        self.queued = {r.run_id: "pending" for r in runs}
        return base.Handle(self, ctx.sweep_dir, tuple(self.queued))

    def states(self, handle):
        return {r: self.queued[r] for r in handle.run_ids}

    def wait(self, handle, console):
        self.waited += 1
        self.queued = {r: self.end_state for r in self.queued}


@pytest.mark.parametrize("end_state, rc", [("done", 0), ("failed", 1)])
def test_a_queueing_backend_goes_the_launchers_one_way(tmp_path, monkeypatch, capsys, end_state, rc):
    """submit returns a handle that is not finished: the launcher says how to follow it and returns,
    or with --wait waits on the handle and judges its states(); nothing asks which kind it is."""
    from cnnstress import cluster

    queue = _QueueBackend(end_state)
    monkeypatch.setitem(cluster.BACKENDS, "queue", "tests:unused")
    monkeypatch.setitem(cluster._LOADED, "queue", queue)
    grid, out = _grid(tmp_path), tmp_path / "o u t's"
    assert main(["--grid", str(grid), "--cluster", "queue", "--out", str(out), "--no-gather"]) == 0
    assert "follow with:" in capsys.readouterr().out and queue.waited == 0 and set(queue.queued.values()) == {"pending"}
    assert main(["--grid", str(grid), "--cluster", "queue", "--out", str(out), "--no-gather", "--wait"]) == rc
    assert queue.waited == 1 and set(queue.queued.values()) == {end_state}


def test_sbatch_wait_follows_the_handle_then_shows_every_run_and_misses_the_report(tmp_path, fake_slurm, capsys):
    """--wait on a real backend's handle: squeue no longer lists the jobs and no run wrote a result,
    so every run reads as failed, the status table says so and the gather job's report is missing."""
    out = tmp_path / "o u t's"
    path = _grid(tmp_path, seeds="[1, 2]")  # 2 variants x 2 seeds
    assert main(["--grid", str(path), "--cluster", "sbatch", "--out", str(out), "--wait"]) == 1
    printed = capsys.readouterr()
    launch = slurmctl.read_launches(out / "tiny")[0]
    assert printed.out.count("ended (gone from squeue)") == 4 and "failed: 4" in printed.out, printed.out
    assert f"the gather job {launch.gather} did not write" in printed.out.replace("\n", "")
    assert "follow with" not in printed.out and printed.err == ""


def test_every_backend_returns_the_one_handle_in_the_one_vocabulary(tmp_path, fake_slurm, monkeypatch):
    """debug and local run their runs before submit returns (here: already finished, so skipped);
    slurm and sbatch queue them. Every submit returns a base.Handle whose states() are states.py's."""
    from rich.console import Console

    from cnnstress import cluster, states
    from synth import make_sweep

    made = make_sweep(tmp_path / "s w'eep", variants=("baseline",), seeds=(1,), corruptions=())
    runs = [r.spec for r in made.runs]
    ctx = base.LaunchContext(made.grid.name, made.sweep_dir, made.grid.slurm, Console(width=200, quiet=True),
                             ["--grid", "g.toml"])
    seen = {}
    for name in cluster.BACKENDS:
        handle = cluster.backend(name).submit(runs, ctx)
        assert type(handle) is base.Handle and handle.backend is cluster.backend(name), name
        assert handle.run_ids == tuple(r.run_id for r in runs), name
        seen[name] = handle.states()
        assert set(seen[name].values()) <= set(states.ALL), f"{name}: {seen[name]}"
        if handle.finished:  # ran here: wait() has nothing left to follow and returns at once
            handle.wait(Console(quiet=True))
    assert seen["debug"] == seen["local"] == {runs[0].run_id: "done"}
    # the finished run was not trained again: the outcome says so in its display word
    assert [o.word for o in cluster.backend("debug").submit(runs, ctx).outcomes.values()] == ["skipped"]
    for name in ("slurm", "sbatch"):  # done on disk wins over whatever squeue says about its job
        assert seen[name] == {runs[0].run_id: "done"}
    # an unfinished run whose job Slurm has queued reads as pending, and as failed once its job left the queue
    (made.sweep_dir / "runs" / runs[0].run_id / "DONE.json").unlink()
    handle = cluster.backend("sbatch").submit(runs, ctx)
    fake_slurm.set(squeue=f"{handle.job_of(runs[0].run_id)}|PENDING|Priority\n")
    assert handle.states() == {runs[0].run_id: "pending"}
    fake_slurm.set(squeue="")
    assert handle.states() == {runs[0].run_id: "failed"}


def test_an_outcome_speaks_the_state_vocabulary():
    with pytest.raises(ValueError, match="Outcome.state 'busy': allowed: done, failed, broken"):
        base.Outcome("r", "busy")
    assert [base.Outcome("r", s).word for s in ("done", "failed", "running")] == ["done", "failed", "busy"]
    assert base.Outcome.of_result("r", {"status": "skipped"}).word == "skipped"
    assert base.Outcome.of_result("r", {"status": "done"}).state == "done"


def test_the_local_backend_loads_no_slurm_module():
    """--cluster local and debug run without the Slurm backends' code (submitit's LocalExecutor only)."""
    slurm_side = ("cnnstress.cluster.slurmctl", "cnnstress.cluster.status", "cnnstress.cluster.slurm",
                  "cnnstress.cluster.sbatch")
    assert loaded_by("cnnstress.cluster.local", slurm_side) == []


def test_names_on_disk_are_spelt_only_in_layout():
    """sbatch/, slurm-logs/, submitit/ and report/ are named once, in layout.py: a backend or the
    launcher that spells one itself would drift from what --status, gather and the docs expect."""
    from cnnstress import layout

    spelt = re.compile(r"""["'](slurm-logs|submitit|sbatch|report|index\.html|figures)["']\s*(\)|$|/)"""
                       r"""|/ ["'](sbatch|submitit|report)["']""")
    files = [*sorted((REPO / "cnnstress" / "cluster").glob("*.py")), REPO / "cnnstress" / "launcher.py"]
    found = [f"{f.name}:{n}: {line.strip()}" for f in files for n, line in enumerate(f.read_text().splitlines(), 1)
             if spelt.search(line) and not line.strip().startswith(("name = ", '"sbatch": '))]  # backend names
    assert found == [], found
    assert (layout.SBATCH_DIR, layout.SLURM_LOGS_DIR, layout.SUBMITIT_DIR, layout.REPORT_DIR) == (
        "sbatch", "slurm-logs", "submitit", "report")


def test_submitit_and_sbatch_spell_one_request(tmp_path):
    """The [slurm] table is read once (slurmctl.job_request); both backends ask for the same job."""
    from cnnstress.config import SlurmConfig

    cfg = SlurmConfig(partition="gpu", account="lab", qos="high", constraint="a100", time_min=90, gpus_per_task=1,
                      cpus_per_task=6, mem_gb=12.5, array_parallelism=9, signal_delay_s=200, gather_time_min=15,
                      gather_cpus=3, gather_mem_gb=4.0, additional=(("mail_type", "END"),))
    params = slurm.submitit_parameters(cfg, "s")
    argv = sbatch.sbatch_array_argv(cfg, "s", tmp_path, tmp_path / "m.jsonl", "python", 0, [0, 1])
    assert (params["time"], params["cpus_per_task"], params["mem"], params["gpus_per_node"]) == (90, 6, "12800MB", 1)
    for opt in ("--time=90", "--cpus-per-task=6", "--mem=12800M", "--gres=gpu:1", "--partition=gpu",
                "--account=lab", "--qos=high", "--constraint=a100", "--signal=B:USR2@200", "--mail-type=END"):
        assert opt in argv
    assert (params["partition"], params["account"], params["qos"], params["constraint"]) == ("gpu", "lab", "high", "a100")
    assert params["signal_delay_s"] == 200 and params["additional_parameters"]["mail_type"] == "END"
    gather = slurm.gather_parameters(cfg, "s", "afterany:1")
    gargv = sbatch.sbatch_gather_argv(cfg, "s", tmp_path, "python", "afterany:1", [])
    assert (gather["time"], gather["cpus_per_task"], gather["mem"]) == (15, 3, "4GB")
    assert "gpus_per_node" not in gather and "constraint" not in gather and "signal_delay_s" not in gather
    assert {"--time=15", "--cpus-per-task=3", "--mem=4G"} <= set(gargv)
    assert not any(a.startswith(("--gres", "--constraint", "--signal")) for a in gargv)


# --- symbolic links in a sweep folder ------------------------------------------------------------


def test_a_linked_launch_record_is_never_written_through(tmp_path):
    """launches.jsonl.lock is opened in place (refused when a link); launches.jsonl is replaced,
    which replaces a link instead of writing to its target."""
    sweep = tmp_path / "sweep 'x'"
    sweep.mkdir()
    target = _outside(tmp_path)
    a = Launch("slurm", "/x/f1", ["1"], "2", {"r1": "1_0"}, "t1")
    (sweep / "launches.jsonl.lock").symlink_to(target)
    with pytest.raises(atomic.LinkRefused, match="launches.jsonl.lock is a symbolic link; cnnstress does not write"):
        slurmctl.record_launch(sweep, a)
    assert _untouched(target) and not (sweep / "launches.jsonl").exists()
    (sweep / "launches.jsonl.lock").unlink()
    (sweep / "launches.jsonl").symlink_to(target)
    slurmctl.record_launch(sweep, a)
    assert _untouched(target) and not (sweep / "launches.jsonl").is_symlink()
    # the target's bytes were read as the old lines (not JSON: skipped); the new line is the only launch
    assert [x.to_dict() for x in slurmctl.read_launches(sweep)] == [a.to_dict()]


@pytest.mark.parametrize("name", ["launches.jsonl.lock", "runs"])
def test_a_launch_into_a_sweep_with_a_link_stops_before_submitting_with_one_line(tmp_path, fake_slurm, capsys, name):
    path = _grid(tmp_path)
    out = tmp_path / "o"
    (out / "tiny").mkdir(parents=True)
    target = _outside(tmp_path) if name != "runs" else tmp_path / "elsewhere"
    if name == "runs":
        target.mkdir()
    (out / "tiny" / name).symlink_to(target)
    for cluster in ("sbatch", "debug"):
        assert main(["--grid", str(path), "--cluster", cluster, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == (f"error: {out / 'tiny' / name} is a symbolic link; cnnstress does not write through links "
                       "in a run or sweep folder: remove it\n"), err
    assert fake_slurm.calls("sbatch") == [] and slurmctl.read_launches(out / "tiny") == []
    if name == "runs":
        assert list(target.iterdir()) == []
    else:
        assert _untouched(target)


HOLD_CLAIM = """
import sys, time
from pathlib import Path
from cnnstress.claims import claim
with claim(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_busy_local_run_names_the_pid_and_host_holding_it(tmp_path, capsys):
    """Two local launches on one run: the one that loses says who holds it, not a log path."""
    import socket

    from rich.console import Console

    out = tmp_path / "o"
    grid = load_grid(_grid(tmp_path), out_root=out, data_root=REPO / "scratch" / "test-data")
    spec = grid.runs[0]
    rd = out / "tiny" / "runs" / spec.run_id
    rd.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, str(rd)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        [oc] = local.run_local([spec], out / "tiny", Console(width=200), 1, poll_s=0.1)
    finally:
        holder.kill()
        holder.wait()
    said = f"run {spec.run_id} is claimed by pid {holder.pid} on {socket.gethostname()} since "
    assert oc.state == "running" and oc.word == "busy" and oc.detail.startswith(said), oc.detail
    assert said in capsys.readouterr().out
    assert store.run_state(rd).status == "missing"  # nothing written for a run someone else trains


def test_status_says_which_stage_a_running_run_is_in(tmp_path, capsys):
    out = tmp_path / "o"
    path = _grid(tmp_path)
    spec = load_grid(path, out_root=out).runs[0]
    rd = out / "tiny" / "runs" / spec.run_id
    rd.mkdir(parents=True)
    store.update_progress(rd, stage="corruptions", stage_started=time.time() - 42)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, str(rd)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["--grid", str(path), "--status", "--out", str(out)]) == 0
    finally:
        holder.kill()
        holder.wait()
    said = capsys.readouterr().out
    assert re.search(r"stage corruptions \(4[2-9]s\)", said), said
    # a progress.json that is not ours to trust is shown as nothing, never a traceback
    (rd / "progress.json").write_text('{"stage": ["x"], "stage_started": "soon"}')
    assert store.progress_stage(rd) == ""


def test_rerun_failed_with_nothing_to_submit_rebuilds_a_missing_or_stale_report(tmp_path, fake_slurm, capsys):
    path = _grid(tmp_path)
    out = tmp_path / "o"
    data = ["--data-root", str(REPO / "scratch" / "test-data")]
    lean = [a for k, v in LEAN_STRESS.items() for a in ("--set", f"stress.{k}={v}")]
    assert main(["--grid", str(path), "--cluster", "debug", "--out", str(out), "--no-gather", "--set", "epochs=1",
                 *data, *lean]) == 0
    capsys.readouterr()
    rerun = ["--grid", str(path), "--cluster", "sbatch", "--out", str(out), "--rerun-failed", "--set", "epochs=1",
             *data, *lean]
    assert main(rerun) == 0
    said = capsys.readouterr().out
    assert "nothing to submit; the report is older than the finished runs: rebuilding it here" in said
    assert (out / "tiny" / "report" / "index.html").is_file() and fake_slurm.calls("sbatch") == []
    assert main(rerun) == 0  # now current: nothing to do
    assert "nothing to submit\n" in capsys.readouterr().out


def test_slurm_dry_run_prints_the_array_and_the_gather_scripts(tmp_path, fake_slurm, capsys):
    path = _grid(tmp_path, FULL_SLURM, seeds="[1, 2]")
    out = tmp_path / "o"
    fake_slurm.set(max_array=3)
    assert main(["--grid", str(path), "--cluster", "slurm", "--dry-run", "--out", str(out), "--set", "epochs=1"]) == 0
    printed = capsys.readouterr().out
    assert "as 2 submitit job array(s) (MaxArraySize 3, read from scontrol show config)" in " ".join(printed.split())
    gather_part = printed.split("the gather job's sbatch script", 1)[1]
    assert "#SBATCH --dependency='afterany:<array 1 id>:<array 2 id>'" in gather_part
    assert "#SBATCH --job-name=cnnstress-tiny-gather" in gather_part and "--gpus" not in gather_part
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# several runs in one task ([slurm].runs_per_task): packing, the dry run's GPU-hours
# ------------------------------------------------------------------------------------------------


def _fake_runs(models: list[str]) -> list:
    from types import SimpleNamespace

    return [SimpleNamespace(model=SimpleNamespace(name=m)) for m in models]


def test_expected_hours_from_finished_runs_against_a_hand_count():
    runs = _fake_runs(["simple_cnn", "simple_cnn", "resnet18", "simple_cnn"])
    alone = [("simple_cnn", 1, 100.0), ("simple_cnn", 1, 300.0), ("resnet18", 1, 1000.0)]
    # trained alone only: medians 200 s (simple_cnn) and 1000 s; packs [200, 200] and [1000, 200]
    low, high, how = slurmctl.expected_hours(runs, 2, alone)
    assert (low, high) == pytest.approx(((200 + 1000) / 3600, (200 + 200 + 1000 + 200) / 3600))
    assert "none trained 2 at once yet" in how
    assert slurmctl.expected_hours(runs, 1, alone)[:2] == pytest.approx((1600 / 3600, 1600 / 3600))
    # timed at this packing: a task lasts as long as its slowest run; a model not timed takes the median of all
    packed = [*alone, ("simple_cnn", 2, 250.0), ("simple_cnn", 2, 350.0)]
    low, high, how = slurmctl.expected_hours(runs, 2, packed)
    assert low == high == pytest.approx((300 + 300) / 3600) and "2 finished run(s) trained 2 at once" in how
    assert slurmctl.expected_hours(runs, 2, []) is None
    assert [len(p) for p in slurmctl.packs(list(range(7)), 3)] == [3, 3, 1]


def test_finished_timings_read_done_runs_only(tmp_path):
    from synth import make_sweep

    sweep = make_sweep(tmp_path, seeds=(1, 2), failed={("baseline", 2): "MemoryError: x"}, corrupt={("cropflip", 2)})
    done = [r for r in sweep.runs if r.status == "done"]
    for i, r in enumerate(done):
        sha = store.read_done(r.run_dir)["results_sha256"]
        store.write_done(r.run_dir, {"total_s": 60.0 * (i + 1), "runs_at_once": 2}, sha)
    assert slurmctl.finished_timings(sweep.sweep_dir) == [("simple_cnn", 2, 60.0 * (i + 1)) for i in range(len(done))]
    lines = slurmctl.packing_lines(sweep.grid.runs, sweep.grid.slurm, sweep.sweep_dir)
    assert lines == [f"expected GPU-hours at runs_per_task = 1: {4 * 90 / 3600:.2f} (4 task(s); from the median time "
                     f"of 2 finished run(s) trained 2 at once: sharing slows a run, so this is an upper bound)"]


def test_a_dry_run_says_how_runs_are_packed_and_what_they_will_cost(tmp_path, capsys):
    path = _grid(tmp_path, seeds="[1, 2]")
    args = ["--grid", str(path), "--out", str(tmp_path / "o"), "--data-root", str(REPO / "scratch" / "test-data"),
            "--dry-run", "--set", "slurm.mem_gb=4", "--set", "slurm.runs_per_task=3"]
    assert main([*args, "--cluster", "sbatch"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("3 runs at once in each array task: 2 task(s) for 4 runs, each task's 1 CPUs split into 1 thread(s) a run, "
            "mem_gb 4 for the whole task; the runs share the GPU by time-slicing") in out
    assert "expected task-hours (1 CPUs each, no GPU): not known until a run of this sweep has finished" in out
    assert "RUNS_PER_TASK=3 MPS=0" in out
    assert main([*args, "--cluster", "slurm"]) == 0
    assert "3 runs at once in each array task" in capsys.readouterr().out
    # MPS without packing, or without a GPU, is refused with the key named
    assert main([*args[:-2], "--cluster", "sbatch", "--set", "slurm.mps=true"]) == 2
    assert "[slurm].mps: true needs [slurm].runs_per_task of 2 or more" in capsys.readouterr().err
    assert main([*args, "--cluster", "sbatch", "--set", "slurm.mps=true"]) == 2
    assert "[slurm].mps: true needs [slurm].gpus_per_task = 1" in capsys.readouterr().err
