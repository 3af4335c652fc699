# Mahavishnu pools: developer and CI entry points. Needs only Python >= 3.11, make and a compiler.
#   make venv   create .venv and install the project with its dev extras (re-run on change)
#   make arq-venv  create .venv-arq, arq's own venv for arq pools (arq pins redis-py < 6)
#   make redis  make sure a Redis answers at MAHAVISHNU_REDIS_URL (starts one if needed)
#   make lint   ruff check, ruff format --check, mypy --strict
#   make test   venv + arq-venv + redis + lint + kube-binaries, then the test suite
#   make kube-binaries  build kube-apiserver & co. for tests/k8s once (Debian source package;
#               cached in ~/.cache/mahavishnu/kube, ~5 min on 2 cores the first time)
#   make test-unit  the unit tests alone (no Redis, seconds)
#   make test-counterparts  the `counterparts` tests against the real Session-Buddy and Akosha
#               (Python 3.14 in a Debian sid root, built once under ~/.cache; needs root)
#   make demo   run `mahavishnu up --demo`
#   make bench  run the benchmark harness and regenerate docs/benchmarks.md
#   make docs   regenerate docs/configuration.md and docs/metrics.md from the code
#   make clean  remove caches and build output (keeps .venv and .mahavishnu data)
#   make distclean  also stop the Redis `make redis` started and remove .venv and .mahavishnu

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

ARQ_VENV := .venv-arq
ARQ_STAMP := $(ARQ_VENV)/.installed

.PHONY: venv arq-venv redis redis-stop lint test test-unit demo bench docs clean distclean kube-binaries

venv: $(STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: $(PYTHON) is older than Python 3.11; run make PYTHON=python3.11 (or newer)" >&2; \
		exit 1; }
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]'
	@touch $@

# the arq requirement is read from pyproject's `arq` extra (its one home)
arq-venv: $(ARQ_STAMP)

$(ARQ_STAMP): pyproject.toml | $(STAMP)
	@test -x $(ARQ_VENV)/bin/python || $(BIN)/python -m venv $(ARQ_VENV) || { rm -rf $(ARQ_VENV); exit 1; }
	$(ARQ_VENV)/bin/python -m pip install --disable-pip-version-check -q $$($(BIN)/python -c \
		'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["arq"])')
	@touch $@

redis: venv
	$(BIN)/python -m orchestrator.broker ensure

redis-stop:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m orchestrator.broker stop; fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

kube-binaries:
	sh tests/k8s/build_apiserver.sh

test: venv arq-venv redis lint kube-binaries
	@$(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; \
	exit $$rc

test-unit: venv
	$(BIN)/pytest -q -p no:cacheprovider -m unit

.PHONY: test-counterparts
test-counterparts: venv
	PYTHON=$(BIN)/python tests/counterparts/real_servers.sh run \
		$(BIN)/pytest -q -p no:cacheprovider -m counterparts

demo: venv
	$(BIN)/mahavishnu up --demo

bench: venv
	$(BIN)/python -m bench

docs: venv
	$(BIN)/python -m shared.reference

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: redis-stop clean
	rm -rf $(VENV) $(ARQ_VENV) .mahavishnu
