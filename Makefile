# Two entry points, each of which works alone on a fresh machine:
#   make demo   create .venv, install the project, run the main job
#   make test   create .venv, install the project, run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_out

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

demo: $(STAMP)
	$(VENV)/bin/prism demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) benchmarks/audit.py --quick
	$(PY) benchmarks/cka.py --quick

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
