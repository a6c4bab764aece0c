# Two entry points, each of which works alone on a fresh machine:
#   make demo   create .venv, install the project with the training extras, run the main job
#   make test   create .venv, install the project with the test extras, lint, run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO_OUT ?= demo_out
RUN ?= runs/tiny

.PHONY: demo test test-fast lint format notebooks figures bench clean

$(VENV)/.created:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU wheel of torch where no NVIDIA GPU is present (an unpinned torch pulls a multi-GB CUDA build).
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	    $(PY) -m pip install -q torch; \
	else \
	    $(PY) -m pip install -q torch==2.13.0; \
	fi
	touch $@

# the analysis library plus what prism_train needs
$(VENV)/.train: pyproject.toml $(VENV)/.created
	$(PY) -m pip install -q -e '.[train]'
	touch $@

# ... plus pytest, hypothesis, ruff, the notebook runner
$(VENV)/.test: pyproject.toml $(VENV)/.created
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The main job: the miniature PRISM study (tiny preset: 12 minutes on an idle 2-core machine, 16 on a busier one).
demo: $(VENV)/.train
	$(VENV)/bin/prism reproduce --preset tiny --out $(DEMO_OUT)

test: lint
	$(PY) -m pytest tests

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

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
