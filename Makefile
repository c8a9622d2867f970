PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test bench bench-quick clean

# torch==2.13.0 goes first: it is a CPU build on local disk; an unpinned torch would pull a CUDA build.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

$(VENV)/.bench: $(STAMP)
	# pysdf builds from source and needs Eigen's headers.
	if [ ! -d /usr/include/eigen3 ]; then (apt-get update -qq && apt-get install -y -qq libeigen3-dev) || true; fi
	CPLUS_INCLUDE_PATH=/usr/include/eigen3 $(BIN)/pip install -q -e '.[test,bench]'
	touch $(VENV)/.bench

demo: $(STAMP)
	$(BIN)/sdmnn demo -o out

test: $(STAMP)
	$(BIN)/pytest

bench: $(VENV)/.bench
	$(BIN)/python bench/run.py

bench-quick: $(VENV)/.bench
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) out .pytest_cache
