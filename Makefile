# Two commands on a fresh machine: `make demo` and `make test`. Both bootstrap .venv with pip.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fl-sim-installed

.PHONY: demo test venv synth-data synth-shifted bench clean-runs

venv: $(STAMP)

# Re-install only when the project's metadata changes; pip (not uv/poetry) so the local torch wheels are used.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fl-sim demo

# The strict type check (ground floor + attacks, see pyproject [tool.mypy]), then the suite (layering rule included).
# Debian's chromium is the real browser of the web view's tests (Playwright drives it; it downloads none).
# docker-compose (Debian) lets tests/test_compose.py run `docker-compose config` (no daemon needed); where it
# cannot be installed (not root, no apt), that one check skips and says why.
test: $(STAMP)
	@command -v chromium >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; } || \
	  echo "make test: no chromium; the web view's browser tests (tests/test_web_browser.py) skip"
	@command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; } || \
	  echo "make test: no docker-compose; tests/test_compose.py skips its 'compose config' check"
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q

# Regenerating the embedded identities needs the generator's extras (normal users never do this).
synth-data: $(STAMP)
	$(BIN)/python -m pip install --quiet 'openvino>=2024.0'
	$(BIN)/python -m pip install --quiet --no-deps random-face==2021.7.21.1
	$(BIN)/fl-sim data synth

# The shifted users (fl_sim/assets/synthshift): other seed, truncation 0.8, photo noise 0.4, users only.
synth-shifted: $(STAMP)
	$(BIN)/python -m pip install --quiet 'openvino>=2024.0'
	$(BIN)/python -m pip install --quiet --no-deps random-face==2021.7.21.1
	$(BIN)/fl-sim data synth --preset shifted

bench: $(STAMP)
	$(BIN)/fl-sim bench federation

clean-runs:
	rm -rf runs .cache/bench-runs
