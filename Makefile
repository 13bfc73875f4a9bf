# Every target works on a fresh machine with only Python 3.11: the venv is created and filled on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The torch build this project is tested with (installs from local wheels where the machine has them).
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint demo bench clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[test]' $(TORCH_PIN)
	touch $(STAMP)

install: $(STAMP)

browser:  ## headless Chromium for the web viewer's end-to-end test (skipped by the test when unavailable)
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "note: could not install chromium; the browser test will skip")

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  ## no training, no subprocesses (tests marked slow are skipped): under 2 minutes
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)  ## ruff (lint + import order) and mypy, configured in pyproject.toml
	$(BIN)/ruff check src tests
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/medclf demo --out demo_out

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) demo_out
