# Two entry points, each of which works alone on a fresh machine:
#   make demo   create .venv, install the project, run the main job
#   make test   create .venv, install the project, run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_out
RUN ?= runs/tiny

.PHONY: demo test figures bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU wheel of torch where no NVIDIA GPU is present (an unpinned torch pulls a multi-GB CUDA build).
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	    $(PY) -m pip install -q torch; \
	else \
	    $(PY) -m pip install -q torch==2.13.0; \
	fi
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The main job: the miniature PRISM study (tiny preset, ~19 minutes on 2 CPU cores).
demo: $(STAMP)
	$(VENV)/bin/prism reproduce --preset tiny --out $(DEMO_OUT)

# Redraw figures/ from a run's saved tables (or from figures/run/ in a fresh clone); never retrains.
figures: $(STAMP)
	$(VENV)/bin/prism figures --run $(RUN) --into figures

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) benchmarks/audit.py --quick
	$(PY) benchmarks/cka.py --quick
	$(PY) benchmarks/trajectory.py --quick

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
