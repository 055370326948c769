# make demo: create .venv if missing, install, run the embedded demo grid to a report.
# make test: create .venv if missing, install, run the test suite.
# make gpu-check: on a CUDA machine, the GPU acceptance checks (docs/performance.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench gpu-check clean-demo venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch/torchvision unpinned: pip takes the newest release it is offered
	# the tensorboard, timm and autoattack extras too, so that tests/test_tensorboard.py, the timm
	# tests of tests/test_own_model.py and tests/test_autoattack.py run (they skip without the package)
	$(PY) -m pip install --quiet -e '.[test,tensorboard,timm,autoattack]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) launch.py --grid jobs/demo.toml --cluster local

# the live-Slurm tests run beside the others (tests/run.sh): the suite takes the longer of the two
test: $(STAMP)
	bash tests/run.sh $(PY) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow and not slurm" $(PYTEST_ARGS)

# gpu_check.py and chaos.py have their own targets (they run for minutes and judge; they do not benchmark)
bench: $(STAMP)
	@for b in bench/[!_]*.py; do case $$b in bench/gpu_check.py|bench/chaos.py) continue;; esac; echo "== $$b"; $(PY) $$b || exit 1; done

# on a machine with a CUDA GPU: the GPU acceptance checks (< 8 min); without one: one line, exit 0;
# on a machine that shows a GPU (driver, nvidia-smi, CUDA_VISIBLE_DEVICES) that torch cannot use: exit 1
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py

clean-demo:
	rm -rf scratch/demo

# on the dev Slurm cluster (root, slurm/dev-cluster.sh up): the chaos soak, ~15 min
# (docs/reliability.md); `make chaos CHAOS_ARGS=--quick` for the few-minute one; without a cluster: one line, exit 0
.PHONY: chaos
chaos: $(STAMP)
	$(PY) bench/chaos.py $(CHAOS_ARGS)
