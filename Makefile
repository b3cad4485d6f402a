# Two entry points on a fresh machine: `make demo` and `make test`.
# torch is installed FIRST with an exact pin: on this CPU machine that version resolves to the local CPU
# build; installed later, pip would pull a multi-GB CUDA build as a dependency of gsplat.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
TORCH   := torch==2.13.0
DEMO_DIR ?= runs/demo

.PHONY: setup demo test clean browser

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(TORCH)
	$(VPY) -m pip install -q -e '.[test,ray]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VPY) -m pipeline demo --out $(DEMO_DIR)

# headless chromium renders the report in tests/pipeline/test_report.py; without it that test is reported
# (xfail, "NOT CHECKED") rather than skipped. Installing needs root and the Debian mirrors.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) || \
	  echo "WARNING: chromium could not be installed; the report's browser check will be reported as NOT CHECKED"

test: setup browser
	$(VPY) -m pytest -q -rxXs -p no:cacheprovider

clean:
	rm -rf $(VENV) runs
