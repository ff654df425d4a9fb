# Two entry points: `make run` (install + start the app and a job worker) and `make test`.
# Both are idempotent: the virtual environment is rebuilt only when requirements change.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8501
export EMCOPILOT_DATA ?= $(CURDIR)/data

.PHONY: install browser-deps run test test-fast bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m emcopilot.serve --host $(HOST) --port $(PORT)

# Browser tests drive Debian's chromium; installed here when missing (root or sudo + apt-get),
# otherwise those tests skip with a reason.
browser-deps:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "no apt-get: browser tests will be skipped"; \
	elif [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  || echo "chromium install failed: browser tests will be skipped"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  || echo "chromium install failed: browser tests will be skipped"; \
	else echo "chromium missing and no root: browser tests will be skipped"; fi

test: install browser-deps
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not browser"

bench: install
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache
