"""Small calls of every kernel family, for compute-sanitizer (memcheck, racecheck):

    compute-sanitizer --tool racecheck python3 tools/sanitize_cases.py [name filter]

routing (every method family, with bias and replay), unpacking of packed routing, the plan (one
CTA and chunked), the grouped GEMMs (bf16: micro, static, dynamic, wgmma on SM90; Relu2; SwiGLU
with alpha / beta / clamp and LoRA; MXINT4; b12x FP4 w4a16 and nvfp4 with its activation
quantizer), the combine (bf16 and float32 weights). Prints one
line per case; the optional argument keeps the cases whose name contains it.
"""

import sys

import torch

import cute_moe
from cute_moe import RoutingMethodType as RM
from cute_moe.prepare import prepare_bf16_moe_weights, prepare_mxint4_moe_weights, quantize_mxint4


def main() -> int:
    torch.manual_seed(0)
    dev = "cuda"
    h, i, e, k = 256, 128, 8, 2
    w1 = (torch.randn(e, 2 * i, h, device=dev) * h**-0.5).to(torch.bfloat16)
    w2 = (torch.randn(e, h, i, device=dev) * i**-0.5).to(torch.bfloat16)
    g1, g2 = prepare_bf16_moe_weights(w1, w2, cute_moe.ActivationType.Swiglu)
    r1, r2 = prepare_bf16_moe_weights(w1[:, :i].contiguous(), w2, cute_moe.ActivationType.Relu2)
    kw = dict(num_experts=e, top_k=k, n_group=None, topk_group=None, intermediate_size=i,
              local_expert_offset=0, local_num_experts=e)
    cases = []
    for t in (5, 1100):  # one-CTA and chunked plans (T * top_k > 2048)
        x = torch.randn(t, h, device=dev).to(torch.bfloat16)
        logits = torch.randn(t, e, device=dev)
        for variant in ("micro", "static", "dynamic", "wgmma"):  # wgmma: the SM90 instantiation
            cases.append((f"bf16 T={t} {variant}", lambda x=x, lg=logits, v=variant: cute_moe.trtllm_bf16_moe(
                lg, None, x, g1, g2, routing_method_type=int(RM.Renormalize), gemm_variant=v, **kw)))
        cases.append((f"relu2 T={t}", lambda x=x, lg=logits: cute_moe.trtllm_bf16_moe(
            lg, None, x, r1, r2, routing_method_type=int(RM.Default), activation_type=int(cute_moe.ActivationType.Relu2),
            **kw)))
        ids, weights = cute_moe.route(logits, None, k, RM.Renormalize)
        lora = torch.randn(t, k, 2 * i, device=dev).to(torch.bfloat16)
        per_expert = torch.full((e,), 1.5, device=dev)
        for variant in (None, "wgmma"):
            cases.append((f"routed pair f32 weights, alpha/beta/clamp, LoRA T={t} {variant or ''}",
                          lambda x=x, ids=ids, w=weights, lo=lora, pe=per_expert, v=variant:
                          cute_moe.trtllm_bf16_routed_moe(
                              (ids, w.float()), x, g1, g2, gemm1_lora_delta=lo, gemm1_alpha=pe, gemm1_beta=pe,
                              gemm1_clamp_limit=pe * 4, routing_method_type=int(RM.Renormalize), gemm_variant=v,
                              **kw)))
    # 125 rows per expert: the 256x192 wgmma tiles (FC2's and Relu2 FC1's output tiles in two passes)
    x = torch.randn(500, h, device=dev).to(torch.bfloat16)
    logits = torch.randn(500, e, device=dev)
    cases.append(("bf16 T=500 wgmma 256x192", lambda x=x, lg=logits: cute_moe.trtllm_bf16_moe(
        lg, None, x, g1, g2, routing_method_type=int(RM.Renormalize), gemm_variant="wgmma", **kw)))
    cases.append(("relu2 T=500 wgmma 256x192", lambda x=x, lg=logits: cute_moe.trtllm_bf16_moe(
        lg, None, x, r1, r2, routing_method_type=int(RM.Default), activation_type=int(cute_moe.ActivationType.Relu2),
        gemm_variant="wgmma", **kw)))
    # routing methods with bias, groups and replay
    t = 33
    logits = torch.randn(t, 64, device=dev)
    bias = torch.randn(64, device=dev).to(torch.bfloat16)
    replay = torch.empty(t, 8, dtype=torch.int16, device=dev)
    cases.append(("route DeepSeekV3 grouped + bias + replay", lambda logits=logits, bias=bias: cute_moe.route(
        logits, bias, 8, RM.DeepSeekV3, n_group=8, topk_group=4, routed_scaling_factor=2.5,
        routing_replay_out=replay)))
    for method in (RM.Default, RM.Llama4, RM.RenormalizeNaive, RM.SigmoidRenorm):
        kk = 1 if method == RM.Llama4 else 4
        cases.append((f"route {method.name}", lambda m=method, kk=kk: cute_moe.route(logits, None, kk, m)))
    # MXINT4 (packed routing: the unpack kernel)
    hi, ii = 512, 256
    v1 = (torch.randn(e, 2 * ii, hi, device=dev) * hi**-0.5)
    v2 = (torch.randn(e, hi, ii, device=dev) * ii**-0.5)
    q1, s1 = quantize_mxint4(v1)
    q2, s2 = quantize_mxint4(v2)
    m1, m1s, m2, m2s = prepare_mxint4_moe_weights(q1, s1, q2, s2)
    from cute_moe.kernels.topk_pack import pack_topk
    for t in (3, 300, 1000):
        x = torch.randn(t, hi, device=dev).to(torch.bfloat16)
        ids, weights = cute_moe.route(torch.randn(t, e, device=dev), None, k, RM.Renormalize)
        packed = pack_topk(ids, weights)
        # register, shared-memory, wgmma dequantization (wgmma: A from registers at T=3 and 1000,
        # 64- and 128-row token tiles, from shared memory at T=300, 192-row tiles)
        for variant in ("micro", "static", "dynamic", "wgmma") if t < 1000 else ("wgmma",):
            cases.append((f"mxint4 T={t} {variant}", lambda x=x, p=packed, v=variant:
                          cute_moe.trtllm_mxint4_block_scale_routed_moe(
                              p, x, m1, m1s, None, None, None, m2, m2s, e, k, None, None, ii, 0, e, None,
                              routing_method_type=int(RM.Renormalize), gemm_variant=v)))
    # b12x FP4 experts: w4a16 and nvfp4 (the activation quantizer), silu and relu2
    from cute_moe.layouts.quantize import quantize_nvfp4
    from cute_moe.prepare import prepare_b12x_fp4_moe_weights

    def fp4(w):
        q = [quantize_nvfp4(w[x]) for x in range(w.shape[0])]
        return (torch.stack([p for p, _, _ in q]), torch.stack([sc for _, sc, _ in q]),
                torch.stack([1.0 / g for _, _, g in q]).float())

    for act, rows in (("silu", 2 * ii), ("relu2", ii)):
        p1, sc1, a1 = fp4(v1[:, :rows])
        p2, sc2, a2 = fp4(v2)
        b = prepare_b12x_fp4_moe_weights(p1, sc1, p2, sc2)
        for t in (3, 300):
            x = torch.randn(t, hi, device=dev).to(torch.bfloat16)
            ids, weights = cute_moe.route(torch.randn(t, e, device=dev), None, k, RM.Renormalize)
            for mode in ("w4a16", "nvfp4"):
                extra = dict(fc2_input_scale=torch.full((e,), 0.01, device=dev)) if mode == "nvfp4" else {}
                for variant in ("micro", "dynamic"):
                    cases.append((f"b12x {mode} {act} T={t} {variant}",
                                  lambda x=x, ids=ids, w=weights, b=b, a1=a1, a2=a2, m=mode, v=variant, ex=extra,
                                  act=act: cute_moe.b12x_fused_moe(
                                      x, b["w1_weight"], b["w1_weight_sf"], b["w2_weight"], b["w2_weight_sf"], ids,
                                      w.float(), e, k, w1_alpha=a1, w2_alpha=a2, activation=act, quant_mode=m,
                                      gemm_variant=v, **ex)))
    only = sys.argv[1] if len(sys.argv) > 1 else ""  # run the cases whose name contains this
    cases = [(name, case) for name, case in cases if only in name]
    for name, case in cases:
        case()
        torch.cuda.synchronize()
        print(f"ok  {name}", flush=True)
    print(f"{len(cases)} cases ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
