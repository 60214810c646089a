# Quick start: `make demo` then `make test`. Each target bootstraps .venv when missing, stale or broken.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo-out
# Extra options of `art-gifd demo`, e.g. DEMO_ARGS="--threads 1" on busy cores (each word passed as one argument).
DEMO_ARGS ?=
# $(call q,TEXT): TEXT as one single-quoted shell word (no splitting, globbing or expansion).
q = '$(subst ','\'',$(1))'
# The files `art-gifd demo` writes into DEMO_OUT: all that `make clean` removes there.
DEMO_FILES := report.html results.json reconstructions.png

.PHONY: demo test test-all docs sysdeps lint format clean FORCE

# PYTHON makes the venv: say which interpreter, and which variable to set, when it is too old (Python 2 included).
VERSION_CHECK := import sys; sys.exit(0 if sys.version_info >= (3, 10) else "make: art-gifd needs Python >= 3.10, \
	but PYTHON=" + sys.argv[1] + " is Python " + sys.version.split()[0] + ": run make PYTHON=/path/to/python3.11")

# A venv whose python no longer runs (its Python removed, or .venv copied from elsewhere) is rebuilt too.
$(STAMP): pyproject.toml $(if $(shell $(VPY) -c 'print(1)' 2>/dev/null),,FORCE)
	@test -n $(call q,$(PYTHON)) || { echo "make: no python3.11 or python3 on PATH: run make PYTHON=/path/to/python3.11" >&2; exit 1; }
	@$(PYTHON) -c '$(VERSION_CHECK)' $(call q,$(PYTHON))
	@$(VPY) -c '' 2>/dev/null || { test ! -e $(VENV) || echo "note: $(VPY) does not run: recreating $(VENV)"; \
		$(PYTHON) -m venv --clear $(VENV); }
	$(VPY) -m pip install -q --upgrade pip
	# torch first, from the pinned local wheels where they exist; fall back to the project's range elsewhere.
	$(VPY) -m pip install -q $(TORCH_PINS) || echo "note: $(TORCH_PINS) not available here; using pyproject's torch range"
	$(VPY) -m pip install -q -e '.[dev,biggan,distributed,flower,docs,browser]'
	# Optional face DCGAN prior: its declared dependencies are not needed and would downgrade pillow.
	$(VPY) -m pip install -q --no-deps gan-face-generate==1.1.1
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/art-gifd demo --out $(call q,$(DEMO_OUT)) $(foreach a,$(DEMO_ARGS),$(call q,$(a)))

# Debian packages the tests use: Chromium + ChromeDriver (real-browser check of the audit report) and Fashion-MNIST
# (second embedded data domain). Installed when missing and when apt-get is usable; otherwise those tests skip and
# say why.
SYSDEPS := chromium chromium-driver dataset-fashion-mnist
sysdeps:
	@missing=""; for p in $(SYSDEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian packages:$$missing"; \
			(apt-get install -y -q $$missing >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null)) \
				|| echo "warning: could not install$$missing; the tests that need them will skip"; \
		else echo "note: Debian packages$$missing are missing (run: sudo apt-get install$$missing)"; fi; \
	fi

docs: $(STAMP)
	$(VPY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: $(abspath docs/_build/html/index.html)"

test: $(STAMP) sysdeps docs
	# pytest exits 5 when it collects no test: treat that (and any failure) as a failed run.
	$(VPY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-all: $(STAMP)
	$(VPY) -m pytest -q -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Removes only what the project made: the venv, the caches and the demo's files (DEMO_OUT itself once it is empty).
clean:
	@test -n $(call q,$(DEMO_OUT)) || { echo "make: DEMO_OUT is empty: give the demo's output folder" >&2; exit 1; }
	rm -rf $(VENV) .pytest_cache .ruff_cache
	rm -f $(foreach f,$(DEMO_FILES),$(call q,$(DEMO_OUT)/$(f)))
	@test ! -d $(call q,$(DEMO_OUT)) || rmdir $(call q,$(DEMO_OUT)) 2>/dev/null || echo "note: kept $(call q,$(DEMO_OUT)): it holds files the demo did not write"
