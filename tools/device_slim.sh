#!/usr/bin/env bash
# A device run carries the working tree (tracked files) next to .devbundle/ within 64 MiB, and the
# bundle alone is ~63 MiB: this keeps what a GPU run does not read (docs, CPU-only tests) out of
# the copy for the duration of the runs, and puts it back.
#   bash tools/device_slim.sh on      # before the device runs (files stay on disk, untracked)
#   bash tools/device_slim.sh off     # after them, before any commit
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude=$(git rev-parse --git-path info/exclude)
paths=(docs tests/test_validate.py tests/test_reference.py tests/test_layouts.py tests/test_convert_weights.py
       tests/test_prepare.py tests/test_routing_ref.py tests/test_reference_b12x.py tests/test_cli.py)
begin="# device_slim: begin" end="# device_slim: end"
case "${1:-}" in
  on)
    git rm -r --cached -q "${paths[@]}"
    { echo "$begin"; for p in "${paths[@]}"; do echo "/$p"; done; echo "$end"; } >> "$exclude"
    echo "tracked bytes now: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)" ;;
  off)
    git reset -q -- "${paths[@]}"
    sed -i "/^$begin\$/,/^$end\$/d" "$exclude"
    git status --short ;;
  *) echo "usage: $0 on|off" >&2; exit 2 ;;
esac
