# The README's two commands: `make pretrain` (main job) and `make test` (lint, docs and tests).
# Both create the virtual environment when missing and install the package into it.
VENV ?= .venv
PYTHON ?= python3
RECIPE ?= simclr_resnet18_shapes3d
BIN := $(VENV)/bin

.PHONY: install system-deps pretrain test benchmark clean

# open3d needs the system library libusb-1.0 at import time.
system-deps:
	@if ! ldconfig -p | grep -q 'libusb-1.0.so'; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing libusb-1.0-0 (needed by open3d)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null; \
	  else \
	    echo "open3d needs libusb-1.0: run 'sudo apt-get install libusb-1.0-0' and retry" >&2; exit 1; \
	  fi; \
	fi

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: system-deps $(BIN)/.installed

pretrain: install
	$(BIN)/equissl pretrain --config $(RECIPE) --probe

# Lint, format, the documentation site and the test suite: what CI runs (.ci/run).
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir .cache/site
	$(BIN)/python -m pytest

benchmark: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf runs .cache/site
