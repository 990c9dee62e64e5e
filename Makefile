# The two commands a newcomer needs: `make demo` and `make test`. Each sets up what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m scripts.demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m scripts.bench $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check appliance daemon models provisioning tests scripts
	$(VENV)/bin/mypy appliance daemon provisioning

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
