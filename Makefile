# Two entry points, both safe to run again (a second run installs nothing):
#   make demo   set up .venv and run the built-in demo
#   make test   set up .venv with the test extras and run the test suite
# The stamp files in .venv/ record what is installed; editing pyproject.toml reinstalls.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test clean

demo: $(VENV)/.stamp-package
	$(VENV)/bin/panopticlab demo

test: $(VENV)/.stamp-test
	$(PY) -m pytest -q

$(VENV)/.stamp-torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH)
	touch $@

$(VENV)/.stamp-package: pyproject.toml $(VENV)/.stamp-torch
	$(PIP) -e .
	touch $@

$(VENV)/.stamp-test: pyproject.toml $(VENV)/.stamp-package
	$(PIP) -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) outputs
