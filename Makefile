# The two commands a newcomer needs: `make demo` and `make test`. Each sets up what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench lint setup clean fuzz soak

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m scripts.demo $(DEMO_ARGS)

# One pytest worker per core (pytest-xdist): most tests wait on brokers, daemons and
# subprocesses: on 2 cores a clean clone took 15.5 min with two workers, 33 with one. TEST_WORKERS=0: one.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow" $(PYTEST_ARGS)

# Longer fuzzing than `make test` gives it (tests/faults/test_fuzz.py): seconds per byte-level
# target and stateful API sequences; the hostile-MQTT scenario runs with its own seed.
FUZZ_SECONDS ?= 600
FUZZ_STATEFUL_EXAMPLES ?= 500
fuzz: $(STAMP)
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_STATEFUL_EXAMPLES=$(FUZZ_STATEFUL_EXAMPLES) \
		$(PY) -m pytest -q -s tests/faults/test_fuzz.py tests/faults/test_scenarios.py \
		-k "fuzz or stateful or hostile" $(PYTEST_ARGS)

# A fleet under load and random faults (scripts/soak.py; root, not in CI): make soak DURATION=30m
DURATION ?= 30m
soak: $(STAMP)
	$(PY) -m scripts.soak --duration $(DURATION) $(SOAK_ARGS)

bench: $(STAMP)
	$(PY) -m scripts.bench $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check appliance daemon models provisioning tests scripts
	$(VENV)/bin/mypy appliance daemon provisioning

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The appliance disk image (docs/IMAGE.md). Say which provisioning key it trusts:
#   make image HUB_HOME=/path/to/hub-home        or  make image TRUST_KEY=provisioning.pub
#   make image PROFILE=nvidia HUB_HOME=...       (the NVIDIA flavour; not built in CI)
# `make image-test` builds the cpu image against a fresh hub and boot-tests it in QEMU, with an OS
# update to version 2 and the rollback from a faulty version 3 (IMAGE_TEST_ARGS="--versions 1": boots only).
.PHONY: image image-test
PROFILE ?= cpu
image: $(STAMP)
	@if [ -z "$(HUB_HOME)$(TRUST_KEY)" ]; then echo "make image: set HUB_HOME=DIR or TRUST_KEY=FILE"; exit 2; fi
	VENV=$(abspath $(VENV)) bash image/build.sh --profile $(PROFILE) \
		$(if $(HUB_HOME),--hub-home $(HUB_HOME)) $(if $(TRUST_KEY),--trust-key $(TRUST_KEY))

image-test: $(STAMP)
	VENV=$(abspath $(VENV)) $(PY) image/boottest.py $(IMAGE_TEST_ARGS)
