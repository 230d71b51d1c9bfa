"""Reference plan and reference MoE against loops written from docs/internals.md and the
FlashInfer formulas, on fresh random routings and weights."""

import math

import pytest
import torch

from cute_moe import reference as ref
from cute_moe.enums import ActivationType, RoutingMethodType
from cute_moe.plan import RASTER_TILES, PlanShape
from cute_moe.reference import (
    apply_activation, finalize_from_unfinalized, plan_specified_parts, reference_moe_canonical, reference_plan,
    reference_trtllm_bf16_moe, reference_trtllm_bf16_routed_moe, reference_trtllm_mxint4_block_scale_moe,
    reference_trtllm_mxint4_block_scale_routed_moe,
)
from cute_moe.routing_ref import expert_weights_bf16, pack_topk_reference, route_reference

SWIGLU, RELU2 = ActivationType.Swiglu, ActivationType.Relu2

# --------------------------------------------------------------------------- plan


def _naive_plan(ids, k, offset, n_local, tile):
    """The plan of docs/internals.md, entry by entry."""
    pairs = [(t, j, e - offset) for t, row in enumerate(ids.tolist()) for j, e in enumerate(row)]
    counts = [0] * n_local
    for _, _, e in pairs:
        if 0 <= e < n_local:
            counts[e] += 1
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + (c + tile - 1) // tile * tile)
    filled = [0] * n_local
    perm = []
    for _, _, e in pairs:
        if 0 <= e < n_local:
            perm.append(offsets[e] + filled[e])
            filled[e] += 1
        else:
            perm.append(-1)
    inverse = [-1] * offsets[-1]
    for i, p in enumerate(perm):
        if p >= 0:
            inverse[p] = i
    tiles = []
    for e in range(n_local):
        starts = list(range(0, counts[e], tile))
        for i, r in enumerate(starts):
            group = i // RASTER_TILES * RASTER_TILES  # the expert's tiles in groups of RASTER_TILES
            first = len(tiles) - i + group
            tiles.append((e, offsets[e] + r, min(tile, counts[e] - r),
                          first * RASTER_TILES + min(RASTER_TILES, len(starts) - group) - 1))
    as_int = lambda v: torch.tensor(v, dtype=torch.int32)
    return {
        "expert_counts": as_int(counts), "expert_offsets": as_int(offsets),
        "expanded_idx_to_permuted_idx": as_int(perm), "permuted_idx_to_expanded_idx": as_int(inverse),
        "tile_info": as_int(tiles).reshape(len(tiles), 4), "counters": as_int([len(tiles), offsets[-1]]),
    }


def _routing_ids(kind, t, k, e, gen):
    if kind == "hot":
        return torch.full((t, k), 5, dtype=torch.int32)
    if kind == "distinct":
        return torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(t)]).int() if t else \
            torch.empty(0, k, dtype=torch.int32)
    return torch.randint(0, e, (t, k), generator=gen, dtype=torch.int32)  # repeats allowed


PLAN_CASES = [  # (kind, T, K, E, offset, L, tile_rows)
    ("distinct", 37, 4, 16, 0, 16, 8), ("distinct", 3, 2, 64, 0, 64, 8), ("hot", 50, 3, 8, 0, 8, 16),
    ("distinct", 40, 6, 32, 8, 8, 4), ("any", 25, 4, 12, 4, 5, 1), ("distinct", 0, 8, 16, 0, 16, 8),
    ("distinct", 1, 8, 16, 0, 16, 8), ("distinct", 1, 1, 4, 0, 4, 128), ("hot", 9, 2, 8, 6, 2, 4),
]


