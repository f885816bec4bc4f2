# faultpath — every target sets itself up: the first use creates .venv and
# installs the project (editable) with its pinned dependencies.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: run test test-slow bench asm clean glibc

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(VPY) -m pip install -q -e '.[dask]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/faultpath run

# The suite, in a few minutes on 2 cores.  The long runs (whole-corpus
# skipcheck, every-boundary sweeps, the mutants, the big differential and
# bad-input corpora) are marked slow: `make test-slow` runs them, and CI runs
# both (.ci/run).
test: $(STAMP) glibc
	$(VPY) -m pytest -q -m "not slow"

test-slow: $(STAMP) glibc
	$(VPY) -m pytest -q -m slow

# Debian 13's glibc 2.41 (a vDSO getrandom client) in build/glibc, and the
# programs of tests/clients built against it.  Cached; without apt or the
# archive it records why and the tests that need it skip.
glibc:
	$(PY) tests/clients/glibc_cache.py all

bench: $(STAMP)
	$(VPY) -m bench.run

asm: $(STAMP)
	$(VENV)/bin/faultpath asm

clean:
	rm -rf $(VENV) build *.egg-info
