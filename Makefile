# mpota: two commands set everything up on a fresh machine:
#   make demo   - the end-to-end story on a simulated board
#   make test   - every test (installs the services they run, e.g. nginx, where it
#                 can: Debian as root; elsewhere their tests skip and are listed)
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTHON  ?= python3

.PHONY: all setup services demo test lint bench clean

all: test

# The development environment is pinned exactly by constraints.txt (users get
# pyproject.toml's ranges); the build backend too, so the editable install
# needs no download of its own.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt setuptools
	$(PY) -m pip install --quiet --no-build-isolation -c constraints.txt -e '.[dev,sim]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m mpota_host.demo

services: $(STAMP)
	$(PY) tests/services.py install

test: services
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(PY) -m bench

# ruff; mypy (strict) over the host tools; the device agent against the ESP32
# port's API (micropython-esp32-stubs, see tests/stubcheck.py)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) tests/stubcheck.py

clean:
	rm -rf $(VENV) .work demo build *.egg-info .pytest_cache .ruff_cache .mypy_cache