@pytest.mark.parametrize("kind,t,k,e,offset,n_local,tile", PLAN_CASES)
def test_reference_plan_matches_doc_and_invariants(kind, t, k, e, offset, n_local, tile, seeded):
    ids = _routing_ids(kind, t, k, e, seeded)
    plan = reference_plan(ids, k, offset, n_local, tile)
    got = plan_specified_parts(plan)
    want = _naive_plan(ids, k, offset, n_local, tile)
    for name in want:
        assert torch.equal(got[name], want[name]), name

    shape = PlanShape(t, k, n_local, tile)
    assert plan.shape == shape
    for buf in (plan.expert_counts, plan.expert_offsets, plan.expanded_idx_to_permuted_idx,
                plan.permuted_idx_to_expanded_idx, plan.tile_info, plan.counters):
        assert buf.dtype == torch.int32 and buf.numel() >= 1
    assert plan.expanded_idx_to_permuted_idx.numel() == max(t * k, 1)
    assert plan.permuted_idx_to_expanded_idx.numel() == max(shape.max_padded_rows, 1)
    assert plan.tile_info.shape == (max(shape.max_tiles, 1), 4)
    num_tiles, rows_in_use = plan.counters[:2].tolist()
    assert num_tiles <= shape.max_tiles and rows_in_use <= shape.max_padded_rows

    offsets = plan.expert_offsets.tolist()
    assert offsets[0] == 0 and all(o % tile == 0 for o in offsets) and offsets[-1] == rows_in_use
    perm = plan.expanded_idx_to_permuted_idx[: t * k].long()
    inverse = plan.permuted_idx_to_expanded_idx[:rows_in_use].long()
    local = (ids.reshape(-1).long() - offset).clamp(min=-1)
    is_local = (local >= 0) & (local < n_local)
    assert bool((perm[~is_local] == -1).all())
    # Every local pair exactly once, inside its expert's segment, in (token, slot) order.
    assert sorted(inverse[inverse >= 0].tolist()) == torch.nonzero(is_local).reshape(-1).tolist()
    for ex in range(n_local):
        seg = inverse[offsets[ex]: offsets[ex + 1]].tolist()
        count = int(plan.expert_counts[ex])
        assert seg[:count] == sorted(seg[:count]) and all(local[p] == ex for p in seg[:count])
        assert all(v == -1 for v in seg[count:])
    tiles = plan.tile_info[:num_tiles].tolist()
    assert all(1 <= rows <= tile for _, _, rows, _ in tiles)
    assert sum(rows for _, _, rows, _ in tiles) == t * k - int((~is_local).sum())


def test_reference_plan_rejects_bad_ids():
    with pytest.raises(ValueError, match="topk_ids"):
        reference_plan(torch.zeros(4, 3, dtype=torch.int32), 2, 0, 8, 8)
    with pytest.raises(TypeError, match="topk_ids"):
        reference_plan(torch.zeros(4, 2), 2, 0, 8, 8)


# --------------------------------------------------------------------------- MoE vs a naive loop


def _naive_activation(h, act, alpha, beta, limit):
    if act == RELU2:
        return [max(v, 0.0) ** 2 for v in h]
    i = len(h) // 2
    up, gate = h[:i], h[i:]
    if alpha is None and beta is None and limit is None:
        return [g / (1.0 + math.exp(-g)) * u for u, g in zip(up, gate)]
    a = 1.0 if alpha is None else alpha
    b = 0.0 if beta is None else beta
    if limit is not None:
        up = [min(max(u, -limit), limit) for u in up]
        gate = [min(g, limit) for g in gate]
    return [g / (1.0 + math.exp(-a * g)) * (u + b) for u, g in zip(up, gate)]


def _naive_moe(hidden, ids, weights, w1, w2, act, offset, n_local, alpha=None, beta=None, limit=None, delta=None):
    """Per token, per slot: FC1, delta, activation -> bf16, FC2 -> bf16, float32 fma combine."""
    t, h = hidden.shape
    k = ids.shape[1]
    out = torch.zeros(t, h, dtype=torch.float32)
    rows = {}
    pick = lambda v, e: None if v is None else float(v[e])
    for tok in range(t):
        acc = torch.zeros(h, dtype=torch.float32)
        for j in range(k):
            e = int(ids[tok, j]) - offset
            if not 0 <= e < n_local:
                continue
            h1 = w1[e].double() @ hidden[tok].double()
            if delta is not None:
                h1 = h1 + delta[tok, j].double()
            a = torch.tensor(_naive_activation(h1.tolist(), act, pick(alpha, e), pick(beta, e), pick(limit, e)),
                             dtype=torch.float64).bfloat16()
            y = (w2[e].double() @ a.double()).bfloat16()
            acc = (acc.double() + float(weights[tok, j]) * y.double()).float()
            rows[tok * k + j] = (a, y)
        out[tok] = acc
    return out.bfloat16(), rows


