# Two commands for a fresh machine with only Python 3.11 and pip:
#   make quickstart   bootstrap the environment, then run the whole job on CDNOW
#   make test         bootstrap the environment, then run the test suite
PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
STAMP := $(VENV)/.synced
export UV_PYTHON_DOWNLOADS := never

.PHONY: quickstart test test-fast sync clean

quickstart: $(STAMP)
	$(VENV)/bin/repurchase quickstart

test: $(STAMP)
	$(VENV)/bin/python -m pytest

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not slow and not spark"

sync: $(STAMP)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --python $(PYTHON)
	touch $(STAMP)

clean:
	rm -rf $(TOOLS) $(VENV) out .pytest_cache
