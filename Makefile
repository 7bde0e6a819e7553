# The two commands of the README. Each installs what it needs first (scripts/setup.sh is idempotent).
.PHONY: serve test test-fast test-gpu setup lint bench

setup:
	bash scripts/setup.sh

serve: setup
	.venv/bin/ladder prepare
	.venv/bin/ladder serve

test: setup
	.venv/bin/lint-imports
	.venv/bin/ruff check --select F,E9 src tests benchmarks
	.venv/bin/ruff format --check -q src tests benchmarks scripts
	bash scripts/check-gpu-resolution.sh
	.venv/bin/pytest -m "not gpu" --durations=25

# The fast lane while editing (no model, Ray or slow tests): under a minute, not the suite's half hour.
test-fast: setup
	.venv/bin/lint-imports
	.venv/bin/ruff check --select F,E9 src tests benchmarks
	.venv/bin/ruff format --check -q src tests benchmarks scripts
	.venv/bin/pytest -m "not gpu and not slow and not model and not ray" -q

# On a CUDA machine (after pip install -c constraints/cuda.txt -e ".[gpu,dev]"): the CUDA paths.
test-gpu:
	.venv/bin/pytest -m gpu

bench: setup
	.venv/bin/python benchmarks/tiers.py
