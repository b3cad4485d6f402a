# Two entry points on a fresh machine: `make demo` and `make test`.
# torch is installed FIRST with an exact pin: on this CPU machine that version resolves to the local CPU
# build; installed later, pip would pull a multi-GB CUDA build as a dependency of gsplat.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
TORCH   := torch==2.13.0
DEMO_DIR ?= runs/demo

.PHONY: setup demo test clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(TORCH)
	$(VPY) -m pip install -q -e '.[test,ray]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VPY) -m pipeline demo --out $(DEMO_DIR)

test: setup
	$(VPY) -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) runs
