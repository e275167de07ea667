# One dev loop: these targets are exactly what CI runs (.ci/run calls `make test`).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
IDP    := tests/support/idp

.PHONY: help demo test unit pythons integration slow lint fmt clean manifests chart image e2e bench soak

help:
	@echo "make demo   run the sidecar against a local OpenBao and authorization server"
	@echo "make test   lint, type-check and run every test (what CI runs)"
	@echo "make unit   fast unit tests only"
	@echo "make pythons  the unit tests on every other Python the package claims (3.12, 3.13, ...)"
	@echo "make lint   ruff, mypy --strict and the import layering contract"
	@echo "make slow   long-running variants (a 300-iteration kill loop)"
	@echo "make manifests  regenerate manifests/ from the chart (CI checks for drift)"
	@echo "make chart  render and validate the Helm chart"
	@echo "make image  build the container image (needs a Docker engine)"
	@echo "make e2e    end-to-end test in a kind cluster (needs Docker, kind and kubectl)"
	@echo "make bench  benchmarks beside OpenBao Agent (about 4 min): BENCHMARKS.md, BENCHMARKS.json"
	@echo "make soak   chaos soak, 10 min (5 replicas killed, frozen, IdP faults, Vault sealed): RELIABILITY.md, RELIABILITY.json"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(IDP)/node_modules/.installed: $(IDP)/package-lock.json $(VENV)/.installed
	$(PY) -c 'from tests.support.idp import ensure_node_modules, find_node; ensure_node_modules(*find_node())'
	touch $@

demo: $(VENV)/.installed $(IDP)/node_modules/.installed
	$(PY) scripts/demo.py

test: lint $(IDP)/node_modules/.installed
	$(PY) -m pytest
	$(PY) scripts/unit_pythons.py

pythons: $(VENV)/.installed  # the unit suite on every other Python the package claims and the machine has
	$(PY) scripts/unit_pythons.py

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

integration: $(VENV)/.installed $(IDP)/node_modules/.installed
	$(PY) -m pytest -m "integration and not slow"

slow: $(VENV)/.installed $(IDP)/node_modules/.installed
	$(PY) -m pytest -m slow

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check sidecar tests scripts bench
	$(VENV)/bin/ruff format --check sidecar tests scripts bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) scripts/render_manifests.py --check

manifests: $(VENV)/.installed
	$(PY) scripts/render_manifests.py

bench: $(VENV)/.installed $(IDP)/node_modules/.installed
	$(PY) -m bench

soak: $(VENV)/.installed $(IDP)/node_modules/.installed
	$(PY) -m tests.soak

e2e: $(VENV)/.installed
	$(PY) -m pytest -m e2e tests/e2e

chart: $(VENV)/.installed
	$(PY) -m pytest tests/chart

VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' sidecar/__init__.py)
EXTRAS ?=
image:  # EXTRAS=kubernetes for an image that can emit Kubernetes Events
	docker build -t token-sidecar:$(VERSION) --build-arg VERSION=$(VERSION) \
		--build-arg REVISION=$$(git rev-parse HEAD) --build-arg EXTRAS=$(EXTRAS) .

fmt: $(VENV)/.installed
	$(VENV)/bin/ruff format sidecar tests scripts bench
	$(VENV)/bin/ruff check --fix sidecar tests scripts bench

clean:
	rm -rf $(VENV) .venv-3.* $(IDP)/node_modules .pytest_cache .mypy_cache .ruff_cache .demo