def _weights(e, m, h, i, gen):
    w1 = (torch.randn(e, m, h, generator=gen) * h**-0.5).bfloat16()
    w2 = (torch.randn(e, h, i, generator=gen) * i**-0.5).bfloat16()
    return w1, w2


MOE_CASES = {
    "swiglu": dict(act=SWIGLU),
    "relu2": dict(act=RELU2),
    "swiglu_alpha_beta_clamp": dict(act=SWIGLU, alpha=True, beta=True, limit=True),
    "swiglu_clamp_only": dict(act=SWIGLU, limit=True),
    "lora": dict(act=SWIGLU, lora=True),
    "relu2_lora": dict(act=RELU2, lora=True),
    "expert_parallel": dict(act=SWIGLU, offset=3, n_local=4, alpha=True),
    "f32_weights": dict(act=SWIGLU, f32_weights=True),
}


@pytest.mark.parametrize("case", list(MOE_CASES))
def test_moe_matches_naive_loop(case, seeded):
    c = MOE_CASES[case]
    t, k, e, h, i = 11, 3, 10, 32, 16
    act, offset, n_local = c["act"], c.get("offset", 0), c.get("n_local", e)
    m = 2 * i if act == SWIGLU else i
    hidden = torch.randn(t, h, generator=seeded).bfloat16()
    ids = torch.stack([torch.randperm(e, generator=seeded)[:k] for _ in range(t)]).int()
    weights = torch.rand(t, k, generator=seeded)
    weights = weights if c.get("f32_weights") else weights.bfloat16()
    w1, w2 = _weights(n_local, m, h, i, seeded)
    per_expert = lambda lo, hi: torch.rand(n_local, generator=seeded) * (hi - lo) + lo
    alpha = per_expert(0.5, 2.0) if c.get("alpha") else None
    beta = per_expert(-1.0, 1.0) if c.get("beta") else None
    limit = per_expert(0.1, 0.6) if c.get("limit") else None
    delta = (torch.randn(t, k, m, generator=seeded) * 0.5).bfloat16() if c.get("lora") else None

    res = reference_moe_canonical(hidden, ids, weights, w1, w2, act, offset, n_local, alpha, beta, limit, delta,
                                  tile_rows=4, compute_dtype=torch.float64)
    want_out, rows = _naive_moe(hidden, ids, weights, w1, w2, act, offset, n_local, alpha, beta, limit, delta)
    assert res.output.dtype == torch.bfloat16 and res.output.shape == (t, h)
    assert torch.equal(res.output, want_out)
    perm = res.expanded_idx_to_permuted_idx
    assert perm.dtype == torch.int32 and perm.shape == (t * k,)
    assert sorted(rows) == torch.nonzero(perm >= 0).reshape(-1).tolist()
    for pair, (a, y) in rows.items():
        assert torch.equal(res.gemm1_output[perm[pair]], a)
        assert torch.equal(res.gemm2_output[perm[pair]], y)
    assert res.expert_weights is weights
    assert torch.equal(finalize_from_unfinalized(res.gemm2_output, weights, perm, k), res.output)

    f32 = reference_moe_canonical(hidden, ids, weights, w1, w2, act, offset, n_local, alpha, beta, limit, delta,
                                  tile_rows=8)
    torch.testing.assert_close(f32.output.float(), want_out.float(), atol=2e-2, rtol=2e-2)
    assert torch.equal(f32.output, f32.output_f32.bfloat16())


def test_expert_parallel_drops_non_local_experts(seeded):
    t, k, h, i = 6, 2, 16, 8
    hidden = torch.randn(t, h, generator=seeded).bfloat16()
    w1, w2 = _weights(2, 2 * i, h, i, seeded)
    ids = torch.tensor([[0, 5]] * t, dtype=torch.int32)  # only expert 5 is local (offset 4, L=2)
    w = torch.rand(t, k, generator=seeded).bfloat16()
    res = reference_moe_canonical(hidden, ids, w, w1, w2, SWIGLU, 4, 2)
    only = reference_moe_canonical(hidden, ids[:, 1:], w[:, 1:], w1, w2, SWIGLU, 4, 2)
    assert torch.equal(res.output, only.output)
    assert res.expanded_idx_to_permuted_idx.view(t, k)[:, 0].eq(-1).all()


