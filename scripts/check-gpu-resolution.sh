#!/usr/bin/env bash
# Does the GPU install resolve? `pip install -c constraints/cuda.txt ".[gpu]"` on a CUDA machine
# (x86_64 Linux, Python 3.12) — checked here without downloading the multi-GB wheels: uv's
# resolver reads only wheel metadata (PyPI serves it separately, PEP 658, or uv range-reads the
# wheel's zip directory), for a target platform other than this one. Exits non-zero, with uv's
# explanation of the conflict, when Ladder's ranges, the CUDA pins and vllm's own pins disagree.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LADDER_VENV:-.venv}
[ -x "$VENV/bin/uv" ] || "$VENV/bin/python" -m pip install -q "uv>=0.5"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for py in 3.11 3.12; do
  "$VENV/bin/uv" pip compile pyproject.toml --extra gpu -c constraints/cuda.txt --python-version "$py" \
    --python-platform x86_64-manylinux_2_28 --no-header --no-annotate --quiet -o "$out"
  echo "GPU install resolves on Python $py: $(grep -E '^(vllm|torch|transformers|ray)==' "$out" | tr '\n' ' ')"
done
