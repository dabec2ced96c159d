# Two commands that work on a fresh machine (README.md):
#   make demo   set up .venv and run the demo on synthetic patents (CPU, a few minutes)
#   make test   set up .venv and run the test suite
# and one for the figures:
#   make bench  run every benchmarks/*.py (full sizes, tens of minutes) -> bench-results/bench.json + bench.md
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.patentclip-installed

.PHONY: demo test bench venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/patentclip-demo

# system packages the tests use: Debian's chromium (report test) and tesseract-ocr (USPTO importer's label OCR);
# slurm-wlm + munge are installed by the SLURM fixture itself (tests/slurm_cluster.py); SeaweedFS comes from PyPI
test: $(STAMP)
	sh tests/install_chromium.sh
	sh tests/install_tesseract.sh
	$(PY) -m pytest -q --durations=15

# every benchmark as a subprocess, each ratio measured within one run, the machine described, peak memory
# (benchmarks/run_all.py; `$(PY) benchmarks/run_all.py --quick` checks the scripts in a few minutes)
bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf demo-run .pytest_cache
