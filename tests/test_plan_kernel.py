"""The GPU plan builder against ``reference_plan`` and the plan invariants, on fresh random routings."""

import pytest
import torch

from cute_moe.plan import RASTER_TILES, MoePlan, PlanShape
from cute_moe.reference import reference_plan
from cute_moe.routing import build_plan

POISON = -7


def _random_ids(t, k, num_experts, gen, device="cuda"):
    """k distinct global experts per token, uniform."""
    if t == 0:
        return torch.empty(0, k, dtype=torch.int32, device=device)
    ids = torch.rand(t, num_experts, generator=gen).argsort(dim=1)[:, :k]
    return ids.to(torch.int32).to(device)


def _poisoned_plan(shape, device="cuda"):
    plan = MoePlan.empty(shape, device)
    for name in ("expert_counts", "expert_offsets", "expanded_idx_to_permuted_idx",
                 "permuted_idx_to_expanded_idx", "tile_info", "counters"):
        getattr(plan, name).fill_(POISON)
    return plan


def _check_invariants(plan, ids, offset, num_local, tile_rows):
    """Every local pair exactly once, rows of one expert contiguous and in pair order, padding -1,
    tiles cover exactly the padded segments."""
    t, k = ids.shape
    n = t * k
    counts = plan.expert_counts[:num_local].long().cpu()
    offsets = plan.expert_offsets[: num_local + 1].long().cpu()
    num_tiles, rows = (int(v) for v in plan.counters[:2].cpu())
    assert plan.counters[2:].cpu().tolist() == [0, 0]
    assert offsets[0] == 0 and offsets[-1] == rows
    padded = (counts + tile_rows - 1) // tile_rows * tile_rows
    assert torch.equal(offsets[1:] - offsets[:-1], padded)
    assert rows <= plan.shape.max_padded_rows and num_tiles <= plan.shape.max_tiles

    flat = ids.reshape(-1).long().cpu() - offset
    local = (flat >= 0) & (flat < num_local)
    assert torch.equal(counts, torch.bincount(flat[local], minlength=num_local)[:num_local])
    e2p = plan.expanded_idx_to_permuted_idx[:n].long().cpu()
    p2e = plan.permuted_idx_to_expanded_idx[:rows].long().cpu()
    assert bool((e2p[~local] == -1).all())
    pairs = torch.arange(n)
    assert bool((p2e[e2p[local]] == pairs[local]).all())  # each local pair exactly once
    for e in torch.nonzero(counts).reshape(-1).tolist():
        seg = p2e[offsets[e]: offsets[e] + counts[e]]
        assert bool((flat[seg] == e).all())
        assert bool((seg[1:] > seg[:-1]).all())  # (token, slot) order
        assert bool((p2e[offsets[e] + counts[e]: offsets[e + 1]] == -1).all())
    if num_tiles:
        tiles = plan.tile_info[:num_tiles].long().cpu()
        # raster groups: the expert's tiles in chunks of RASTER_TILES
        expert_of = tiles[:, 0].tolist()
        begin = {e: expert_of.index(e) for e in set(expert_of)}
        end = {e: len(expert_of) - expert_of[::-1].index(e) for e in set(expert_of)}
        for t, (e, group) in enumerate(zip(expert_of, tiles[:, 3].tolist())):
            first, size = group // RASTER_TILES, group % RASTER_TILES + 1
            assert first <= t < first + size and (first - begin[e]) % RASTER_TILES == 0
            assert size == min(RASTER_TILES, end[e] - first)
        assert bool(((tiles[:, 2] >= 1) & (tiles[:, 2] <= tile_rows)).all())
        assert int(tiles[:, 2].sum()) == int(counts.sum())
        assert bool((tiles[1:, 0] >= tiles[:-1, 0]).all())


def _check_equal_reference(plan, ref):
    n = plan.shape.num_pairs
    num_local = plan.shape.local_num_experts
    assert torch.equal(plan.counters.cpu(), ref.counters.cpu())
    num_tiles, rows = (int(v) for v in ref.counters[:2].cpu())
    assert torch.equal(plan.expert_counts[:num_local].cpu(), ref.expert_counts[:num_local].cpu())
    assert torch.equal(plan.expert_offsets.cpu(), ref.expert_offsets.cpu())
    assert torch.equal(plan.expanded_idx_to_permuted_idx[:n].cpu(), ref.expanded_idx_to_permuted_idx[:n].cpu())
    assert torch.equal(plan.permuted_idx_to_expanded_idx[:rows].cpu(), ref.permuted_idx_to_expanded_idx[:rows].cpu())
    assert torch.equal(plan.tile_info[:num_tiles].cpu(), ref.tile_info[:num_tiles].cpu())


