#!/usr/bin/env bash
# What `make test` runs: the live-Slurm tests (marked `slurm`; mostly waiting on the dev cluster)
# beside the rest of the suite, which keeps the 2 cores busy meanwhile. The live-Slurm tests still
# run one after another in file order, as they must: some restart the cluster's daemons. Each half's
# output is printed whole once both have ended; the exit status is 0 only when both passed.
# Usage: tests/run.sh PYTHON [pytest arguments...]
set -u
py=${1:?usage: tests/run.sh PYTHON [pytest arguments...]}
shift
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
"$py" -m pytest -q -ra -p no:cacheprovider -m slurm "$@" >"$logs/slurm.log" 2>&1 &
slurm_pid=$!
# the rest on two pytest-xdist workers, a test file each at a time (module fixtures stay in one
# worker): much of their time is worker processes starting, which two at a time overlap
"$py" -m pytest -q -ra --durations=15 -n 2 --dist loadfile -m "not slurm" "$@" >"$logs/rest.log" 2>&1
rest=$?
wait "$slurm_pid"
slurm=$?
# 5: no test selected (arguments that deselect one half entirely)
[ "$slurm" -eq 5 ] && slurm=0
[ "$rest" -eq 5 ] && rest=0
echo "== the live-Slurm tests (pytest -m slurm)"
cat "$logs/slurm.log"
echo "== every other test (pytest -m 'not slurm')"
cat "$logs/rest.log"
[ "$rest" -eq 0 ] && [ "$slurm" -eq 0 ]
