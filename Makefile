# The two commands of the README: `make run` and `make test`.
# Both create .venv when missing and install what they need; nothing here
# relies on something installed by hand.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= etc/pbx.toml

.PHONY: run test lint typecheck unit system-deps bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# compat mode puts the source tree on sys.path, where twistd finds
	# twisted/plugins/pbx_plugin.py (a plain install copies it instead).
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

# Debian packages the PBX and its tests use (SIPp, baresip, espeak-ng, sox).
system-deps:
	@sh tools/install-system-deps.sh

run: $(STAMP) system-deps
	$(VENV)/bin/twistd -n pbx --config $(CONFIG)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

test: $(STAMP) system-deps lint typecheck
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/parse.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
