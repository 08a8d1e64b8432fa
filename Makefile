# The two set-up commands: `make demo` (main job on bundled data) and `make test` (test suite).
# Both create .venv inside the repo when missing and install atomsift with pinned dependencies.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.atomsift-installed

.PHONY: demo test lint install bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "atomsift needs Python >= 3.11"'
	@echo "installing atomsift and its pinned dependencies into $(VENV) (a few minutes: torch on Linux from PyPI is the CUDA build, several GB; README.md says how to get the CPU one)"
	PIP_CONSTRAINT=constraints.txt $(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,csi]"
	@# matbench's wheel carries the official MatBench folds; its own pins (scipy 1.7) do not install on 3.11
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps matbench==0.6
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/atomsift demo

# ruff: lint and format check (configuration in pyproject.toml); `make test` runs it first.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# pytest exits 5 when it collected no test: that must fail, not pass silently.
test: lint
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest ran no tests" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) benchmarks/read_speed.py
	$(PY) benchmarks/frechet_speed.py
	$(PY) benchmarks/neighbor_speed.py
	$(PY) benchmarks/train_step_speed.py
	$(PY) benchmarks/optimizer_speed.py
	$(PY) benchmarks/subnormal_speed.py
	$(PY) benchmarks/train_throughput.py --quick
	$(PY) benchmarks/extractor_speed.py
	$(PY) benchmarks/scale_fit_speed.py
	$(PY) benchmarks/malloc_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
