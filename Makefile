# imagecopy — see README.md. `make test` works from a fresh clone: it installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := $(CURDIR)/.tools
export PATH := $(TOOLS)/bin:$(CURDIR)/$(VENV)/bin:$(PATH)
# Under make, a missing registry/peer/control-plane binary is a failure, never a silent skip.
export IMAGECOPY_REQUIRE_TOOLS := 1
export IMAGECOPY_REQUIRE_E2E := 1

.PHONY: test venv tools controlplane lint typecheck unit fuzz integration e2e e2e-image image faults demo bench bench-quick bench-scale clean

test: venv tools controlplane lint typecheck unit integration e2e e2e-image

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip || $(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]' || $(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

venv: $(VENV)/.installed

tools:
	bash scripts/install-tools.sh

controlplane:
	bash e2e/tools/build-control-plane.sh

lint: venv
	$(VENV)/bin/ruff check operator tests e2e bench testkit
	$(VENV)/bin/ruff format --check operator tests e2e bench testkit
	$(VENV)/bin/lint-imports

typecheck: venv
	$(VENV)/bin/mypy

# The fuzz suite is part of the unit stage: pure, no servers, bounded (< 60 s).
unit: venv tools
	$(PY) -m pytest -q tests/unit tests/fuzz

fuzz: venv
	$(PY) -m pytest -q tests/fuzz

integration: venv tools
	$(PY) -m pytest -q tests/integration

e2e: venv tools controlplane
	$(PY) -m pytest -q e2e --ignore=e2e/test_image.py

# The operator image from the Dockerfile, without a daemon: mmdebstrap base (cached in
# ~/.cache/imagecopy/tools/), host-built wheels, buildah → dist/imagecopy-image.tar (OCI archive).
image: venv
	bash scripts/build-image.sh

# The image pushed, promoted by imagecopy, read back by crane/skopeo and run as the operator.
e2e-image: image tools controlplane
	IMAGECOPY_IMAGE_ARCHIVE=$(CURDIR)/dist/imagecopy-image.tar $(PY) -m pytest -q e2e/test_image.py

# The fault matrix (engine, CLI and operator paths; also part of integration and e2e), then
# its table in docs/reliability.md, generated from the rows the run collected.
FAULT_ROWS := $(CURDIR)/.pytest_cache/fault-rows.jsonl
faults: venv tools controlplane
	mkdir -p $(dir $(FAULT_ROWS)) && rm -f $(FAULT_ROWS)
	IMAGECOPY_FAULT_TABLE=$(FAULT_ROWS) $(PY) -m pytest -q \
		tests/integration/test_fault_matrix.py e2e/test_fault_matrix_operator.py; \
		status=$$?; $(PY) -m tests.support.reliability $(FAULT_ROWS) docs/reliability.md README.md \
		&& exit $$status

demo: venv tools controlplane
	$(PY) -m e2e.demo

# Benchmarks are never tests (bench/README.md): results in bench/results.{json,md}, plots.
# The product's modules are byte-compiled first, as an installed wheel would be: with
# PYTHONDONTWRITEBYTECODE set (as it is on some machines) every CLI run would otherwise
# compile them again, about 100 ms of CPU that no user pays.
bench: venv tools controlplane
	$(PY) -m compileall -q operator/imagecopy
	$(PY) -m bench.run

# The same-registry rows alone (same-registry, same-registry-index, noop), a few minutes; into
# bench/quick/ (ignored), so the committed full results and README tables stay as they are.
bench-quick: venv tools
	$(PY) -m compileall -q operator/imagecopy
	$(PY) -m bench.run --quick --out bench/quick

# The operator with 100, 1,000 (one and ten namespaces) and 3,000 objects on the real API server
# (bench/scale.md, about 15 min on an idle machine); not a test. BENCH_SCALE_ARGS="--runs 100x1".
BENCH_SCALE_ARGS ?=
bench-scale: venv tools controlplane
	$(PY) -m bench.scale $(BENCH_SCALE_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