def _run(ids, k, offset, num_local, tile_rows, launch="auto"):
    shape = PlanShape(ids.shape[0], k, num_local, tile_rows)
    plan = build_plan(ids, k, offset, num_local, tile_rows, plan=_poisoned_plan(shape), launch=launch)
    ref = reference_plan(ids, k, offset, num_local, tile_rows)
    _check_equal_reference(plan, ref)
    _check_invariants(plan, ids, offset, num_local, tile_rows)
    return plan


# (T, K, E, local_expert_offset, L, tile_rows)
CASES = [
    (0, 8, 256, 0, 256, 64),
    (1, 8, 256, 0, 256, 64),
    (1, 1, 8, 2, 4, 8),
    (7, 4, 64, 16, 32, 16),
    # decode-sized plans (at most 32 pairs)
    (4, 8, 16, 0, 16, 8),  # 32 pairs on 16 experts: several rows per expert
    (32, 1, 8, 0, 8, 4),  # several tiles per expert
    (3, 8, 512, 0, 512, 192),  # the most local experts, long padding
    (5, 6, 40, 10, 20, 16),  # non-local experts
    (2, 8, 64, 3, 1, 8),  # one local expert
    (128, 8, 256, 0, 256, 128),
    (300, 8, 256, 64, 64, 8),  # non-local experts
    (1000, 6, 64, 0, 512, 16),  # more local slots than experts: many empty
    (4096, 8, 256, 0, 256, 64),
    (4096, 22, 512, 0, 512, 128),
    (20000, 8, 384, 128, 128, 32),
    (65536, 8, 256, 0, 256, 128),
]


@pytest.mark.gpu
@pytest.mark.parametrize("t,k,e,offset,num_local,tile_rows", CASES)
def test_plan_matches_reference(t, k, e, offset, num_local, tile_rows, seeded):
    ids = _random_ids(t, k, e, seeded)
    _run(ids, k, offset, num_local, tile_rows)


@pytest.mark.gpu
@pytest.mark.parametrize("t,k", [(1, 8), (900, 8), (1024, 8), (5000, 4)])
def test_single_cta_and_chunked_agree(t, k, seeded):
    ids = _random_ids(t, k, 128, seeded)
    a = _run(ids, k, 0, 128, 16, launch="single_cta")
    b = _run(ids, k, 0, 128, 16, launch="chunked")
    rows = int(a.counters[1])
    assert torch.equal(a.expanded_idx_to_permuted_idx, b.expanded_idx_to_permuted_idx)
    assert torch.equal(a.permuted_idx_to_expanded_idx[:rows], b.permuted_idx_to_expanded_idx[:rows])


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 4, 100, 65536])
def test_one_hot_expert(t, seeded):
    """Every token's first slot on the same expert (one expert gets T rows, many tiles)."""
    k, e = 8, 256
    ids = _random_ids(t, k, e, seeded)
    hot = int(torch.randint(0, e, (1,), generator=seeded))
    ids = torch.where(ids == hot, ids[:, :1], ids)  # keep slots distinct
    ids[:, 0] = hot
    plan = _run(ids, k, 0, e, 128)
    assert int(plan.expert_counts[hot]) == t


@pytest.mark.gpu
@pytest.mark.parametrize("t", [500, 4])
def test_all_pairs_non_local(t, seeded):
    ids = _random_ids(t, 4, 64, seeded)  # experts 0..63, local range 64..127
    plan = _run(ids, 4, 64, 64, 32)
    assert plan.counters.cpu().tolist() == [0, 0, 0, 0]
    assert bool((plan.expanded_idx_to_permuted_idx == -1).all())


@pytest.mark.gpu
def test_plan_is_deterministic(seeded):
    ids = _random_ids(30000, 8, 256, seeded)
    a = build_plan(ids, 8, 0, 256, 64)
    b = build_plan(ids, 8, 0, 256, 64)
    rows, tiles = int(a.counters[1]), int(a.counters[0])
    assert torch.equal(a.expanded_idx_to_permuted_idx, b.expanded_idx_to_permuted_idx)
    assert torch.equal(a.permuted_idx_to_expanded_idx[:rows], b.permuted_idx_to_expanded_idx[:rows])
    assert torch.equal(a.tile_info[:tiles], b.tile_info[:tiles])


