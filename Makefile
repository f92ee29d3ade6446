# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install the project into it the same way the Dockerfile does.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SAMPLES ?= samples
N ?= 20

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py pe_assets/_bytecount.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Writes a folder of synthetic PE files once, then samples N of them into SQLite with Spark.
demo: install
	test -d $(SAMPLES) || $(PY) -m pe_assets make-samples $(SAMPLES) --n 200
	$(PY) -m pe_assets run --n $(N)

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) data dagster_home $(SAMPLES) .pytest_cache .hypothesis
