#!/usr/bin/env bash
# One GPU session's worth of checks, under $OUT (default ./out): logs, JSON lines, plots.
#   bash tools/device_check.sh [warm|tests|bench|bench-mxint4|bench-nvfp4|bench-prefill|timeline|eager|first-call|sanitize|all] [pytest -k expression]
# warm: the benchmarks' kernels compiled in parallel (below); tests: every GPU test (errors vs the
# float reference recorded in errors.jsonl);
# bench: the bf16 presets; bench-mxint4: MXINT4 next to bf16 on the same shapes; bench-nvfp4:
# b12x_fused_moe (w4a16 and nvfp4, FP4 byte floor) next to the bf16 routed path on the same weights;
# bench-prefill: the prefill table of docs/gemm_notes.md (SM90 wgmma: selector's choice, the forced
# warp-MMA dynamic variant and the torch._grouped_mm pipeline at T = 512, 4096, 16384);
# timeline: decode calls' kernels on the GPU timeline (per input set, gaps between calls) next
# to the benchmark's time; eager: host and wall time of eager calls next to graph replay;
# first-call: a fresh process's first call with a cold, then a warm kernel cache; sanitize:
# compute-sanitizer memcheck and racecheck on small calls of every kernel family
# (tools/sanitize_cases.py).
# The tree copied to the GPU machine and .devbundle/ share 64 MiB: tools/device_slim.sh on|off
# keeps only what GPU runs read (the package, the GPU tests, these tools) in the copy around the
# runs, and `tools/device_slim.sh blocks` says what is left for scripts of the run.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
what=${1:-all}; filter=${2:-}
export PYTHONUNBUFFERED=1
if [[ $what == tests || $what == all ]]; then
  CUTE_MOE_ERROR_REPORT=$OUT/errors.jsonl timeout 560 python3 -m pytest -q -p no:cacheprovider -m gpu tests \
    ${filter:+-k "$filter"} 2>&1 | tee "$OUT/tests.txt" | grep -E "passed|failed|worst rel|FAILED|Error" | tail -25
