#!/usr/bin/env bash
# Same-machine A/B of a change: the benchmark on a base revision and on this tree in one device
# run, then the benchmark's comparison table.
#   bash tools/ab_bench.sh prepare REV          # here: ab_base.patch = cute_moe/ changes since REV
#   bash tools/ab_bench.sh run BENCH-ARGS...    # on the GPU machine (the patch travels untracked)
# The base runs from a copy of cute_moe/ with the patch reverted, with that copy as the working
# directory: `python -m` puts the working directory ahead of PYTHONPATH on sys.path.
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
    (cd "$base" && PYTHONPATH="$base:${PYTHONPATH:-}" python3 -m cute_moe.cli.bench "$@" --out "$OUT/ab_base.jsonl")
    PYTHONPATH="$here:${PYTHONPATH:-}" python3 -m cute_moe.cli.bench "$@" --out "$OUT/ab_this.jsonl"
    python3 -m cute_moe.cli.bench --compare "$OUT/ab_base.jsonl" "$OUT/ab_this.jsonl" ;;
  *) echo "usage: $0 prepare REV | run BENCH-ARGS..." >&2; exit 2 ;;
esac
