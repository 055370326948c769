"""slurm/dev-cluster.sh itself, on the live dev cluster. Runs after tests/test_slurm.py (file order)
so that restarting the daemons cannot disturb the jobs those tests submit.

CI starts on a machine whose files survived from an earlier run but whose processes did not:
the script's pid records then name daemons that are gone. An `up` that took those for daemons that
had just died failed CI once (``slurmctld (pid 15091) died while waiting for slurmdbd``).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slurm

SCRIPT = REPO / "slurm" / "dev-cluster.sh"
PID_DIR = Path("/var/lib/slurm-dev/pids")


def _script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def live_dev_cluster():
    if os.geteuid() != 0 or _script("status").returncode != 0 or not PID_DIR.is_dir():
        reason = "the dev cluster is not up here (or not run by this script as root)"
        if os.environ.get("CNNSTRESS_REQUIRE_SLURM") == "1":
            pytest.fail(f"CNNSTRESS_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    yield
    # Whatever happened above, leave the cluster up for whoever runs next.
    if _script("status").returncode != 0:
        _script("up")


def _squeue() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, timeout=30)
    return out.stdout.splitlines()


def _sbatch(*options: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", "-p", "debug", "-t", "10", "--mem=100M", "-o", "/dev/null",
                          *options, "--wrap", "sleep 600"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def _pids_of_job(job: str) -> list[int]:
    """The job's processes and their slurmstepd: what a reboot would kill."""
    listed = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True, timeout=30).stdout
    pids = [int(line.split()[0]) for line in listed.splitlines()[1:] if line.split()]
    steps = subprocess.run(["pgrep", "-f", f"slurmstepd: \\[{job}\\."], capture_output=True, text=True).stdout
    return pids + [int(p) for p in steps.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def test_up_after_a_reboot_forgets_dead_daemons_and_starts_them_again(live_dev_cluster):
    deadline = time.time() + 120
    while _squeue() and time.time() < deadline:
        time.sleep(1)
    assert not _squeue(), f"jobs still queued or running: {_squeue()}"
    records = {p.stem: p.read_text() for p in PID_DIR.glob("*.pid")}
    assert {"slurmctld", "slurmd"} <= records.keys()
    # Jobs the reboot interrupts: one running (both CPUs), one queued behind it.
    jobs = [_sbatch("--cpus-per-task=2"), _sbatch("--cpus-per-task=1")]
    deadline = time.time() + 60
    while f"{jobs[0]} RUNNING" not in _squeue() and time.time() < deadline:
        time.sleep(0.5)
    assert sorted(_squeue()) == sorted([f"{jobs[0]} RUNNING", f"{jobs[1]} PENDING"]), _squeue()
    job_pids = _pids_of_job(jobs[0])
    assert job_pids
    # A reboot, as CI sees it: every daemon and job process gone, the daemons' records and the
    # controller's saved state still there. The daemons are stopped cleanly rather than SIGKILLed:
    # a SIGKILLed slurmctld loses its last seconds of job state.
    down = _script("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(_alive(int(pid)) for pid in records.values())
    for pid in job_pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    for daemon, pid in records.items():
        (PID_DIR / f"{daemon}.pid").write_text(pid)
    assert _script("status").returncode == 1  # really down

    up = _script("up")
    assert up.returncode == 0, up.stdout + up.stderr
    for daemon, pid in records.items():
        assert f"forgetting {daemon} (pid {pid.strip()})" in up.stdout
    # the running job would otherwise stay RUNNING on the node as a ghost, holding its CPUs
    assert f"cancelling jobs left from before the restart (their processes died with it): {jobs[0]} {jobs[1]}" \
        in up.stdout, up.stdout
    assert _squeue() == []
    assert _script("status").returncode == 0
    new = {p.stem: p.read_text() for p in PID_DIR.glob("*.pid")}
    assert new.keys() == records.keys() and all(new[d] != records[d] for d in records)
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    assert sinfo.stdout.split() == ["idle"], sinfo.stdout
    job = subprocess.run(["srun", "-p", "debug", "-n", "1", "-c", "1", "--mem=100M", "-t", "1",
                          "hostname", "-s"], capture_output=True, text=True, timeout=120)
    assert job.returncode == 0 and job.stdout.strip(), job.stdout + job.stderr