# --------------------------------------------------------------------------- folded-in sources


def _folded_plan(source, src, bias, t, k, offset, num_local, tile_rows, scale=1.0, replay=None, prefetch=None):
    """The one-CTA plan with ``source`` ("packed" or a RouteSpec) folded in, as a fused call
    launches it (``prefetch``: a PlanPrefetch, its extra CTAs): (topk_ids, bf16 weights, plan)."""
    from cute_moe.kernels import runtime
    from cute_moe.routing import PlanFront, PlanPointers, launch_plan, plan_kernel

    shape = PlanShape(t, k, num_local, tile_rows)
    plan = _poisoned_plan(shape)
    ids = torch.full((t, k), POISON, dtype=torch.int32, device="cuda")
    weights = torch.zeros(t, k, dtype=torch.bfloat16, device="cuda")
    p = runtime.ptr
    front = PlanFront(p(src, align=src.element_size()), p(bias, align=bias.element_size()) if bias is not None
                      else p(ids, align=4), p(weights, align=2),
                      p(replay, align=2) if replay is not None else p(ids, align=4), scale)
    kernel = plan_kernel(runtime.arch_of_device(), "single_cta", source)
    launch_plan([kernel], shape, offset, p(ids, align=4), PlanPointers.of(plan), p(ids, align=4),
                runtime.current_stream(), False, front, prefetch)
    return ids, weights, plan


@pytest.mark.gpu
@pytest.mark.parametrize("t,offset,num_local", [(1, 0, 256), (4, 32, 64), (5, 64, 64), (16, 0, 256)])
def test_plan_with_unpacking_folded_in(t, offset, num_local, seeded):
    """Packed pairs in: the ids and weight bits of the unpack kernel, the plan of those ids."""
    from cute_moe.kernels.topk_pack import pack_topk, unpack_topk

    k = 8
    ids = _random_ids(t, k, 256, seeded)
    packed = pack_topk(ids, torch.rand(t, k, generator=seeded).cuda())
    got_ids, got_w, plan = _folded_plan("packed", packed, None, t, k, offset, num_local, 16)
    want_ids, want_w = unpack_topk(packed)
    assert torch.equal(got_ids, want_ids)
    assert torch.equal(got_w.view(torch.int16), want_w.view(torch.int16))
    _check_equal_reference(plan, reference_plan(ids, k, offset, num_local, 16))
    _check_invariants(plan, ids, offset, num_local, 16)


