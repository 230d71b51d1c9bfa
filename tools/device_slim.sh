#!/usr/bin/env bash
# A device run carries the working tree (tracked and untracked-not-ignored files) next to
# .devbundle/ within 64 MiB counted in 4 KiB blocks, and the bundle alone is ~63 MiB. This keeps
# only what GPU runs read in the copy (the package minus its CPU-only CLI modules, the GPU test
# files with their helpers, the device tools) for the duration of the runs, and puts the rest
# back; `blocks` prints what the copy will take.
#   bash tools/device_slim.sh on       # before the device runs (files stay on disk, untracked)
#   bash tools/device_slim.sh blocks   # 4 KiB blocks of the copy, and what is left of the 64 MiB
#   bash tools/device_slim.sh off      # after them, before any commit
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude=$(git rev-parse --git-path info/exclude)
list=$(git rev-parse --git-path device_slim.list)
keep='^(cute_moe/|tests/(conftest|moe_checks|mma_layouts|test_moe_gpu|test_mxint4_gpu|test_grouped_gemm|test_b12x_gpu'
keep+='|test_plan_kernel|test_routing_kernels|test_combine_kernel|test_topk_pack)\.py$'
keep+='|tools/(bench_gemm\.py|sanitize_cases\.py|first_call\.py|ab_bench\.sh|device_check\.sh)$|pyproject\.toml$|\.gitignore$)'
cpu_only='^cute_moe/(cli/(convert_weights|demo|expert_prep)|demo_checkpoint)\.py$'
begin="# device_slim: begin" end="# device_slim: end"
case "${1:-}" in
  on)
    if [[ -s $list ]]; then echo "already on ($list)" >&2; exit 1; fi
    { git ls-files | grep -v -E "$keep"; git ls-files | grep -E "$cpu_only"; } | sort -u > "$list"
    xargs -a "$list" git rm --cached -q
    { echo "$begin"; sed 's|^|/|' "$list"; echo "$end"; } >> "$exclude"
    bash "$0" blocks ;;
  blocks)
    bundle=$(du -s --block-size=4096 .devbundle 2>/dev/null | cut -f1 || echo 0)
    { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r stat -c %s 2>/dev/null |
      awk -v b="$bundle" '{n += int(($1 + 4095) / 4096)} END {
        printf "tree %d blocks, .devbundle %d blocks, left %d KiB of 64 MiB\n", n, b, (16384 - n - b) * 4}' ;;
  off)
    [[ -s $list ]] && xargs -a "$list" git reset -q --
    rm -f "$list"
    sed -i "/^$begin\$/,/^$end\$/d" "$exclude"
    git status --short ;;
  *) echo "usage: $0 on|blocks|off" >&2; exit 2 ;;
esac
