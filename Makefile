# lift3d: `make demo` installs and runs the synthetic demo; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: install browser demo test test-fast bench bench-gpu bench-distortion lint clean

install: $(STAMP)

# torch first, exactly as pinned (pip takes the local 2.14.1 wheel where one lies on disk),
# then everything else resolved against constraints.txt so a fresh install is the tested set.
$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# Debian's Chromium, for the viewer's headless-browser test (tests/test_viewer.py drives it with Playwright; its
# bundled swiftshader is the WebGL). apt-get needs root, as CI has; ~50 s on a fresh machine. Elsewhere install it
# yourself or set LIFT3D_CHROMIUM to a Chromium or Chrome binary (the test skips, saying so, without one).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@command -v chromium

demo: install
	$(VENV)/bin/lift3d demo

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) bench/cpu_train.py

bench-gpu:
	python3 bench/gpu.py

bench-distortion: install
	$(PY) bench/distortion_ablation.py

lint: install
	$(VENV)/bin/ruff check lift3d_core tasks flows tests bench

clean:
	rm -rf $(VENV) .lift3d data/runs data/pipeline
