"""Every CuTe DSL kernel variant compiles for every target arch on the CPU, with the
instructions we expect in its PTX.

Each entry of VARIANTS is (name, kernel factory, example-args factory, required PTX
substrings). Kernel modules add their variants here, one line each.
"""

import pytest

from cute_moe.kernels import runtime
from cute_moe.kernels import topk_pack

VARIANTS = [
    ("pack_topk_bf16", lambda: topk_pack.PackTopk(False), lambda: topk_pack.pack_example_args(False), ["st.global.b32"]),
    ("pack_topk_f32", lambda: topk_pack.PackTopk(True), lambda: topk_pack.pack_example_args(True), ["st.global.b32"]),
    ("unpack_topk", topk_pack.UnpackTopk, topk_pack.unpack_example_args, ["shr.s32", "st.global.b16"]),
]


@pytest.mark.compile
@pytest.mark.parametrize("arch", runtime.TARGET_ARCHS)
@pytest.mark.parametrize("name,make_kernel,make_args,needles", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_kernel_compiles(arch, name, make_kernel, make_args, needles):
    ptx = runtime.compile_ptx(make_kernel(), make_args(), arch)
    assert f".target {arch}" in ptx
    for needle in needles:
        assert needle in ptx, f"{name} on {arch}: '{needle}' missing from the PTX"
