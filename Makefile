# Two commands that work on a fresh machine (README.md):
#   make demo   set up .venv and run the demo on synthetic patents (CPU, a few minutes)
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.patentclip-installed

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/patentclip-demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf demo-run .pytest_cache
