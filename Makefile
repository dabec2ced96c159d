# Two commands that work on a fresh machine (README.md):
#   make demo   set up .venv and run the demo on synthetic patents (CPU, a few minutes)
#   make test   set up .venv and run the test suite
# and one for the figures:
#   make bench  run every benchmarks/*.py (full sizes, tens of minutes) -> bench-results/bench.json + bench.md
#               (make bench BENCH_ARGS=--quick, or make bench-quick: every script at reduced sizes, a few minutes)
# .venv gets the tested versions of constraints.txt (the lock). Two more for the versions themselves:
#   make test-latest  the newest releases of every dependency in .venv-latest (no lock), and the suite on them
#   make lock         make test-latest, then constraints.txt rewritten from what passed (a refresh on purpose)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.patentclip-installed
LOCK := constraints.txt
LATEST := .venv-latest

.PHONY: demo test bench bench-quick venv clean test-latest lock

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[dev]'
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
# (benchmarks/run_all.py --help); BENCH_ARGS passes its flags, e.g. --quick or --only step_overhead
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(PY) benchmarks/run_all.py --quick

# the newest releases (no constraints) in a venv of their own, and the whole suite on them
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet -e '.[dev]'
	sh tests/install_chromium.sh
	sh tests/install_tesseract.sh
	$(LATEST)/bin/python -m pytest -q --durations=15

# refresh the lock on purpose: only a set of versions that passed the whole suite becomes constraints.txt
lock: test-latest
	{ echo "# The tested set of versions (pip constraints) that make venv / make demo / make test / CI install:"; \
	  echo "# pip install -c constraints.txt -e '.[dev]'. Python $$($(LATEST)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'), $$(uname -s) $$(uname -m). Do not edit by hand: refreshed on purpose by"; \
	  echo "# make lock (the newest releases in .venv-latest, the whole suite on them, then this file from what passed)."; \
	  echo "# Generated $$(date -u +%Y-%m-%d)."; \
	  $(LATEST)/bin/python -m pip freeze --all --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	@echo "constraints.txt refreshed: re-run make demo and update the README figures and their versions note"

clean:
	rm -rf demo-run .pytest_cache
