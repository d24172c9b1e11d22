# The two commands of the README: `make demo` and `make test`. Both set up .venv first if needed.
PY := .venv/bin/python

.PHONY: setup demo test test-fast benchmark

setup: .venv/.installed

.venv/.installed: scripts/setup.sh requirements.txt requirements-dev.txt
	scripts/setup.sh

demo: setup
	$(PY) -m tools.demo

test: setup
	$(PY) -m pytest tests -q

test-fast: setup
	$(PY) -m pytest tests -q -m "not slow"

benchmark: setup
	$(PY) -m benchmarks.step_cost