fi
tokens=1,8,64,512,4096
# warm: compile every kernel the bench sections time into the kernel cache first, one
# cute-moe-warmup process per (preset, T) on all cores (a cold process compiles its kernels one
# after the other; in parallel about 20 s on the 16-core GPU machine instead of minutes)
if [[ $what == warm || $what == all ]]; then
  {
    for t in ${tokens//,/ } 16384; do
      for p in qwen3-30b-a3b qwen3-235b-a22b deepseek-v3 gpt-oss-120b mixtral-8x7b; do echo "--preset $p --tokens $t"; done
      echo "--preset qwen3-30b-a3b --weights mxint4 --tokens $t"; echo "--preset kimi-k2 --experts 64 --tokens $t"
    done
  } | xargs -P "$(nproc)" -L 1 bash -c 'python3 -m cute_moe.cli.warmup --quiet "$@" >>"$0" 2>&1' "$OUT/warm.txt"
  echo "warm: $(grep -c "kernels for" "$OUT/warm.txt") warmup runs, $(grep -ci error "$OUT/warm.txt") errors"
fi
bench() { timeout 250 python3 -m cute_moe.cli.bench --tokens $tokens --sets 3 --reps 20 "$@" 2>>"$OUT/bench_err.txt"; }
if [[ $what == bench || $what == all ]]; then
  bench --preset qwen3-30b-a3b --preset deepseek-v3 --preset gpt-oss-120b \
    --out "$OUT/bench.jsonl" --plot "$OUT/bench.png" | tee "$OUT/bench.txt"
  tr '\r' '\n' <"$OUT/bench_err.txt" | grep -v "point/s\|s/point" | tail -8
fi
if [[ $what == bench-mxint4 || $what == all ]]; then
  # Kimi-K2 with 64 of its 384 experts (the bf16 path and the peers hold the dequantized weights
  # too) and Qwen3-30B-A3B quantized, each next to the bf16 path on the same weights.
  for preset in "kimi-k2 --experts 64" "qwen3-30b-a3b --weights mxint4"; do
    name=${preset%% *}
    bench --preset $preset --impl cute_mxint4 --impl cute_bf16 --impl torch_grouped_mm \
      --out "$OUT/bench_mxint4_$name.jsonl" --plot "$OUT/bench_mxint4_$name.png" | tee -a "$OUT/bench.txt"
  done
  tr '\r' '\n' <"$OUT/bench_err.txt" | grep -v "point/s\|s/point" | tail -8
fi
if [[ $what == bench-nvfp4 || $what == all ]]; then
  for preset in "qwen3-30b-a3b-nvfp4" "deepseek-v3-nvfp4 --experts 64"; do
    name=${preset%% *}
    bench --preset $preset --tokens 1,8,64,512 --impl cute_w4a16 --impl cute_nvfp4 --impl cute_bf16_routed \
      --impl torch_grouped_mm --out "$OUT/bench_$name.jsonl" --plot "$OUT/bench_$name.png" | tee -a "$OUT/bench.txt"
  done
  tr '\r' '\n' <"$OUT/bench_err.txt" | grep -v "point/s\|s/point" | tail -8
fi
if [[ $what == bench-prefill || $what == all ]]; then
  timeout 440 python3 -m cute_moe.cli.bench --preset qwen3-30b-a3b --preset qwen3-235b-a22b --preset deepseek-v3 \
    --preset gpt-oss-120b --preset mixtral-8x7b --tokens 512,4096,16384 --impl cute_bf16_routed \
    --impl "cute_bf16_routed[dynamic]" --impl torch_grouped_mm --variants --sets 2 --reps 10 \
    --out "$OUT/bench_prefill.jsonl" --plot "$OUT/bench_prefill.png" 2>>"$OUT/bench_err.txt" | tee "$OUT/bench_prefill.txt"
fi
if [[ $what == timeline || $what == all ]]; then
  # each decode call's kernels on the GPU timeline (per input set, and the time between calls)
  # next to the benchmark's time per call; the two agree since the benchmark's warm-up lasts
  # 100 ms (docs/gemm_notes.md, "benchmark time against the timeline's call span")
  for preset in "mixtral-8x7b --impl cute_bf16_routed" "qwen3-30b-a3b --impl cute_bf16_routed" \
                "kimi-k2 --experts 64 --impl cute_mxint4"; do
    timeout 150 python3 -m cute_moe.cli.bench --preset $preset --tokens 1,8 --timeline --sets 2 --reps 20 \
      --out "$OUT/timeline_${preset%% *}.jsonl" 2>>"$OUT/timeline.txt" | tee -a "$OUT/bench.txt"
  done
  tr '\r' '\n' <"$OUT/timeline.txt" | grep -v "point/s\|s/point" | tee "$OUT/timeline_summary.txt"
fi
if [[ $what == eager || $what == all ]]; then
  timeout 300 python3 -m cute_moe.cli.bench --preset qwen3-30b-a3b --preset qwen3-235b-a22b --tokens 1,64,4096 \
    --impl cute_bf16 --impl cute_bf16_routed --eager --sets 2 --reps 20 --out "$OUT/eager.jsonl" \
    2>>"$OUT/bench_err.txt" | tee "$OUT/eager.txt"
fi
if [[ $what == first-call || $what == all ]]; then
  cache=$(mktemp -d)
  for run in cold warm; do
    echo -n "$run cache: "; CUTE_MOE_CACHE_DIR=$cache timeout 120 python3 tools/first_call.py
  done | tee "$OUT/first_call.txt"
fi
if [[ $what == sanitize || $what == all ]]; then
  # cuda-python probes driver entry points with cuGetProcAddress at import: those reports are not ours
  for tool in memcheck racecheck; do
    timeout 280 compute-sanitizer --tool $tool --print-limit 50 python3 tools/sanitize_cases.py >"$OUT/sanitize_$tool.txt" 2>&1
    echo "$tool: exit $?, $(grep -c '^ok ' "$OUT/sanitize_$tool.txt") cases;" \
      "$(grep -E '^========= (Invalid|Program hit|Race|Error|WARNING|.*[Hh]azard)' "$OUT/sanitize_$tool.txt" | grep -v SUMMARY | grep -vc cuGetProcAddress) reports" \
      "besides cuGetProcAddress; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize_$tool.txt" | tail -1)"
  done | tee "$OUT/sanitize.txt"
fi
