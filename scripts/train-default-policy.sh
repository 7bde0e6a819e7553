#!/usr/bin/env bash
# The policy `ladder serve` routes with by default (src/ladder/data/policy/default.json): Hybrid-LLM
# routers + IDK steps (log-probabilities, answer text, and the python_examples verifier's signals)
# fitted on Ladder's own collected outcomes — HumanEval (code), GSM8K (math) and MMLU-Pro (multiple
# choice; 192 questions, not the 48 that benchmarks/routed_serving.py serves), every rung of the
# default ladder — then calibrated to TARGET with the configured prices (cross-fitted, see below).
# Deterministic: same outcomes, same policy (its version hashes the data and thresholds).
set -euo pipefail
cd "$(dirname "$0")/.."
# The target is the issue's (28): 1.3x always-large's answers per second, i.e. at most 1/1.3 of its
# compute: always-large costs USD 1.340 per 1K queries of the fit + validation parts at these
# prices, so cost<=1.03. (Until session 20: large<=0.5, a share of queries at large, which counted a
# two-token multiple-choice answer at large as much as a 300-token program.)
TARGET=${TARGET:-"cost<=1.03"}
OUT=src/ladder/data/policy
work=build/default-policy  # (ignored by git) the merged outcomes the policy file names as its source
mkdir -p "$work"
cat data/outcomes/humaneval.jsonl data/outcomes/gsm8k.jsonl data/outcomes/mmlu-pro.jsonl > "$work/code-math-mc.jsonl"
.venv/bin/ladder train "$work/code-math-mc.jsonl" -o "$work/fitted.json" --featurizer tfidf
# = the default config's prices: measured compute per token (`ladder prices`), at USD 1 per machine-hour
prices=(--price small=0.474:1.2091 --price medium=0.5955:2.6155 --price large=0.8543:7.7701)
rm -f "$OUT"/default.*
# thresholds from out-of-fold scores over the fit + validation parts (287 rows, not the 53 of
# validation alone: session 14 measured test quality -0.029 vs always-large, not -0.072), then the
# same recipe refitted on all of them; the test part stays held out for the benchmarks
.venv/bin/ladder calibrate "$work/fitted.json" "$work/code-math-mc.jsonl" -t "$TARGET" "${prices[@]}" --cross-fit 5 --cost-weighted -o "$OUT/default.json"
