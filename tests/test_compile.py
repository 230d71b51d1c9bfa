"""Every CuTe DSL kernel variant compiles for every target arch on the CPU, with the
instructions we expect in its PTX.

Each entry of VARIANTS is (name, kernel factory, example-args factory, required PTX
substrings). Kernel modules add their variants here, one line each.
"""

import pytest

from cute_moe.kernels import runtime
from cute_moe.enums import RoutingMethodType as RM
from cute_moe.kernels import combine as combine_k, plan as plan_k, routing as routing_k
from cute_moe.kernels import grouped_gemm as gemm_k
from cute_moe.kernels import fp4_quantize, topk_pack
from cute_moe.kernels.gemm_config import TileConfig

MMA_BF16 = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"

VARIANTS = [
    # NVFP4 activation quantizer: ue4m3 rounding by the e4m3 conversion, IEEE division for e2m1
    ("nvfp4_quantize_gather", lambda: fp4_quantize.QuantizeRows(True), fp4_quantize.quantize_example_args,
     ["cvt.rn.satfinite.e4m3x2.f32", "cvt.rn.f16x2.e4m3x2", "div.rn.f32", "ld.global.v4", "st.global.v4"]),
    ("nvfp4_quantize_in_place", lambda: fp4_quantize.QuantizeRows(False), fp4_quantize.quantize_example_args,
     ["cvt.rn.satfinite.e4m3x2.f32", "div.rn.f32", "st.global.v4"]),
    # packed codes + scales for SM120's block-scaled MMA: 8 bytes of codes and one scale byte per block
    ("nvfp4_quantize_packed", lambda: fp4_quantize.QuantizeRows(True, packed=True),
     lambda: fp4_quantize.quantize_example_args(True), ["cvt.rn.satfinite.e4m3x2.f32", "st.global.v2.b32",
                                                        "st.global.b8"]),
    ("pack_topk_bf16", lambda: topk_pack.PackTopk(False), lambda: topk_pack.pack_example_args(False), ["st.global.b32"]),
    ("pack_topk_f32", lambda: topk_pack.PackTopk(True), lambda: topk_pack.pack_example_args(True), ["st.global.b32"]),
    ("unpack_topk", topk_pack.UnpackTopk, topk_pack.unpack_example_args, ["shr.s32", "st.global.b16",
                                                                          "griddepcontrol.launch_dependents"]),
    ("route_renormalize_e256_k8_f32", lambda: routing_k.RouteTopk(RM.Renormalize, 256, 8, True, None),
     lambda: routing_k.route_example_args(True, None), ["redux.sync.max.s32", "redux.sync.min.s32", "ex2.approx",
                                                         "griddepcontrol.launch_dependents"]),
    ("route_deepseek_grouped_e256_k8_bf16_bias", lambda: routing_k.RouteTopk(RM.DeepSeekV3, 256, 8, False, "bf16", 8, 4),
     lambda: routing_k.route_example_args(False, "bf16"), ["redux.sync.max.s32", "vote.sync.ballot.b32"]),
    ("route_default_e72_k4_bf16_replay", lambda: routing_k.RouteTopk(RM.Default, 72, 4, False, None, write_replay=True),
     lambda: routing_k.route_example_args(False, None), ["redux.sync.min.s32", "div.rn.f32", "st.global.b16"]),
    ("route_llama4_e128_k1", lambda: routing_k.RouteTopk(RM.Llama4, 128, 1, True, None),
     lambda: routing_k.route_example_args(True, None), ["redux.sync.max.s32"]),
    # its extra CTAs move the routed experts' first weight bytes into L2 (decode)
    ("plan_single_cta", plan_k.PlanSingleCta, plan_k.single_cta_example_args,
     ["match.any.sync.b32", "atom.shared.add", "bar.sync", "griddepcontrol.wait",
      "griddepcontrol.launch_dependents", "cp.async.bulk.prefetch.L2.global"]),
    # the one-CTA plan with the unpacking / the routing folded in (decode: one launch fewer)
    ("plan_single_cta_packed", lambda: plan_k.PlanSingleCta("packed"), lambda: plan_k.single_cta_example_args("packed"),
     ["shr.s32", "st.global.b16", "match.any.sync.b32", "atom.shared.add"]),
    ("plan_single_cta_route_deepseek_bf16_bias",
     lambda: plan_k.PlanSingleCta(routing_k.RouteTopk(RM.DeepSeekV3, 256, 8, False, "bf16", 8, 4)),
     lambda: plan_k.single_cta_example_args(routing_k.RouteTopk(RM.DeepSeekV3, 256, 8, False, "bf16", 8, 4)),
     ["redux.sync.max.s32", "vote.sync.ballot.b32", "match.any.sync.b32", "atom.shared.add"]),
    ("plan_single_cta_route_renormalize_f32_replay",
     lambda: plan_k.PlanSingleCta(routing_k.RouteTopk(RM.Renormalize, 128, 8, True, None, write_replay=True)),
     lambda: plan_k.single_cta_example_args(routing_k.RouteTopk(RM.Renormalize, 128, 8, True, None)),
     ["redux.sync.min.s32", "ex2.approx", "st.global.b16", "match.any.sync.b32", "cp.async.bulk.prefetch.L2.global"]),
    ("plan_count_chunks", plan_k.PlanCountChunks, plan_k.count_example_args, ["atom.shared.add"]),
    ("plan_scan", plan_k.PlanScan, plan_k.scan_example_args, ["shfl.sync.up", "bar.sync"]),
    ("plan_scatter_chunks", plan_k.PlanScatterChunks, plan_k.scatter_example_args, ["match.any.sync.b32"]),
    ("combine_k8_bf16w", lambda: combine_k.CombineRows(8, False), lambda: combine_k.combine_example_args(False),
     ["ld.global.v4", "st.global.v4", "fma.rn.f32", "griddepcontrol.wait"]),
    ("combine_k1_f32w", lambda: combine_k.CombineRows(1, True), lambda: combine_k.combine_example_args(True),
     ["ld.global.v4", "st.global.v4"]),
    ("gemm_fc1_micro_64x8_swiglu", lambda: gemm_k.GroupedGemm("fc1", TileConfig(64, 8, 4, 1, 8), "m_fastest"),
     gemm_k.example_args, [MMA_BF16, "ldmatrix.sync.aligned.m8n8.x4", "cp.async.cg.shared.global",
                           "griddepcontrol.wait"]),
    ("gemm_fc2_dynamic_256x128", lambda: gemm_k.GroupedGemm("fc2", TileConfig(256, 128, 4, 2, 3), "persistent"),
     gemm_k.example_args, [MMA_BF16, "ldmatrix.sync.aligned.m8n8.x4", "cp.async.cg.shared.global", "st.global.v4"]),
]


@pytest.mark.compile
@pytest.mark.parametrize("arch", runtime.TARGET_ARCHS)
@pytest.mark.parametrize("name,make_kernel,make_args,needles", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_kernel_compiles(arch, name, make_kernel, make_args, needles):
    ptx = runtime.compile_ptx(make_kernel(), make_args(), arch)
    assert f".target {arch}" in ptx
    for needle in needles:
        assert needle in ptx, f"{name} on {arch}: '{needle}' missing from the PTX"
