"""Seconds from a fresh process's ``import cute_moe`` to its first fused call's result on the GPU
(qwen3-30b-a3b shapes, ``trtllm_bf16_moe`` from logits), with whatever the kernel cache
(``CUTE_MOE_CACHE_DIR``) holds. Run it twice on one cache folder: cold, then warm.

    python tools/first_call.py [--tokens 1,4096]
"""

import argparse
import json
import sys
import time

START = time.perf_counter()

import torch  # noqa: E402  (torch's own import is not ours: timed apart)

TORCH_READY = time.perf_counter()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4096])
    args = p.parse_args()
    h, i, e, k = 2048, 768, 128, 8
    g1 = (torch.randn(e, h // 64, 2 * i, 64, device="cuda") * h**-0.5).to(torch.bfloat16)
    g2 = (torch.randn(e, i // 64, h, 64, device="cuda") * i**-0.5).to(torch.bfloat16)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    import cute_moe
    from cute_moe.kernels import runtime

    import cutlass.cute  # noqa: F401  (the DSL: imported by the first call anyway; timed apart)

    result = {"torch_import_s": TORCH_READY - START, "dsl_import_s": time.perf_counter() - t0}
    for t in args.tokens:
        x = torch.randn(t, h, device="cuda").to(torch.bfloat16)
        logits = torch.randn(t, e, device="cuda")
        t1 = time.perf_counter()
        cute_moe.trtllm_bf16_moe(logits, None, x, g1, g2, num_experts=e, top_k=k, n_group=None, topk_group=None,
                                 intermediate_size=i, local_expert_offset=0, local_num_experts=e,
                                 routing_method_type=int(cute_moe.RoutingMethodType.RenormalizeNaive))
        torch.cuda.synchronize()
        result[f"first_call_T{t}_s"] = time.perf_counter() - t1
    result["import_to_results_s"] = time.perf_counter() - t0
    result["kernel_get_s"] = sum(r.seconds for r in runtime.KERNELS.records)
    result["compiled"] = len(runtime.KERNELS.compiled())
    result["loaded_from_disk"] = sum(r.source == "disk" for r in runtime.KERNELS.records)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