def test_empty_batch(seeded):
    w1, w2 = _weights(4, 16, 16, 8, seeded)
    res = reference_moe_canonical(torch.zeros(0, 16).bfloat16(), torch.zeros(0, 2, dtype=torch.int32),
                                  torch.zeros(0, 2).bfloat16(), w1, w2, SWIGLU, 0, 4)
    assert res.output.shape == (0, 16) and res.gemm2_output.shape == (0, 16)
    assert res.gemm1_output.shape == (0, 8) and res.expanded_idx_to_permuted_idx.shape == (0,)


def test_activation_argument_checks():
    h = torch.randn(3, 8)
    with pytest.raises(ValueError, match="Swiglu only"):
        apply_activation(h, RELU2, gemm1_alpha=torch.tensor(1.0))
    with pytest.raises(ValueError, match="activation_type"):
        apply_activation(h, ActivationType.Geglu)
    with pytest.raises(ValueError, match="gemm1_lora_delta"):
        reference_moe_canonical(torch.zeros(2, 8).bfloat16(), torch.zeros(2, 1, dtype=torch.int32),
                                torch.ones(2, 1), torch.zeros(1, 8, 8), torch.zeros(1, 8, 4), SWIGLU, 0, 1,
                                gemm1_lora_delta=torch.zeros(2, 1, 4))


# --------------------------------------------------------------------------- entry equivalents


@pytest.fixture
def canonical_as_prepared(monkeypatch):
    """Let the entries take canonical weights, so their structure is tested on its own."""
    monkeypatch.setattr(ref, "_canonical_bf16_weights", lambda g1, g2, act: (g1, g2))
    monkeypatch.setattr(ref, "_canonical_mxint4_weights", lambda g1, s1, g2, s2: (g1.float(), g2.float()))


def _problem(gen, t=9, e=8, k=2, h=32, i=16, act=SWIGLU):
    m = 2 * i if act == SWIGLU else i
    hidden = torch.randn(t, h, generator=gen).bfloat16()
    logits = torch.randn(t, e, generator=gen)
    w1, w2 = _weights(e, m, h, i, gen)
    return hidden, logits, w1, w2, dict(num_experts=e, top_k=k, n_group=None, topk_group=None,
                                        intermediate_size=i, local_expert_offset=0, local_num_experts=e)


@pytest.mark.parametrize("act", [SWIGLU, RELU2])
def test_bf16_entry_structure(act, canonical_as_prepared, seeded):
    hidden, logits, w1, w2, kw = _problem(seeded, act=act)
    t, k, h, i = hidden.shape[0], kw["top_k"], hidden.shape[1], kw["intermediate_size"]
    ids, w = route_reference(logits, None, k, RoutingMethodType.Renormalize)
    want = reference_moe_canonical(hidden, ids, expert_weights_bf16(w), w1, w2, act, 0, kw["num_experts"])
    replay = torch.full((t + 3, k), -7, dtype=torch.int16)
    out = reference_trtllm_bf16_moe(logits, None, hidden, w1, w2, routing_method_type=1, activation_type=int(act),
                                    routing_replay_out=replay, **kw)
    assert isinstance(out, torch.Tensor) and torch.equal(out, want.output)
    assert torch.equal(replay[:t], ids.to(torch.int16)) and bool((replay[t:] == -7).all())
    buf = torch.empty(t, h, dtype=torch.bfloat16)
    assert reference_trtllm_bf16_moe(logits, None, hidden, w1, w2, routing_method_type=1, activation_type=int(act),
                                     output=buf, **kw) is buf
    assert torch.equal(buf, want.output)

    g2, ew, perm = reference_trtllm_bf16_moe(logits, None, hidden, w1, w2, routing_method_type=1,
                                             activation_type=int(act), do_finalize=False, tile_rows=16, **kw)
    p = PlanShape(t, k, kw["local_num_experts"], 16).max_padded_rows
    assert g2.shape == (p, h) and g2.dtype == torch.bfloat16
    assert ew.dtype == torch.bfloat16 and torch.equal(ew, expert_weights_bf16(w))
    assert perm.shape == (t * k,) and perm.dtype == torch.int32
    assert torch.equal(finalize_from_unfinalized(g2, ew, perm, k), want.output)
    assert i == want.gemm1_output.shape[1]


