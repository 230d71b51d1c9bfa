#!/usr/bin/env bash
# Same-machine A/B of a change: the benchmark on a base revision and on this tree in one device
# run, then the benchmark's comparison table per round.
#   bash tools/ab_bench.sh prepare REV                      # here: ab_base.patch = cute_moe/ changes since REV
#   AB_ROUNDS=N bash tools/ab_bench.sh run BENCH-ARGS...    # on the GPU machine (the patch travels untracked)
# The base runs from a copy of cute_moe/ with the patch reverted, with that copy as the working
# directory: `python -m` puts the working directory ahead of PYTHONPATH on sys.path. Rounds
# (AB_ROUNDS, default 2) alternate which tree runs first: a run heats the card, and on one H100
# the same point moved by up to 18% with what ran before it in the process
# (docs/gemm_notes.md, "Decode: padding token rows are not loaded"), so only the same order
# compares. Both trees share one kernel cache (its entries are keyed by the kernel sources).
set -euo pipefail
cd "$(dirname "$0")/.."
patch_file=ab_base.patch
case "${1:-}" in
  prepare)
    git diff "${2:?base revision}" -- cute_moe > "$patch_file"
    echo "$patch_file: $(grep -c '^diff --git' "$patch_file") files changed since $2" ;;
  run)
    shift
    OUT=${OUT:-out}; mkdir -p "$OUT"
    base=$(mktemp -d)
    cp -r cute_moe "$base/" && (cd "$base" && patch -s -p1 -R) < "$patch_file"
    here=$PWD
    bench() {  # tree, round, bench args
      local tree=$1 round=$2; shift 2
      local dir=$here; [[ $tree == base ]] && dir=$base
      (cd "$dir" && PYTHONPATH="$dir:${PYTHONPATH:-}" python3 -m cute_moe.cli.bench "$@" \
        --out "$OUT/ab_${tree}_$round.jsonl")
    }
    for round in $(seq 1 "${AB_ROUNDS:-2}"); do
      order="base this"; (( round % 2 == 0 )) && order="this base"
      for tree in $order; do bench "$tree" "$round" "$@"; done
      echo "round $round (${order%% *} first):"
      python3 -m cute_moe.cli.bench --compare "$OUT/ab_base_$round.jsonl" "$OUT/ab_this_$round.jsonl"
    done ;;
  *) echo "usage: $0 prepare REV | [AB_ROUNDS=N] $0 run BENCH-ARGS..." >&2; exit 2 ;;
esac
