"""GPU routing against ``route_reference`` for every method, exact ties, routing replay, a CUDA
graph of route + plan + combine, and argument checks before any launch (CPU)."""

import pytest
import torch

from cute_moe.enums import RoutingMethodType as R
from cute_moe.plan import MoePlan, PlanShape
from cute_moe.reference import reference_plan
from cute_moe.routing import build_plan, combine, route
from cute_moe.routing_ref import ambiguous_tokens, check_routing_limits, route_reference

METHODS = [m for m in R if m != R.Unspecified]
EXPERTS = [8, 64, 128, 256, 384, 512]
TOP_KS = [1, 2, 4, 8, 16, 22]
TOKENS = [0, 1, 7, 128, 4096]
# Tokens whose ranked scores are this close (relative) may rank either way in two correct float32
# implementations (routing_ref.TIE_RTOL); their ids and weights are not compared.
MARGIN_RTOL = 1e-5
BF16_ULP = 2.0 ** -7  # relative distance between neighbouring bf16 values, at most


def _grouping(e):
    """(n_group, topk_group) for grouped DeepSeekV3: <= 8 groups of 4 to 32 experts."""
    for n_group in (8, 4, 2):
        if e % n_group == 0 and 4 <= e // n_group <= 32:
            return n_group, min(4, n_group // 2)
    return None


def _allowed(method, e, k, kw):
    try:
        check_routing_limits(method, e, k, kw.get("n_group"), kw.get("topk_group"))
    except ValueError:
        return False
    return True


def _configs():
    """Per method and expert count: the largest allowed top_k <= 8 and the largest allowed one
    (FlashInfer's tiers decide which exist), a grouped DeepSeekV3 variant where groups fit, and
    alternating logits / bias dtypes."""
    out = []
    for m in METHODS:
        for e in EXPERTS:
            variants = [{}]
            if m == R.DeepSeekV3 and _grouping(e):
                ng, tg = _grouping(e)
                variants.append({"n_group": ng, "topk_group": tg})
            if m in (R.DeepSeekV3, R.MiniMax2):
                variants = [dict(v, routed_scaling_factor=2.5) for v in variants]
            if m == R.SigmoidRenorm and e == 64:
                variants.append({"norm_topk_prob": False})
            for kw in variants:
                ks = [k for k in TOP_KS if k <= e and _allowed(m, e, k, kw)]
                small = {8: 1, 128: 4}.get(e)
                picks = {max([k for k in ks if k <= 8], default=None), max(ks, default=None),
                         small if small in ks else None}
                picks = sorted(picks - {None})
                for k in picks:
                    i = len(out)
                    dtype = torch.bfloat16 if i % 2 else torch.float32
                    bias = None
                    if m in (R.DeepSeekV3, R.MiniMax2):
                        bias = (torch.float32, torch.bfloat16, None)[i % 3]
                    names = {torch.float32: "f32", torch.bfloat16: "bf16", None: "none"}
                    out.append(pytest.param(m, e, k, kw, dtype, bias,
                                            id=f"{m.name}-E{e}-K{k}-{names[dtype]}"
                                               + (f"-bias_{names[bias]}" if m in (R.DeepSeekV3, R.MiniMax2) else "")
                                               + "".join(f"-{a}{b}" for a, b in kw.items())))
    return out


def _logits(t, e, dtype, gen):
    """float32: standard normal. bf16: a random permutation per token of distinct multiples of
    1/32 (exact in bf16), so no two experts of a token tie."""
    if dtype == torch.float32:
        return torch.randn(t, e, generator=gen).cuda()
    perm = torch.rand(t, e, generator=gen).argsort(dim=1).float()
    return ((perm - e // 2) / 32.0).to(torch.bfloat16).cuda()


def _check_routing(ids, w, logits, bias, k, method, kw):
    t, e = logits.shape
    assert ids.shape == (t, k) and w.shape == (t, k)
    assert ids.dtype == torch.int32 and w.dtype == torch.bfloat16
    if t == 0:
        return
    ref_ids, ref_w = route_reference(logits, bias, k, method, **kw)
    group = {a: kw[a] for a in ("n_group", "topk_group") if a in kw}
    skip = ambiguous_tokens(logits, bias, k, method, include_order=True, rtol=MARGIN_RTOL, **group)
    keep = ~skip
    assert int(skip.sum()) <= max(2, t // 10), f"{int(skip.sum())} of {t} tokens near a tie"
    assert bool(((ids >= 0) & (ids < e)).all())
    assert torch.equal(ids[keep], ref_ids[keep])
    got = w[keep].float()
    want = ref_w[keep].to(torch.bfloat16).float()
    assert bool(torch.isfinite(got).all())
    assert bool(((got - want).abs() <= BF16_ULP * want.abs() + 1e-30).all()), "weights beyond one bf16 ulp"
    same_bits = (got == want).float().mean().item() if got.numel() else 1.0
    assert same_bits >= 0.99, f"only {same_bits:.4f} of the weights equal the rounded reference"
    rel = (got.double() - ref_w[keep].double()).abs() / ref_w[keep].double().abs().clamp(min=1e-30)
    assert bool((rel <= 2.0 ** -8 + 1e-3).all()), f"weight error {rel.max():.3e}"


@pytest.mark.gpu
@pytest.mark.parametrize("method,e,k,kw,dtype,bias_dtype", _configs())
def test_route_matches_reference(method, e, k, kw, dtype, bias_dtype, seeded):
    bias = None if bias_dtype is None else (0.1 * torch.randn(e, generator=seeded)).to(bias_dtype).cuda()
    for t in TOKENS:
        logits = _logits(t, e, dtype, seeded)
        ids, w = route(logits, bias, k, method, **kw)
        _check_routing(ids, w, logits, bias, k, method, kw)


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_route_exact_ties_go_to_the_lower_index(method, seeded):
    """Logits in {0, 1, 2, 3}: many exact ties, which every method must break by expert index
    (distinct values, and the DeepSeekV3 group sums of two of them, stay far apart)."""
    e, k = 64, 1 if method == R.Llama4 else 6
    kw = {"n_group": 8, "topk_group": 4} if method == R.DeepSeekV3 else {}
    logits = torch.randint(0, 4, (200, e), generator=seeded).float().cuda()
    ids, w = route(logits, None, k, method, **kw)
    ref_ids, ref_w = route_reference(logits, None, k, method, **kw)
    assert torch.equal(ids, ref_ids)
    want = ref_w.to(torch.bfloat16).float()
    assert bool(((w.float() - want).abs() <= BF16_ULP * want.abs()).all())


@pytest.mark.gpu
@pytest.mark.parametrize("method,e,k", [(R.Renormalize, 256, 8), (R.DeepSeekV3, 256, 8), (R.Llama4, 128, 1)])
def test_route_writes_replay_ids(method, e, k, seeded):
    t = 77
    kw = {"n_group": 8, "topk_group": 4} if method == R.DeepSeekV3 else {}
    logits = torch.randn(t, e, generator=seeded).cuda()
    replay = torch.full((t + 5, k), -7, dtype=torch.int16, device="cuda")
    ids, _ = route(logits, None, k, method, routing_replay_out=replay, **kw)
    assert torch.equal(replay[:t].int(), ids)
    assert bool((replay[t:] == -7).all())


@pytest.mark.gpu
@pytest.mark.parametrize("t", [64, 6000])
def test_cuda_graph_route_plan_combine_replays_new_routing(t, seeded):
    """Capture route + plan + combine once; replaying with other logits gives the eager results."""
    e, k, offset, num_local, tile_rows, hidden = 256, 8, 64, 128, 32, 512
    kw = {"n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5}
    bias = (0.1 * torch.randn(e, generator=seeded)).cuda()
    shape = PlanShape(t, k, num_local, tile_rows)
    g2 = torch.randn(shape.max_padded_rows, hidden, generator=seeded).to(torch.bfloat16).cuda()
    logits = torch.randn(t, e, generator=seeded).cuda()
    plan = MoePlan.empty(shape, "cuda")
    out = torch.empty(t, hidden, dtype=torch.bfloat16, device="cuda")

    def step():
        ids, w = route(logits, bias, k, R.DeepSeekV3, **kw)
        build_plan(ids, k, offset, num_local, tile_rows, plan=plan)
        combine(g2, w, plan.expanded_idx_to_permuted_idx, out=out)
        return ids, w

    step()  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_ids, g_w = step()

    for _ in range(2):
        logits.copy_(torch.randn(t, e, generator=seeded).cuda())
        graph.replay()
        torch.cuda.synchronize()
        captured = (g_ids.clone(), g_w.clone(), plan.counters.clone(), plan.expanded_idx_to_permuted_idx.clone(),
                    out.clone())
        e_ids, e_w = route(logits, bias, k, R.DeepSeekV3, **kw)
        e_plan = build_plan(e_ids, k, offset, num_local, tile_rows)
        e_out = combine(g2, e_w, e_plan.expanded_idx_to_permuted_idx)
        assert torch.equal(captured[0], e_ids)
        assert torch.equal(captured[1].view(torch.int16), e_w.view(torch.int16))
        assert torch.equal(captured[2], e_plan.counters)
        assert torch.equal(captured[3], e_plan.expanded_idx_to_permuted_idx)
        assert torch.equal(captured[4].view(torch.int16), e_out.view(torch.int16))
        ref = reference_plan(e_ids, k, offset, num_local, tile_rows)
        assert torch.equal(captured[3], ref.expanded_idx_to_permuted_idx.cuda())


# --------------------------------------------------------------------------- bad input (CPU)


def test_route_rejects_bad_input():
    logits = torch.zeros(4, 64)
    with pytest.raises(TypeError, match="routing_logits"):
        route(logits.half(), None, 2, R.Renormalize)
    with pytest.raises(ValueError, match="routing_logits"):
        route(logits.reshape(-1), None, 2, R.Renormalize)
    with pytest.raises(ValueError, match="top_k"):
        route(logits, None, 65, R.Renormalize)
    with pytest.raises(ValueError, match="routing_bias"):
        route(logits, torch.zeros(63), 2, R.DeepSeekV3)
    with pytest.raises(TypeError, match="routing_bias"):
        route(logits, torch.zeros(64, dtype=torch.float16), 2, R.DeepSeekV3)
    with pytest.raises(ValueError, match="n_group"):
        route(logits, None, 2, R.DeepSeekV3, n_group=3, topk_group=1)
    with pytest.raises(ValueError, match="top_k"):
        route(logits, None, 2, R.Llama4)
    with pytest.raises(ValueError, match="routing_method_type"):
        route(logits, None, 2, R.Unspecified)
    with pytest.raises(TypeError, match="routing_replay_out"):
        route(logits, None, 2, R.Renormalize, routing_replay_out=torch.zeros(4, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="routing_replay_out"):
        route(logits, None, 2, R.Renormalize, routing_replay_out=torch.zeros(3, 2, dtype=torch.int16))
    with pytest.raises(ValueError, match="CUDA"):
        route(logits, None, 2, R.Renormalize)
