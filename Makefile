# The two commands of the README: `make demo` and `make test`. Both set up .venv first if needed;
# `make test` also installs Debian's chromium for the browser tests (root or passwordless sudo).
PY := .venv/bin/python

.PHONY: setup demo test test-fast benchmark

setup: .venv/.installed

.venv/.installed: scripts/setup.sh requirements.txt requirements-faceid.txt requirements-dev.txt requirements-train.txt
	scripts/setup.sh

demo: setup
	$(PY) -m tools.demo

test: setup
	scripts/install_browser.sh
	scripts/test.sh

test-fast: setup
	scripts/test.sh -m "not slow"

benchmark: setup
	$(PY) -m benchmarks.step_cost
