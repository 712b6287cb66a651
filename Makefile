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

.PHONY: quickstart test test-fast sync clean fonts

quickstart: $(STAMP) fonts
	$(VENV)/bin/repurchase quickstart

test: $(STAMP) fonts
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile

test-fast: $(STAMP) fonts
	$(VENV)/bin/python -m pytest -m "not slow and not spark"

# Chinese text (--lang zh) in the report's plots and pages needs a CJK font: installed with
# apt when missing and we are root; otherwise one line says so (the zh font tests then skip).
fonts:
	@if fc-list 2>/dev/null | grep -qi "Noto Sans CJK"; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-cjk >/dev/null; \
	else echo "note: no CJK font (apt-get install fonts-noto-cjk): Chinese plots will show boxes"; fi

sync: $(STAMP)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --python $(PYTHON)
	touch $(STAMP)

clean:
	rm -rf $(TOOLS) $(VENV) out .pytest_cache
