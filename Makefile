# The two commands of the README: `make run` and `make test`.
# Both create .venv when missing and install what they need; nothing here
# relies on something installed by hand.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= etc/pbx.toml

.PHONY: run test lint typecheck unit system-deps bench clean compile

# 1 builds the hot path as C extensions with mypyc (pbx/compiled.py); 0 runs
# everything as Python (a machine without a C compiler, or to profile).
PBX_COMPILE ?= 1

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# compat mode puts the source tree on sys.path, where twistd finds
	# twisted/plugins/pbx_plugin.py (a plain install copies it instead).
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

# Quick when nothing changed: rebuilds only when a compiled module's source
# is newer than its build (or none was built).
compile: $(STAMP)
ifeq ($(PBX_COMPILE),1)
	$(PY) tools/compile.py --if-needed
else
	$(PY) tools/compile.py --remove
endif

# Debian packages the PBX and its tests use (SIPp, baresip, linphonec, espeak-ng, sox).
system-deps:
	@sh tools/install-system-deps.sh

run: $(STAMP) compile system-deps
	$(VENV)/bin/twistd -n pbx --config $(CONFIG)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP) compile
	$(PY) -m pytest tests/unit -q

# The whole suite on what ships (compiled), then the unit tests once more as
# Python: the source a developer edits and runs must pass them too.
test: $(STAMP) compile system-deps lint typecheck
	$(PY) -m pytest -q
	PBX_PURE_PYTHON=1 $(PY) -m pytest -q -p no:cacheprovider tests/unit

bench: $(STAMP)
	$(PY) bench/parse.py

clean:
	rm -f pbx__mypyc*.so pbx/*/*.so
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
