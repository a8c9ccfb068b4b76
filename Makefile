# The two README commands: `make reproduce` (the notebook chain on the embedded default, offline)
# and `make test` (the whole test suite). Each creates or updates .venv from requirements.txt first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medsam-installed

.PHONY: setup reproduce test browser-deps clean-results

setup: $(STAMP)

# pip prints errors only (-qq): a set-up prints one line, not pages of index warnings.
$(STAMP): requirements.txt pyproject.toml
	@echo "installing the pinned requirements into $(VENV) (the first time takes a few minutes)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -qq --upgrade pip
	@$(PY) -m pip install -qq -r requirements.txt
	@PYTHONWARNINGS=ignore $(PY) -m pip install -qq --no-deps --no-build-isolation -e .
	@touch $(STAMP)

reproduce: setup
	@$(PY) -m medsam_lib run --profile $(or $(PROFILE),demo)

# Debian's Chromium for the browser test (never `playwright install`: it downloads a browser).
browser-deps:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; browser tests will be skipped"; \
	else echo "note: /usr/bin/chromium missing and not root; browser tests will be skipped"; fi

test: setup browser-deps
	$(PY) -m pytest tests notebooks --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --durations=20 $(PYTEST_ARGS)

clean-results:
	rm -rf results/demo results/shared-real
