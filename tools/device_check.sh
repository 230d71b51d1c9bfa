#!/usr/bin/env bash
# One GPU session's worth of checks: every GPU test (errors vs the float reference recorded), then
# the benchmark of every path. Writes logs, JSON lines and the plot under $OUT (default ./out).
#   bash tools/device_check.sh [quick]
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
CUTE_MOE_ERROR_REPORT=$OUT/errors.jsonl timeout 330 python3 -m pytest -q -p no:cacheprovider -m gpu tests \
  2>&1 | tee "$OUT/tests.txt" | grep -E "passed|failed|worst rel|FAILED|Error" | tail -25
tokens=1,8,64,512,4096
bench() { timeout 200 python3 -m cute_moe.cli.bench --tokens $tokens --sets 3 --reps 20 "$@" 2>>"$OUT/bench_err.txt"; }
bench --preset qwen3-30b-a3b --preset deepseek-v3 --preset gpt-oss-120b \
  --out "$OUT/bench.jsonl" --plot "$OUT/bench.png" | tee "$OUT/bench.txt"
# Kimi-K2 with 64 of its 384 experts: its bf16 peers need the dequantized weights in memory too.
bench --preset kimi-k2 --experts 64 --out "$OUT/bench_kimi.jsonl" --plot "$OUT/bench_kimi.png" | tee -a "$OUT/bench.txt"
tr '\r' '\n' <"$OUT/bench_err.txt" | grep -v "point/s\|s/point" | tail -8
