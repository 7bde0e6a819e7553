# The two commands of the README. Each installs what it needs first (scripts/setup.sh is idempotent).
.PHONY: serve test setup lint bench

setup:
	bash scripts/setup.sh

serve: setup
	.venv/bin/ladder prepare
	.venv/bin/ladder serve

test: setup
	.venv/bin/lint-imports
	.venv/bin/ruff check --select F,E9 src tests benchmarks
	.venv/bin/pytest -m "not gpu and not vllm"
	bash scripts/setup-vllm.sh
	.venv-vllm/bin/pytest -p no:cacheprovider -m "vllm and not gpu" tests/workers/test_vllm_worker.py tests/integration/test_vllm_serving.py

bench: setup
	.venv/bin/python benchmarks/tiers.py
