# Quick start: `make demo` then `make test`. Each target bootstraps .venv when missing or stale.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo-out

.PHONY: demo test test-all docs sysdeps lint format clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "art-gifd needs Python >= 3.10, found " + sys.version.split()[0])'
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch first, from the pinned local wheels where they exist; fall back to the project's range elsewhere.
	$(VPY) -m pip install -q $(TORCH_PINS) || echo "note: $(TORCH_PINS) not available here; using pyproject's torch range"
	$(VPY) -m pip install -q -e '.[dev,biggan,distributed,flower,docs,browser]'
	# Optional face DCGAN prior: its declared dependencies are not needed and would downgrade pillow.
	$(VPY) -m pip install -q --no-deps gan-face-generate==1.1.1
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/art-gifd demo --out $(DEMO_OUT)

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

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
