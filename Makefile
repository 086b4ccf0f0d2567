# Set-up is part of every target: a virtual environment in .venv is created and the
# package installed (with its test extra) at the versions pinned in requirements/constraints.txt
# the first time, and again whenever pyproject.toml or the constraints change.
# `make lock` refreshes the pins: the newest versions pyproject.toml allows, resolved in a
# temporary fresh venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements/constraints.txt
CHECK_PYTHON := $(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required, found " + sys.version.split()[0]'

.PHONY: setup lock run train test clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@$(CHECK_PYTHON)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[test]'
	touch $(STAMP)

# Rewrites $(LOCK) from a fresh install of '.[test]' without constraints; run `make test` on the
# result before committing it.
lock:
	@$(CHECK_PYTHON)
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --quiet --upgrade pip; \
	"$$tmp/venv/bin/python" -m pip install --quiet -e '.[test]'; \
	{ echo "# Pinned versions of every package \`make setup\` installs, a pip constraints file:"; \
	  echo "#   pip install -c $(LOCK) -e '.[test]'"; \
	  echo "# These are the versions the test suite passes with ($$("$$tmp/venv/bin/python" -c 'import platform as p; print("Python", p.python_version() + ",", p.system(), p.machine())')); pyproject.toml keeps"; \
	  echo "# loose ranges for library users. Refresh (newest versions pyproject.toml allows, in a temporary"; \
	  echo "# fresh venv; overwrites this file): make lock   -- then run make test and commit this file."; \
	  "$$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -v -i -E '^(#|-e |lebm[-_]jax)'; \
	} > "$$tmp/constraints.txt"; \
	mkdir -p $(dir $(LOCK)); mv "$$tmp/constraints.txt" $(LOCK)

# The main job: the variance study on the digits bundled with scikit-learn (no download):
# 8 training runs, then the report in runs/study/report/report.md.
run: $(STAMP)
	$(PY) -m experiments.study --config configs/study_digits.py --workdir runs/study

# One training run on the digits.
train: $(STAMP)
	$(PY) -m experiments.train --config configs/digits.py --workdir runs/digits

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