@pytest.mark.gpu
@pytest.mark.parametrize("method,e,k,kw", [
    ("RenormalizeNaive", 128, 8, {}),
    ("Renormalize", 32, 4, {}),
    ("DeepSeekV3", 256, 8, {"n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5}),
    ("Llama4", 128, 1, {}),
    ("Default", 72, 4, {}),
])
@pytest.mark.parametrize("t", [1, 4, 16])
def test_plan_with_routing_folded_in(method, e, k, kw, t, seeded):
    """Logits in: the ids, weights and replay ids of the routing kernel (bitwise), the plan of
    those ids."""
    from cute_moe.enums import RoutingMethodType as R
    from cute_moe.routing import RouteSpec, route

    method = R[method]
    logits = torch.randn(t, e, generator=seeded).cuda()
    bias = (0.1 * torch.randn(e, generator=seeded)).to(torch.bfloat16).cuda() if method == R.DeepSeekV3 else None
    replay = torch.full((t + 2, k), POISON, dtype=torch.int16, device="cuda")
    spec = RouteSpec.of(method, e, k, logits.dtype, None if bias is None else bias.dtype, kw.get("n_group"),
                        kw.get("topk_group"), True, True)
    got_ids, got_w, plan = _folded_plan(spec, logits, bias, t, k, 0, e, 8, kw.get("routed_scaling_factor", 1.0),
                                        replay)
    want_ids, want_w = route(logits, bias, k, method, **kw)
    assert torch.equal(got_ids, want_ids)
    assert torch.equal(got_w.view(torch.int16), want_w.view(torch.int16))
    assert torch.equal(replay[:t].int(), want_ids) and bool((replay[t:] == POISON).all())
    _check_equal_reference(plan, reference_plan(want_ids, k, 0, e, 8))
    _check_invariants(plan, want_ids, 0, e, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 8])
@pytest.mark.parametrize("source", ["packed", "routing"])
def test_prefetching_ctas_leave_the_plan_unchanged(source, t, seeded):
    """The plan's extra CTAs only read (they recompute the ids and prefetch weights): ids,
    weights and plan are bitwise those of the plan alone, with experts outside the local range."""
    from cute_moe.enums import RoutingMethodType as R
    from cute_moe.kernels.l2_prefetch import PREFETCH_CHUNK
    from cute_moe.kernels.topk_pack import pack_topk
    from cute_moe.routing import PlanPrefetch, RouteSpec

    k, e, offset, num_local = 8, 128, 32, 64
    w1 = torch.empty(num_local, 3 * PREFETCH_CHUNK, dtype=torch.uint8, device="cuda")
    w2 = torch.empty(num_local, PREFETCH_CHUNK // 2, dtype=torch.uint8, device="cuda")
    # 4 chunks per pair: FC1's 3, then FC2's half chunk
    prefetch = PlanPrefetch(w1.data_ptr(), w2.data_ptr(), w1[0].nbytes, w2[0].nbytes, 4 * PREFETCH_CHUNK, 5)
    if source == "packed":
        src, bias = pack_topk(_random_ids(t, k, e, seeded), torch.rand(t, k, generator=seeded).cuda()), None
        spec = "packed"
    else:
        src, bias = torch.randn(t, e, generator=seeded).cuda(), None
        spec = RouteSpec.of(R.Renormalize, e, k, src.dtype, None, None, None, True, False)
    alone = _folded_plan(spec, src, bias, t, k, offset, num_local, 8)
    with_prefetch = _folded_plan(spec, src, bias, t, k, offset, num_local, 8, prefetch=prefetch)
    torch.cuda.synchronize()
    assert torch.equal(alone[0], with_prefetch[0])
    assert torch.equal(alone[1].view(torch.int16), with_prefetch[1].view(torch.int16))
    _check_equal_reference(with_prefetch[2], alone[2])


def test_decode_plans_prefetch_only_short_weight_streams():
    """The plan prefetches at most PREFETCH_MAX_PAIRS pairs whose experts stream at most
    PREFETCH_MAX_STREAM bytes, in whole chunks, at least one per pair."""
    from cute_moe.kernels.l2_prefetch import PREFETCH_CHUNK
    from cute_moe.routing import (PREFETCH_BUDGET, PREFETCH_CTAS, PREFETCH_MAX_PAIRS, PREFETCH_MAX_STREAM,
                                  plan_prefetch)

    qwen3 = (6 << 20, 3 << 20)  # ~FC1 / FC2 bytes of one qwen3-30b-a3b expert
    got = plan_prefetch(PlanShape(1, 8, 128, 8), 16, 32, *qwen3)
    assert (got.w1, got.w2, got.fc1_bytes, got.fc2_bytes, got.ctas) == (16, 32, *qwen3, PREFETCH_CTAS)
    assert got.share == PREFETCH_BUDGET // 8 and got.share % PREFETCH_CHUNK == 0
    assert plan_prefetch(PlanShape(2, 8, 128, 8), 16, 32, *qwen3) is None  # 16 x 9 MB streamed
    assert plan_prefetch(PlanShape(0, 8, 128, 8), 16, 32, *qwen3) is None
    small = (1 << 16, 1 << 16)
    assert plan_prefetch(PlanShape(PREFETCH_MAX_PAIRS // 8, 8, 128, 8), 0, 0, *small).share == \
        max(PREFETCH_BUDGET // PREFETCH_MAX_PAIRS // PREFETCH_CHUNK, 1) * PREFETCH_CHUNK
    assert plan_prefetch(PlanShape(PREFETCH_MAX_PAIRS // 8 + 1, 8, 128, 8), 0, 0, *small) is None
    edge = PREFETCH_MAX_STREAM // 8
    assert plan_prefetch(PlanShape(1, 8, 128, 8), 0, 0, edge, 0) is not None
    assert plan_prefetch(PlanShape(1, 8, 128, 8), 0, 0, edge, 16) is None


def test_fused_calls_fold_the_routing_or_unpacking_into_a_one_cta_plan():
    """A fused call's one-CTA plan routes up to FUSED_ROUTE_MAX_TOKENS tokens and unpacks packed
    pairs up to SINGLE_CTA_MAX_PAIRS; larger calls, and calls that pass ids, launch them apart."""
    from cute_moe.enums import RoutingMethodType as R
    from cute_moe.kernels.plan import FUSED_ROUTE_MAX_TOKENS, SINGLE_CTA_MAX_PAIRS
    from cute_moe.routing import RouteSpec, fused_plan_source

    spec = RouteSpec.of(R.Renormalize, 128, 8, torch.float32, None, None, None, True, False)
    small, mid = PlanShape(FUSED_ROUTE_MAX_TOKENS, 8, 128, 8), PlanShape(FUSED_ROUTE_MAX_TOKENS + 1, 8, 128, 8)
    big = PlanShape(SINGLE_CTA_MAX_PAIRS // 8 + 1, 8, 128, 8)
    assert fused_plan_source(small, spec, False) == spec
    assert fused_plan_source(mid, spec, False) == "ids"  # routing kernel, then the one-CTA plan
    assert fused_plan_source(PlanShape(SINGLE_CTA_MAX_PAIRS // 8, 8, 128, 8), None, True) == "packed"
    assert fused_plan_source(big, None, True) == "ids"  # chunked plan: unpack kernel first
    assert fused_plan_source(small, None, False) == "ids"


def test_a_plan_that_routes_runs_in_one_cta():
    from cute_moe.routing import PlanFront, PlanPointers, PlanPrefetch, launch_plan

    front = PlanFront(0, 0, 0, 0)
    ptrs = PlanPointers(0, 0, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="one CTA"):
        launch_plan([None, None, None], PlanShape(4096, 8, 128, 8), 0, 0, ptrs, 0, 0, front=front)
    with pytest.raises(ValueError, match="one CTA"):
        launch_plan([None], PlanShape(300, 8, 128, 8), 0, 0, ptrs, 0, 0, front=front)
    prefetch = PlanPrefetch(0, 0, 16, 16, 0, 1)
    with pytest.raises(ValueError, match="one CTA"):
        launch_plan([None, None, None], PlanShape(4096, 8, 128, 8), 0, 0, ptrs, 0, 0, prefetch=prefetch)


def test_warmup_compiles_every_plan_source_a_model_uses():
    """Per token count: the one-CTA plan from ids, from packed pairs and, at small T, with each
    routing kernel folded in; the chunked plan's three kernels above SINGLE_CTA_MAX_PAIRS."""
    from cute_moe.precompile import model_kernels

    keys = [job.key for job in model_kernels(hidden_size=2048, intermediate_size=768, num_experts=128, top_k=8,
                                             tokens=(1, 64, 4096))]
    plans = [k for k in keys if k[0] == "plan"]
    singles = [k[2] for k in plans if k[1] == "single_cta"]
    assert "ids" in singles and "packed" in singles
    routed = [s for s in singles if not isinstance(s, str)]
    assert len(routed) == 2 and {s.logits_f32 for s in routed} == {True, False}  # float32 and bf16 logits
    assert {k[1] for k in plans} >= {"count", "scan", "scatter"}  # T = 4096


# --------------------------------------------------------------------------- bad input (CPU)


def test_build_plan_rejects_bad_input():
    ids = torch.zeros(4, 2, dtype=torch.int32)
    with pytest.raises(TypeError, match="topk_ids"):
        build_plan(ids.long(), 2, 0, 8, 16)
    with pytest.raises(ValueError, match="topk_ids"):
        build_plan(ids, 3, 0, 8, 16)
    with pytest.raises(ValueError, match="topk_ids"):
        build_plan(ids.reshape(-1), 2, 0, 8, 16)
    with pytest.raises(ValueError, match="local_num_experts"):
        build_plan(ids, 2, 0, 513, 16)
    with pytest.raises(ValueError, match="tile_rows"):
        build_plan(ids, 2, 0, 8, 0)
    with pytest.raises(TypeError, match="local_expert_offset"):
        build_plan(ids, 2, 1.5, 8, 16)
    with pytest.raises(ValueError, match="CUDA"):
        build_plan(ids, 2, 0, 8, 16)
    wrong = MoePlan.empty(PlanShape(4, 2, 8, 32), "cpu")
    with pytest.raises(ValueError, match="CUDA"):
        build_plan(ids, 2, 0, 8, 16, plan=wrong)
    with pytest.raises(ValueError, match="launch"):
        build_plan(ids, 2, 0, 8, 16, launch="fast")


@pytest.mark.gpu
def test_build_plan_rejects_mismatched_plan():
    ids = torch.zeros(4, 2, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="plan"):
        build_plan(ids, 2, 0, 8, 16, plan=MoePlan.empty(PlanShape(4, 2, 8, 32), "cuda"))
    with pytest.raises(TypeError, match="plan"):
        build_plan(ids, 2, 0, 8, 16, plan=object())
