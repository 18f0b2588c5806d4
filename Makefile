# The course in two commands (see README):  make lab   |   make test
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# torch is pinned for reproducible CI (a CPU build); users may override: make test TORCH=torch
TORCH  ?= torch==2.13.0
NOTEBOOKS = $(sort $(wildcard notebooks/*.ipynb))

.PHONY: lab test notebooks bench validate clean

# the course runs the bench (torch + transformers) in chapters 02-04, so both envs have it
$(VENV)/.course: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ needed"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[course,measure]"
	touch $@

$(VENV)/.test: $(VENV)/.course
	$(PY) -m pip install -q -e ".[course,measure,test]"
	touch $@

# JupyterLab refuses to start as root (containers, cloud VMs) unless told it may
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

## make lab: set up and open the course in JupyterLab
lab: $(VENV)/.course
	$(VENV)/bin/jupyter lab notebooks/ $(ALLOW_ROOT)

## make test: set up and run every test, notebooks included (nbval, strict)
test: $(VENV)/.test
	$(PY) -m pytest tests notebooks --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

## make notebooks: re-execute every notebook in place so stored outputs are regenerated
notebooks: $(VENV)/.test
	cd notebooks && for nb in $(notdir $(NOTEBOOKS)); do \
	  ../$(PY) -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1200 $$nb || exit 1; done
	$(PY) scripts/normalize_notebooks.py $(NOTEBOOKS)

## make bench: the benchmark scripts (numbers go into issue notes)
bench: $(VENV)/.test
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_measure.py

## make validate: the full accuracy matrix against the bench (resumable; about an hour on 2 cores)
validate: $(VENV)/.test
	$(PY) scripts/validate_weights_kv.py
	$(PY) scripts/bench_matrix.py
	$(PY) scripts/validate_matrix.py --figure

clean:
	rm -rf $(VENV)