def test_bf16_routed_entry_structure(canonical_as_prepared, seeded):
    hidden, logits, w1, w2, kw = _problem(seeded)
    t, k, h, i = hidden.shape[0], kw["top_k"], hidden.shape[1], kw["intermediate_size"]
    ids, w = route_reference(logits, None, k, RoutingMethodType.Default)
    packed = pack_topk_reference(ids, w)
    want = reference_moe_canonical(hidden, ids, expert_weights_bf16(w), w1, w2, SWIGLU, 0, kw["num_experts"])
    out = reference_trtllm_bf16_routed_moe(packed, hidden, w1, w2, **kw)
    assert isinstance(out, torch.Tensor) and torch.equal(out, want.output)

    g2, ew, perm = reference_trtllm_bf16_routed_moe(packed, hidden, w1, w2, do_finalize=False, **kw)
    assert torch.equal(ew, expert_weights_bf16(w)) and torch.equal(finalize_from_unfinalized(g2, ew, perm, k), out)

    f32 = reference_trtllm_bf16_routed_moe((ids, w), hidden, w1, w2, do_finalize=False, **kw)
    assert f32[1] is w  # FlashInfer hands back the caller's weight buffer, float32 kept
    pair_out = reference_trtllm_bf16_routed_moe((ids, w), hidden, w1, w2, **kw)
    assert torch.equal(pair_out, reference_moe_canonical(hidden, ids, w, w1, w2, SWIGLU, 0, kw["num_experts"]).output)

    delta = (torch.randn(t, k, 2 * i, generator=seeded) * 0.3).bfloat16()
    lora = reference_moe_canonical(hidden, ids, expert_weights_bf16(w), w1, w2, SWIGLU, 0, kw["num_experts"],
                                   gemm1_lora_delta=delta)
    out, perm, act = reference_trtllm_bf16_routed_moe(packed, hidden, w1, w2, gemm1_lora_delta=delta, **kw)
    assert torch.equal(out, lora.output) and torch.equal(act, lora.gemm1_output)
    assert act.shape == (lora.plan.shape.max_padded_rows, i) and perm.shape == (t * k,)
    g2, ew, perm, act = reference_trtllm_bf16_routed_moe(packed, hidden, w1, w2, gemm1_lora_delta=delta,
                                                         do_finalize=False, **kw)
    assert torch.equal(finalize_from_unfinalized(g2, ew, perm, k), lora.output)
    assert not torch.equal(lora.output, want.output)


def test_mxint4_entries_return_lists(canonical_as_prepared, seeded):
    hidden, logits, w1, w2, kw = _problem(seeded, e=16, k=4)
    t, k = hidden.shape[0], kw["top_k"]
    bias = torch.randn(16, generator=seeded) * 0.1
    route_kw = dict(n_group=4, topk_group=2, routed_scaling_factor=2.0)
    ids, w = route_reference(logits, bias, k, RoutingMethodType.DeepSeekV3, **route_kw)
    alpha = torch.full((16,), 1.5)
    want = reference_moe_canonical(hidden, ids, expert_weights_bf16(w), w1, w2, SWIGLU, 0, 16, gemm1_alpha=alpha)
    kw.update(n_group=4, topk_group=2)
    res = reference_trtllm_mxint4_block_scale_moe(logits, bias, hidden, w1, None, alpha, None, None, w2, None,
                                                  routed_scaling_factor=2.0, routing_method_type=2, **kw)
    assert isinstance(res, list) and len(res) == 1 and torch.equal(res[0], want.output)
    packed = pack_topk_reference(ids, w)
    routed = reference_trtllm_mxint4_block_scale_routed_moe(packed, hidden, w1, None, alpha, None, None, w2, None,
                                                            routed_scaling_factor=None, **kw)
    assert isinstance(routed, list) and torch.equal(routed[0], want.output)
    g2, ew, perm = reference_trtllm_mxint4_block_scale_routed_moe(packed, hidden, w1, None, alpha, None, None, w2,
                                                                  None, routed_scaling_factor=None,
                                                                  do_finalize=False, **kw)
    assert torch.equal(finalize_from_unfinalized(g2, ew, perm, k), want.output)


