# The commands of the README:
#   make run   - set up .venv, install the runtime lock, then supportchat itself
#                (not editable), and run it on the embedded defaults
#   make test  - set up .venv, install the test lock, run mypy and the whole suite
#   make lock  - regenerate the locks in requirements/ (see requirements/README.md)
# Both installs are pinned and hash-checked (--require-hashes): two installs
# from the same commit get the same files.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
PIP = $(BIN)/python -m pip
PIP_FLAGS = --disable-pip-version-check --quiet
LOCKED = $(PIP_FLAGS) --require-hashes

.PHONY: run test typecheck lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# What the server needs, and the build tools that install it from this tree.
$(VENV)/.runtime-deps: $(BIN)/python requirements/build.txt requirements/runtime.txt
	$(PIP) install $(LOCKED) -r requirements/build.txt -r requirements/runtime.txt
	touch $@

# The same runtime versions plus the test tools (mypy, stubs, playwright, ...).
$(VENV)/.test-deps: $(BIN)/python requirements/test.txt
	$(PIP) install $(LOCKED) -r requirements/test.txt
	touch $@

run: $(VENV)/.runtime-deps
	$(PIP) install $(PIP_FLAGS) --no-deps --no-build-isolation --force-reinstall .
	cd $(CURDIR) && exec $(BIN)/twistd -n --pidfile= supportchat run $(ARGS)

test: $(VENV)/.test-deps
	$(BIN)/python -m mypy
	PYTHONPATH=$(CURDIR) $(BIN)/trial $(TRIAL_ARGS) tests

typecheck: $(VENV)/.test-deps
	$(BIN)/python -m mypy

# Regenerate requirements/*.txt from setup.cfg (install_requires) and
# requirements/*.in with pip-tools. Existing pins are kept; to move them:
#   make lock LOCK_ARGS=--upgrade            (everything)
#   make lock LOCK_ARGS="--upgrade-package twisted"
LOCK_VENV = .venv-lock
PIP_TOOLS = pip-tools==7.7.0
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes \
	--allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_ARGS)

$(LOCK_VENV)/bin/pip-compile:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install $(PIP_FLAGS) $(PIP_TOOLS)

lock: $(LOCK_VENV)/bin/pip-compile
	$(PIP_COMPILE) -o requirements/build.txt requirements/build.in
	$(PIP_COMPILE) -o requirements/runtime.txt setup.cfg
	$(PIP_COMPILE) -o requirements/test.txt setup.cfg requirements/test.in

clean:
	rm -rf $(VENV) $(LOCK_VENV) _trial_temp build *.egg-info
