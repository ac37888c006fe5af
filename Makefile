# The two commands of the README:
#   make run   - set up .venv, install supportchat, run it on the embedded defaults
#   make test  - set up .venv, install test dependencies, run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
PIP = $(BIN)/python -m pip
PIP_FLAGS = --disable-pip-version-check --quiet

.PHONY: run test typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) --upgrade pip setuptools wheel

$(VENV)/.deps: $(BIN)/python setup.cfg requirements-test.txt
	$(PIP) install $(PIP_FLAGS) -r requirements-test.txt
	touch $@

run: $(VENV)/.deps
	$(PIP) install $(PIP_FLAGS) --no-deps --no-build-isolation --force-reinstall .
	cd $(CURDIR) && $(BIN)/twistd -n --pidfile= supportchat run $(ARGS)

test: $(VENV)/.deps
	$(BIN)/python -m mypy
	PYTHONPATH=$(CURDIR) $(BIN)/trial $(TRIAL_ARGS) tests

clean:
	rm -rf $(VENV) _trial_temp build *.egg-info
