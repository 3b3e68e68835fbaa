# tasksift: `make demo` sets up a virtual environment and runs the main job on the built-in
# example data; `make test` runs the default test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch is installed only where none is present; GPU users: make setup TORCH_SPEC="torch"
# (or preinstall their own build in the venv).
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-slow bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/tasksift demo --out demo-out

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest

test-slow: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow

clean:
	rm -rf demo-out .pytest_cache
