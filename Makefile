# Mahavishnu pools: developer and CI entry points. Needs only Python >= 3.11, make and a compiler.
#   make venv   create .venv and install the project with its dev extras (re-run on change)
#   make redis  make sure a Redis answers at MAHAVISHNU_REDIS_URL (starts one if needed)
#   make lint   ruff check, ruff format --check, mypy --strict
#   make test   venv + redis + lint, then the test suite
#   make test-unit  the unit tests alone (no Redis, seconds)
#   make test-counterparts  the `counterparts` tests against the real Session-Buddy and Akosha
#               (Python 3.14 in a Debian sid root, built once under ~/.cache; needs root)
#   make demo   run `mahavishnu up --demo`
#   make bench  run the benchmark harness and regenerate docs/benchmarks.md
#   make clean  remove caches and build output (keeps .venv and .mahavishnu data)
#   make distclean  also stop the Redis `make redis` started and remove .venv and .mahavishnu

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv redis redis-stop lint test test-unit demo bench clean distclean

venv: $(STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: $(PYTHON) is older than Python 3.11; run make PYTHON=python3.11 (or newer)" >&2; \
		exit 1; }
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]'
	@touch $@

redis: venv
	$(BIN)/python -m orchestrator.broker ensure

redis-stop:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m orchestrator.broker stop; fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: venv redis lint
	@$(BIN)/pytest -q -p no:cacheprovider; rc=$$?; \
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

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: redis-stop clean
	rm -rf $(VENV) .mahavishnu
