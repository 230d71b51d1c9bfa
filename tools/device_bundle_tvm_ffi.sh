#!/usr/bin/env bash
# Adds apache-tvm-ffi (the kernels' launch convention) to .devbundle/ for the GPU machine's
# Python 3.12, trimmed to what an import needs, and extends .devbundle/env.sh to unpack it.
# Run after ../shared/device/make-bundle.sh (which writes .devbundle/ anew).
set -euo pipefail
VER="${TVM_FFI_VERSION:-$(python3 -c 'import tvm_ffi; print(tvm_ffi.__version__)' 2>/dev/null || echo 0.1.15.post2)}"
top=$(git rev-parse --show-toplevel)
out="$top/.devbundle"
[ -f "$out/env.sh" ] || { echo "run ../shared/device/make-bundle.sh first" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  -d "$tmp/whl" "apache-tvm-ffi==$VER"
mkdir -p "$tmp/site"
(cd "$tmp/site" && python3 -m zipfile -e "$tmp"/whl/*.whl .)
rm -rf "$tmp"/site/tvm_ffi/{3rdparty,include,src,cython,share,stub,cpp/*.cc}
find "$tmp/site" -name '*.pyi' -delete
tar cf - -C "$tmp/site" . | xz -9e -T2 > "$out/tvm-ffi.tar.xz"
if ! grep -q tvm-ffi.tar.xz "$out/env.sh"; then
  cat >> "$out/env.sh" <<'EOS'
_tv=/tmp/devbundle-tvm-ffi
if [ ! -f "$_tv/.ok" ]; then
  mkdir -p "$_tv" && tar xJf "$(dirname "${BASH_SOURCE[0]}")/tvm-ffi.tar.xz" -C "$_tv" && touch "$_tv/.ok"
fi
export PYTHONPATH="$_tv:$PYTHONPATH"
unset _tv
EOS
fi
du -sh "$out" >&2
