# Set-up is part of every target: a virtual environment in .venv is created and the
# package installed (with its test extra) the first time, and again whenever
# pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run train test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required, found " + sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

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
