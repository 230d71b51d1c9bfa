"""Routing + plan time on the GPU, next to a torch.topk routing and a torch.argsort permutation.

    python tools/bench_routing.py [--tokens 1 128 4096 65536] [--json out.json]

For each token count (E = 256 experts, top_k = 8, all experts local, tile_rows = 64) and each of
DeepSeekV3 (8 groups, 4 chosen, float32 bias, scale 2.5) and Renormalize routing it prints, in
microseconds (median of CUDA-event timings):

* graph: one CUDA-graph replay of route + plan (launch gaps inside the graph included, host
  overhead excluded), for cute_moe and for the torch version;
* route / plan: each cute_moe step alone, graph-replayed;
* eager: one route + plan call from Python, host launch overhead included;
* host route / host plan: Python time of one call (argument checks, pointers, launch), measured
  over back-to-back calls without synchronizing.

The torch version routes with ``torch.topk`` (grouped top-2 sums, group mask, top-k, weights in
float32 then bf16) and builds counts, padded offsets and both permutation maps with a stable
``torch.argsort`` and ``scatter_add`` (no tile list), all graph-capturable. Logits of two input
sets alternate between replays so the largest sets do not stay in L2.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cute_moe.enums import RoutingMethodType  # noqa: E402

NUM_EXPERTS = 256
TOP_K = 8
TILE_ROWS = 64
DEEPSEEK = {"n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5}


def torch_route(logits, bias, method):
    """(ids int32 [T, K], weights bf16 [T, K]) with torch.topk."""
    x = logits.float()
    if method == RoutingMethodType.Renormalize:
        vals, ids = torch.topk(x, TOP_K, dim=-1)
        return ids.int(), torch.softmax(vals, dim=-1).to(torch.bfloat16)
    s = torch.sigmoid(x)
    biased = s + bias
    t = x.shape[0]
    groups = biased.view(t, DEEPSEEK["n_group"], -1)
    group_scores = torch.topk(groups, 2, dim=-1).values.sum(-1)
    chosen = torch.topk(group_scores, DEEPSEEK["topk_group"], dim=-1).indices
    mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, chosen, True)
    masked = biased.masked_fill(~mask.repeat_interleave(groups.shape[-1], dim=1), float("-inf"))
    ids = torch.topk(masked, TOP_K, dim=-1).indices
    w = s.gather(1, ids)
    w = w * DEEPSEEK["routed_scaling_factor"] / (w.sum(-1, keepdim=True) + 1e-20)
    return ids.int(), w.to(torch.bfloat16)


def torch_plan(ids, num_local, max_rows):
    """Counts, padded offsets, expanded->permuted and permuted->expanded maps with argsort."""
    flat = ids.reshape(-1).long()
    n = flat.numel()
    counts = torch.zeros(num_local, dtype=torch.long, device=ids.device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + TILE_ROWS - 1) // TILE_ROWS * TILE_ROWS
    offsets = torch.cumsum(padded, 0) - padded
    order = torch.argsort(flat, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    sorted_e = flat[order]
    rank = torch.arange(n, device=ids.device) - starts[sorted_e]
    e2p = torch.empty(n, dtype=torch.long, device=ids.device)
    e2p[order] = offsets[sorted_e] + rank
    p2e = torch.full((max_rows,), -1, dtype=torch.long, device=ids.device)
    p2e.scatter_(0, e2p, torch.arange(n, device=ids.device))
    return counts.int(), offsets.int(), e2p.int(), p2e.int()


def host_us(fn, reps: int = 200) -> float:
    """Mean host microseconds of ``fn`` over back-to-back calls (GPU work queued)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed * 1e6 / reps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 128, 4096, 65536])
    ap.add_argument("--json", type=pathlib.Path, default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_routing.py needs an NVIDIA GPU (no CUDA device visible)")
        return 1

    from cute_moe.bench.measure import time_eager, time_graph
    from cute_moe.plan import MoePlan, PlanShape
    from cute_moe.routing import build_plan, route

    gen = torch.Generator(device="cuda").manual_seed(0)
    bias = 0.1 * torch.randn(NUM_EXPERTS, device="cuda", generator=gen)
    rows = []
    print(f"device: {torch.cuda.get_device_name()}  E={NUM_EXPERTS} top_k={TOP_K} tile_rows={TILE_ROWS}")
    head = (f"{'T':>6} {'method':<12} {'cute graph':>11} {'route':>8} {'plan':>8} {'eager':>8} "
            f"{'host route':>11} {'host plan':>10} {'torch graph':>12} {'speedup':>8}")
    print(head)
    print("-" * len(head))
    for t in args.tokens:
        sets = [torch.randn(t, NUM_EXPERTS, device="cuda", generator=gen) for _ in range(2)]
        shape = PlanShape(t, TOP_K, NUM_EXPERTS, TILE_ROWS)
        for method in (RoutingMethodType.DeepSeekV3, RoutingMethodType.Renormalize):
            kw = DEEPSEEK if method == RoutingMethodType.DeepSeekV3 else {}
            b = bias if method == RoutingMethodType.DeepSeekV3 else None
            plans = [MoePlan.empty(shape, "cuda") for _ in sets]
            routed = [route(x, b, TOP_K, method, **kw) for x in sets]

            def cute_step(i):
                ids, _ = route(sets[i], b, TOP_K, method, **kw)
                build_plan(ids, TOP_K, 0, NUM_EXPERTS, TILE_ROWS, plan=plans[i])

            def torch_step(i):
                ids, _ = torch_route(sets[i], bias, method)
                torch_plan(ids, NUM_EXPERTS, shape.max_padded_rows)

            calls = [lambda i=i: cute_step(i) for i in range(len(sets))]
            cute_us = time_graph(calls)
            route_us = time_graph([lambda i=i: route(sets[i], b, TOP_K, method, **kw) for i in range(len(sets))])
            plan_us = time_graph([lambda i=i: build_plan(routed[i][0], TOP_K, 0, NUM_EXPERTS, TILE_ROWS,
                                                         plan=plans[i]) for i in range(len(sets))])
            eager_us = time_eager(calls)
            host_route = host_us(lambda: route(sets[0], b, TOP_K, method, **kw))
            host_plan = host_us(lambda: build_plan(routed[0][0], TOP_K, 0, NUM_EXPERTS, TILE_ROWS, plan=plans[0]))
            torch_us = time_graph([lambda i=i: torch_step(i) for i in range(len(sets))])
            row = {"T": t, "method": method.name, "cute_graph_us": cute_us, "route_us": route_us,
                   "plan_us": plan_us, "eager_us": eager_us, "host_route_us": host_route,
                   "host_plan_us": host_plan, "torch_graph_us": torch_us}
            rows.append(row)
            print(f"{t:>6} {method.name:<12} {cute_us:>11.1f} {route_us:>8.1f} {plan_us:>8.1f} "
                  f"{eager_us:>8.1f} {host_route:>11.1f} {host_plan:>10.1f} {torch_us:>12.1f} "
                  f"{torch_us / cute_us:>7.1f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