def test_entries_check_arguments(canonical_as_prepared, seeded):
    hidden, logits, w1, w2, kw = _problem(seeded)
    with pytest.raises(ValueError, match="routing_logits"):
        reference_trtllm_bf16_moe(logits[:, :4], None, hidden, w1, w2, **kw)
    with pytest.raises(ValueError, match="BlockMajorK"):
        reference_trtllm_bf16_moe(logits, None, hidden, w1, w2, weight_layout=0, **kw)
    with pytest.raises(ValueError, match="intermediate_size"):
        reference_trtllm_bf16_moe(logits, None, hidden, w1, w2, **{**kw, "intermediate_size": 32})
    with pytest.raises(ValueError, match="topk_ids"):
        reference_trtllm_bf16_routed_moe(torch.zeros(hidden.shape[0], 3, dtype=torch.int32), hidden, w1, w2, **kw)


def test_prepared_bf16_weights_round_trip(seeded):
    prepare = pytest.importorskip("cute_moe.prepare")
    if not hasattr(prepare, "prepare_bf16_moe_weights"):
        pytest.skip("cute_moe.prepare has no prepare_bf16_moe_weights")
    hidden, logits, w1, w2, kw = _problem(seeded, h=128, i=128)
    g1, g2 = prepare.prepare_bf16_moe_weights(w1, w2, SWIGLU)
    ids, w = route_reference(logits, None, kw["top_k"], RoutingMethodType.Renormalize)
    want = reference_moe_canonical(hidden, ids, expert_weights_bf16(w), w1, w2, SWIGLU, 0, kw["num_experts"])
    out = reference_trtllm_bf16_moe(logits, None, hidden, g1, g2, routing_method_type=1, **kw)
    assert torch.equal(out, want.output)


def test_prepared_mxint4_weights_round_trip(seeded):
    prepare = pytest.importorskip("cute_moe.prepare")
    if not all(hasattr(prepare, n) for n in ("prepare_mxint4_moe_weights", "quantize_mxint4", "dequantize_mxint4")):
        pytest.skip("cute_moe.prepare has no MXINT4 preparation")
    t, e, k, h, i = 5, 4, 2, 256, 256
    hidden = torch.randn(t, h, generator=seeded).bfloat16()
    logits = torch.randn(t, e, generator=seeded)
    q1, s1 = prepare.quantize_mxint4(torch.randn(e, 2 * i, h, generator=seeded) * h**-0.5)
    q2, s2 = prepare.quantize_mxint4(torch.randn(e, h, i, generator=seeded) * i**-0.5)
    g1, g1s, g2, g2s = prepare.prepare_mxint4_moe_weights(q1, s1, q2, s2)
    w1, w2 = prepare.dequantize_mxint4(q1, s1), prepare.dequantize_mxint4(q2, s2)
    ids, w = route_reference(logits, None, k, RoutingMethodType.Renormalize)
    want = reference_moe_canonical(hidden, ids, expert_weights_bf16(w), w1, w2, SWIGLU, 0, e)
    kw = dict(num_experts=e, top_k=k, n_group=None, topk_group=None, intermediate_size=i,
              local_expert_offset=0, local_num_experts=e, routed_scaling_factor=None)
    out = reference_trtllm_mxint4_block_scale_moe(logits, None, hidden, g1, g1s, None, None, None, g2, g2s,
                                                  routing_method_type=1, **kw)
    assert torch.equal(out[0], want.output)
    routed = reference_trtllm_mxint4_block_scale_routed_moe(pack_topk_reference(ids, w), hidden, g1, g1s, None,
                                                            None, None, g2, g2s, **kw)
    assert torch.equal(routed[0], want.output)
