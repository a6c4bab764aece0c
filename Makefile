# Two entry points, each of which works alone on a fresh machine:
#   make demo   create .venv, install the project with the training extras, run the main job
#   make test   create .venv, install the project with the test extras, lint, run the doctests and the
#               test suite, build the docs (warnings as errors)
#   make gpu-check  on a CUDA machine: create .venv (CUDA torch), the tests marked gpu and the GPU
#               benchmarks in <= 8 minutes, one table benchmarks/results/gpu.md (no CUDA: says so, exits 0);
#               GPU_PYTHON=python3 runs it with an interpreter that already holds CUDA torch (no venv, no installs)
PYTHON ?= python3
# pip installs without byte-compiling (--no-compile: 90 s -> 42 s of set-up on 2 cores); Python compiles
# only the modules it imports, once, so it must be allowed to write them: a caller's
# PYTHONDONTWRITEBYTECODE=1 would make every process recompile torch (+4-5 s each).
unexport PYTHONDONTWRITEBYTECODE
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO_OUT ?= demo_out
RUN ?= runs/tiny

.PHONY: demo test test-fast lint doctest docs format notebooks figures bench bench-results gpu-check gpu-check-dry clean

$(VENV)/.created:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile --upgrade pip
	# CPU wheel of torch where no NVIDIA GPU is present (an unpinned torch pulls a multi-GB CUDA build).
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	    $(PY) -m pip install -q --no-compile torch; \
	else \
	    $(PY) -m pip install -q --no-compile torch==2.13.0; \
	fi
	touch $@

# the analysis library plus what prism_train needs
$(VENV)/.train: pyproject.toml $(VENV)/.created
	$(PY) -m pip install -q --no-compile -e '.[train]'
	touch $@

# ... plus pytest, hypothesis, ruff, the notebook runner
$(VENV)/.test: pyproject.toml $(VENV)/.created
	$(PY) -m pip install -q --no-compile -e '.[test]'
	touch $@

# The main job: the miniature PRISM study (tiny preset: 12-14 minutes on an idle 2-core machine, 16 on a busier one).
demo: $(VENV)/.train
	$(VENV)/bin/prism reproduce --preset tiny --out $(DEMO_OUT)

test: lint doctest docs
	$(PY) -m pytest tests --durations=15

# The >>> examples of the public entry points, module by module.
DOCTEST_MODULES := \
	prism_analysis/__init__.py \
	prism_analysis/metrics.py \
	prism_analysis/errors.py \
	prism_analysis/representations/cka.py \
	prism_analysis/checkpoints/opening.py \
	prism_analysis/weights/audit.py \
	prism_analysis/weights/update.py

doctest: $(VENV)/.test
	$(PY) -m pytest --doctest-modules -p no:cacheprovider $(DOCTEST_MODULES)

# The docs site: docs/_build/html/index.html. Warnings (a broken link, a bad docstring) are errors.
docs: $(VENV)/.test
	$(VENV)/bin/sphinx-build -q -W --keep-going -b html docs docs/_build/html

# the edit-test loop: everything but the tests marked slow
test-fast: $(VENV)/.test
	$(PY) -m pytest tests -m "not slow"

lint: $(VENV)/.test
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(VENV)/.test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Rewrite and run the notebooks (outputs committed; tests/test_notebooks.py checks they are current).
notebooks: $(VENV)/.test
	$(PY) notebooks/make_notebooks.py --execute

# Redraw figures/ from a run's saved tables (or from figures/run/ in a fresh clone); never retrains.
figures: $(VENV)/.train
	$(VENV)/bin/prism figures --run $(RUN) --into figures

bench: $(VENV)/.test
	$(PY) benchmarks/audit.py --quick
	$(PY) benchmarks/cka.py --quick
	$(PY) benchmarks/spectral.py --quick
	$(PY) benchmarks/similarity.py --quick
	$(PY) benchmarks/trajectory.py --quick
	$(PY) benchmarks/startup.py --quick

# The Markdown tables the docs include (docs/performance.md): the audit and CKA benchmarks at --quick sizes,
# the start-up of a tiny audit.
bench-results: $(VENV)/.test
	$(PY) benchmarks/audit.py --quick --markdown benchmarks/results/audit.md
	$(PY) benchmarks/cka.py --quick --markdown benchmarks/results/cka.md
	$(PY) benchmarks/startup.py --tiny --repeat 7 --markdown benchmarks/results/startup.md

# The GPU check (docs/performance.md, "GPU check"): on a machine with CUDA, .venv gets the unpinned (CUDA)
# torch of the .created rule; the `bench` extra's peers are tried (no network: the CKA step compares with a
# naive torch loop only). Budget 480 s: tests 150, audit 60 (+ 40 on the CPU), CKA 40, tracking 110, study 80.
# GPU_PYTHON=python3: use that interpreter as it is (a GPU image whose python already holds CUDA torch, no package
# registry reachable): the repository goes on PYTHONPATH, nothing is installed. GPU_BUDGET: seconds for the whole check.
GPU_PYTHON ?=
GPU_BUDGET ?= 480
GPU_RUN := $(if $(GPU_PYTHON),PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON),$(PY))
gpu-check: $(if $(GPU_PYTHON),,$(VENV)/.test)
	$(if $(GPU_PYTHON),,$(PY) -m pip install -q --retries 0 --timeout 15 --no-deps ckatorch cka-pytorch 2>/dev/null || echo "gpu-check: bench extra not installable; CKA vs a naive torch loop only")
	$(GPU_RUN) benchmarks/gpu_check.py --budget $(GPU_BUDGET)

# the same pipeline on the CPU at tiny sizes (plumbing only): bench_out/gpu_check/gpu.md
gpu-check-dry: $(if $(GPU_PYTHON),,$(VENV)/.test)
	$(GPU_RUN) benchmarks/gpu_check.py --dry-run

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache docs/_build docs/cli.md docs/api/generated
