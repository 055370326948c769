from __future__ import annotations

import json
import subprocess
import sys

from cnnstress.config import RunSpec, spec_diff
from cnnstress.grid import load_grid

from conftest import REPO


def test_runspec_round_trips_through_json_exactly(tiny_grid):
    for spec in load_grid(tiny_grid).runs:
        again = RunSpec.from_json(spec.to_json())
        assert again == spec
        assert again.to_json() == spec.to_json()
        assert again.run_id == spec.run_id


def test_run_id_is_readable_and_stable_across_processes(tiny_grid, tmp_path):
    runs = load_grid(tiny_grid, out_root=tmp_path / "a").runs
    ids = [r.run_id for r in runs]
    assert ids[0].startswith("baseline-s1-") and ids[1].startswith("flip-s1-")
    # same spec elsewhere (another output root, another process, another hash seed) -> same id
    code = ("import sys; from cnnstress.grid import load_grid; "
            "print(' '.join(r.run_id for r in load_grid(sys.argv[1], out_root=sys.argv[2]).runs))")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_grid), str(tmp_path / "b")], cwd=REPO,
                         capture_output=True, text=True, env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"},
                         check=True).stdout.split()
    assert out == ids


def test_run_id_changes_with_any_identity_field(tiny_grid):
    base = load_grid(tiny_grid).runs[0]
    other = load_grid(tiny_grid, overrides=["optimizer.lr=0.002"]).runs[0]
    assert base.run_id != other.run_id
    moved = load_grid(tiny_grid, out_root="/elsewhere", data_root="/data").runs[0]
    assert moved.run_id == base.run_id  # where files live is not identity


def test_config_imports_no_torch():
    code = "import sys, cnnstress.config, cnnstress.grid, cnnstress.catalog; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_spec_diff_shows_only_the_modification(tiny_grid):
    base, flip = load_grid(tiny_grid).runs
    diff = spec_diff(base, flip)
    assert list(diff) == ["train.augment"]
    assert diff["train.augment"] == ([], ["flip(p=0.5)"])
    assert json.dumps(base.to_dict())  # plain JSON types only
