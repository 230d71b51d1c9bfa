"""Float routing reference: hand-computed cases for every method (ties included), an independent
per-token oracle on random logits, tie margins, FlashInfer's limits and the packed format."""

import math

import pytest
import torch

from cute_moe.enums import RoutingMethodType as R
from cute_moe.routing_ref import (
    ROUTING_LIMITS, ambiguous_tokens, check_routing_limits, pack_topk_reference, route_reference,
    sigmoid_accurate, topk_score_margin, unpack_topk_reference, warp_sum,
)

# Experts 1 and 3 tie at 3.0, experts 2 and 6 at 2.0: the smaller index wins each tie.
TIE_ROW = [1.0, 3.0, 2.0, 3.0, 0.0, -1.0, 2.0, 0.5]


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def _route(logits, k, method, bias=None, **kw):
    ids, w = route_reference(torch.tensor([logits]), None if bias is None else torch.tensor(bias), k, method, **kw)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32 and ids.shape == w.shape == (1, k)
    return ids[0].tolist(), w[0].double().tolist()


def _close(got, want, rtol=1e-6):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g == pytest.approx(w, rel=rtol, abs=1e-12)


# --------------------------------------------------------------------------- hand-computed cases


def test_default_softmax_then_topk_with_ties():
    ids, w = _route(TIE_ROW, 3, R.Default)
    z = sum(math.exp(x) for x in TIE_ROW)
    assert ids == [1, 3, 2]
    _close(w, [math.exp(3) / z, math.exp(3) / z, math.exp(2) / z])


@pytest.mark.parametrize("method", [R.Renormalize, R.RenormalizeNaive])
def test_renormalize_topk_then_softmax(method):
    ids, w = _route(TIE_ROW, 3, method)
    z = 2 * math.exp(3) + math.exp(2)
    assert ids == [1, 3, 2]
    _close(w, [math.exp(3) / z, math.exp(3) / z, math.exp(2) / z])


def test_topk_returns_raw_logits():
    ids, w = _route(TIE_ROW, 3, R.TopK)
    assert ids == [1, 3, 2]
    _close(w, [3.0, 3.0, 2.0], rtol=0)


def test_sigmoid_family():
    s = [_sig(3.0), _sig(3.0), _sig(2.0)]
    ids, w = _route(TIE_ROW, 3, R.Sigmoid)
    assert ids == [1, 3, 2]
    _close(w, s)
    ids, w = _route(TIE_ROW, 3, R.SigmoidRenorm)
    assert ids == [1, 3, 2]
    _close(w, [v / sum(s) for v in s])
    ids, w = _route(TIE_ROW, 3, R.SigmoidRenorm, norm_topk_prob=False)
    assert ids == [1, 3, 2]
    _close(w, s)
    ids, w = _route(TIE_ROW, 3, R.TopKSigmoid)
    assert ids == [1, 3, 2]
    _close(w, s)


def test_sigmoid_saturation_ties_by_index_but_topk_sigmoid_ranks_logits():
    assert float(sigmoid_accurate(torch.tensor(20.0))) == 1.0
    row = [0.0, 1.0, 20.0, -3.0, 2.0, 30.0, 0.5, -1.0]
    assert _route(row, 1, R.Sigmoid)[0] == [2]  # sigmoid(20) == sigmoid(30) == 1.0 in float32
    ids, w = _route(row, 1, R.TopKSigmoid)
    assert ids == [5] and w == [1.0]


def test_signed_zero_ranks_below_positive_zero():
    assert _route([-0.0, 0.0, -1.0, -2.0], 2, R.TopK)[0] == [1, 0]


def test_minimax2_bias_selects_unbiased_sigmoid_weighs():
    bias = [0.0] * 7 + [1.0]
    s7, s1 = _sig(0.5), _sig(3.0)  # expert 7 wins through its bias; 1 beats 3 on the tie
    ids, w = _route(TIE_ROW, 2, R.MiniMax2, bias=bias)
    assert ids == [7, 1]
    _close(w, [s7 / (s7 + s1), s1 / (s7 + s1)])
    ids, w = _route(TIE_ROW, 2, R.MiniMax2, bias=bias, routed_scaling_factor=2.0)
    _close(w, [2 * s7 / (s7 + s1), 2 * s1 / (s7 + s1)])


def test_deepseek_ungrouped_matches_minimax2_formula():
    bias = [0.25, -0.5, 0.0, 0.1, 0.3, 0.0, -0.2, 0.4]
    scored = sorted(range(8), key=lambda e: (-(_sig(TIE_ROW[e]) + bias[e]), e))[:3]
    ids, w = _route(TIE_ROW, 3, R.DeepSeekV3, bias=bias, routed_scaling_factor=2.5)
    assert ids == scored
    tot = sum(_sig(TIE_ROW[e]) for e in scored)
    _close(w, [2.5 * _sig(TIE_ROW[e]) / tot for e in scored])
    for n_group in (None, 0, 1):  # n_group <= 1 takes the ungrouped path
        assert _route(TIE_ROW, 3, R.DeepSeekV3, bias=bias, n_group=n_group, routed_scaling_factor=2.5)[0] == ids


def test_deepseek_grouped_picks_groups_by_top2_sum():
    # Group 0 holds the single best expert, group 1 the best pair (top-2 sums 1.0 vs 1.76).
    row = [4.0, -4.0, -4.0, -4.0, 2.0, 2.0, -4.0, -4.0]
    ids, w = _route(row, 2, R.DeepSeekV3, bias=[0.0] * 8, n_group=2, topk_group=1, routed_scaling_factor=2.0)
    assert ids == [4, 5]
    _close(w, [1.0, 1.0])
    ids, _ = _route(row, 2, R.DeepSeekV3, bias=[0.0] * 8, n_group=2, topk_group=2)
    assert ids == [0, 4]
    margin = topk_score_margin(torch.tensor([row]), torch.zeros(8), 2, R.DeepSeekV3, n_group=2, topk_group=1)
    group_gap = 2 * _sig(2.0) - (_sig(4.0) + _sig(-4.0))
    expert_gap = _sig(2.0) - _sig(-4.0)
    assert float(margin[0]) == pytest.approx(min(group_gap, expert_gap), rel=1e-6)


def test_grouped_deepseek_rounds_float32_bias_to_bf16():
    # Equal sigmoid scores; float32 biases 0.1 < 0.1001 both round to the same bf16 value.
    row = [0.0] * 8
    bias = torch.tensor([0.1, 0.1001] + [-1.0] * 6)
    assert bias.bfloat16()[0] == bias.bfloat16()[1]
    ungrouped, _ = route_reference(torch.tensor([row]), bias, 1, R.DeepSeekV3)
    grouped, _ = route_reference(torch.tensor([row]), bias, 1, R.DeepSeekV3, n_group=2, topk_group=1)
    assert ungrouped.tolist() == [[1]] and grouped.tolist() == [[0]]


def test_llama4_top1_ties_across_and_within_lanes():
    row = [0.0] * 40
    row[5] = row[33] = 2.0  # different lanes (5, 1)
    row[3] = row[35] = 1.5  # same lane 3
    ids, w = _route(row, 1, R.Llama4)
    assert ids == [5]
    _close(w, [_sig(2.0)])
    row[5] = row[33] = 0.0
    assert _route(row, 1, R.Llama4)[0] == [3]


def test_bfloat16_logits_route_like_their_float32_values(seeded):
    for method in (R.Default, R.Renormalize, R.TopK, R.SigmoidRenorm, R.MiniMax2, R.TopKSigmoid):
        x = torch.randn(16, 64, generator=seeded).bfloat16()
        bias = torch.randn(64, generator=seeded) * 0.1
        a = route_reference(x, bias, 4, method)
        b = route_reference(x.float(), bias, 4, method)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_empty_batch_and_bad_arguments():
    ids, w = route_reference(torch.zeros(0, 16), None, 4, R.Renormalize)
    assert ids.shape == w.shape == (0, 4)
    with pytest.raises(ValueError, match="top_k"):
        route_reference(torch.zeros(2, 8), None, 9, R.TopK)
    with pytest.raises(ValueError, match="Llama4"):
        route_reference(torch.zeros(2, 8), None, 2, R.Llama4)
    with pytest.raises(ValueError, match="topk_group"):
        route_reference(torch.zeros(2, 8), None, 2, R.DeepSeekV3, n_group=2, topk_group=3)
    with pytest.raises(TypeError, match="routing_logits"):
        route_reference(torch.zeros(2, 8, dtype=torch.float16), None, 2, R.TopK)
    with pytest.raises(ValueError, match="Unspecified"):
        route_reference(torch.zeros(2, 8), None, 2, R.Unspecified)


def test_warp_sum_uses_butterfly_order():
    # A sequential sum would absorb each small term into 2**24 separately.
    v = torch.zeros(1, 32)
    v[0, 0], v[0, 1], v[0, 17] = 2.0**24, 1.0, 1.0  # lanes 1 and 17 meet first: 1 + 1 = 2
    assert float(warp_sum(v)) == 2.0**24 + 2.0
    assert float(torch.tensor(2.0**24) + 1.0 + 1.0) == 2.0**24


# --------------------------------------------------------------------------- independent oracle


def _oracle(logits, bias, k, method, n_group, topk_group, scale, norm):
    """Per-token float64 routing written from the method definitions alone."""
    rows = logits.double().tolist()
    b = [0.0] * logits.shape[1] if bias is None else bias.double().tolist()
    if method == R.DeepSeekV3 and (n_group or 0) > 1:
        b = bias.bfloat16().double().tolist()
    out_ids, out_w = [], []
    for x in rows:
        e = len(x)
        s = [_sig(v) for v in x]
        cand = list(range(e))
        if method == R.Default:
            z = sum(math.exp(v - max(x)) for v in x)
            score = [math.exp(v - max(x)) / z for v in x]
        elif method in (R.SigmoidRenorm, R.Sigmoid):
            score = s
        elif method in (R.MiniMax2, R.DeepSeekV3):
            score = [s[i] + b[i] for i in range(e)]
            if (n_group or 0) > 1:
                g = e // n_group
                gs = [sum(sorted(score[j * g:(j + 1) * g], reverse=True)[:2]) for j in range(n_group)]
                best = sorted(range(n_group), key=lambda j: (-gs[j], j))[:topk_group]
                cand = [i for i in range(e) if i // g in best]
        else:
            score = x
        ids = sorted(cand, key=lambda i: (-score[i], i))[:k]
        if method in (R.Default, R.TopK, R.Sigmoid) or (method == R.SigmoidRenorm and not norm):
            w = [score[i] for i in ids]
        elif method == R.SigmoidRenorm:
            w = [score[i] / sum(score[j] for j in ids) for i in ids]
        elif method in (R.Renormalize, R.RenormalizeNaive):
            z = sum(math.exp(x[j] - x[ids[0]]) for j in ids)
            w = [math.exp(x[i] - x[ids[0]]) / z for i in ids]
        elif method in (R.TopKSigmoid, R.Llama4):
            w = [s[i] for i in ids]
        else:
            w = [scale * s[i] / sum(s[j] for j in ids) for i in ids]
        out_ids.append(ids)
        out_w.append(w)
    return torch.tensor(out_ids, dtype=torch.int32), torch.tensor(out_w, dtype=torch.float64)


CASES = [
    (R.Default, 64, 8, {}), (R.Renormalize, 128, 8, {}), (R.RenormalizeNaive, 64, 4, {}),
    (R.TopK, 64, 6, {}), (R.SigmoidRenorm, 64, 8, {}), (R.SigmoidRenorm, 32, 4, {"norm_topk_prob": False}),
    (R.Sigmoid, 256, 8, {}), (R.TopKSigmoid, 64, 8, {}), (R.MiniMax2, 256, 8, {"routed_scaling_factor": 1.5}),
    (R.DeepSeekV3, 256, 8, {"n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5}),
    (R.DeepSeekV3, 64, 6, {"n_group": 4, "topk_group": 2}), (R.DeepSeekV3, 128, 8, {"routed_scaling_factor": 3.0}),
    (R.Llama4, 128, 1, {}),
]


@pytest.mark.parametrize("method,e,k,kw", CASES, ids=[f"{c[0].name}-{c[1]}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_logits_match_per_token_oracle(method, e, k, kw, dtype, seeded):
    t = 96
    logits = (torch.randn(t, e, generator=seeded) * 2).to(dtype)
    bias = (torch.randn(e, generator=seeded) * 0.2).to(dtype) if method in (R.MiniMax2, R.DeepSeekV3) else None
    ids, w = route_reference(logits, bias, k, method, **kw)
    sel = {n: kw[n] for n in ("n_group", "topk_group") if n in kw}
    amb = ambiguous_tokens(logits, bias, k, method, include_order=True, **sel)
    want_ids, want_w = _oracle(logits, bias, k, method, kw.get("n_group"), kw.get("topk_group"),
                               kw.get("routed_scaling_factor", 1.0), kw.get("norm_topk_prob", True))
    ok = ~amb
    assert int(ok.sum()) >= t * 3 // 4
    assert torch.equal(ids[ok], want_ids[ok])
    torch.testing.assert_close(w[ok].double(), want_w[ok], rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("method", [R.Default, R.SigmoidRenorm, R.MiniMax2, R.Renormalize])
def test_margin_is_zero_on_ties_and_positive_otherwise(method, seeded):
    k, e = 3, 32
    x = torch.randn(8, e, generator=seeded)
    x[0, :] = 1.0  # every expert tied
    bias = torch.zeros(e)
    m = topk_score_margin(x, bias, k, method)
    assert m.shape == (8,) and m.dtype == torch.float32
    assert float(m[0]) == 0.0
    assert bool((m[1:] > 0).all())
    assert bool(torch.isinf(topk_score_margin(x, bias, e, method)).all())  # nothing left unselected
    ordered = topk_score_margin(x, bias, k, method, include_order=True)
    assert bool((ordered <= m).all())


def test_relative_margin_divides_by_the_larger_score(seeded):
    x = torch.randn(16, 24, generator=seeded)
    s = x.sort(dim=-1, descending=True).values
    want = (s[:, 2] - s[:, 3]) / torch.maximum(s[:, 2].abs(), s[:, 3].abs())
    got = topk_score_margin(x, None, 3, R.Renormalize, relative=True)
    torch.testing.assert_close(got, want)


def test_ambiguous_tokens_flags_near_ties_only_for_computed_scores():
    x = torch.tensor([[0.5, 0.5 + 1e-7, -1.0, -2.0], [0.5, 1.5, -1.0, -2.0]])
    assert ambiguous_tokens(x, None, 1, R.Sigmoid).tolist() == [True, False]
    assert ambiguous_tokens(x, None, 1, R.TopK).tolist() == [False, False]  # raw logits rank exactly
    same = torch.tensor([[0.75, 0.75, -1.0, -2.0]])  # equal inputs score equal everywhere: index decides
    assert float(topk_score_margin(same, None, 1, R.Sigmoid)[0]) == 0.0
    assert ambiguous_tokens(same, None, 1, R.Sigmoid).tolist() == [False]


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("method,e,k,kw,ok", [
    (R.Renormalize, 512, 22, {}, True), (R.Renormalize, 2048, 32, {}, True), (R.Renormalize, 2049, 1, {}, False),
    (R.Renormalize, 64, 33, {}, False), (R.Default, 256, 8, {}, True), (R.Default, 257, 1, {}, False),
    (R.Default, 128, 9, {}, False), (R.TopK, 256, 8, {}, True), (R.SigmoidRenorm, 256, 9, {}, False),
    (R.MiniMax2, 1024, 32, {}, True), (R.MiniMax2, 1025, 4, {}, False),
    (R.DeepSeekV3, 384, 8, {}, True), (R.DeepSeekV3, 512, 22, {"n_group": 1}, True),
    (R.DeepSeekV3, 256, 8, {"n_group": 8, "topk_group": 4}, True),
    (R.DeepSeekV3, 256, 23, {"n_group": 8, "topk_group": 4}, False),
    (R.DeepSeekV3, 256, 8, {"n_group": 8, "topk_group": 5}, False),
    (R.DeepSeekV3, 512, 8, {"n_group": 8, "topk_group": 4}, False),  # 64 experts per group
    (R.DeepSeekV3, 288, 8, {"n_group": 9, "topk_group": 4}, False),
    (R.DeepSeekV3, 64, 9, {"n_group": 8, "topk_group": 1}, False),  # 8 candidates for 9 slots
    (R.Llama4, 128, 1, {}, True), (R.Llama4, 129, 1, {}, False), (R.Llama4, 16, 2, {}, False),
    (R.Unspecified, 16, 2, {}, False), (R.TopK, 8, 9, {}, False),
])
def test_routing_limits(method, e, k, kw, ok):
    if ok:
        check_routing_limits(method, e, k, **kw)
    else:
        with pytest.raises(ValueError):
            check_routing_limits(method, e, k, **kw)


def test_limits_table_covers_every_concrete_method():
    assert set(ROUTING_LIMITS) == {m for m in R if m != R.Unspecified}
    assert ROUTING_LIMITS[R.Renormalize].max_top_k == 32 and ROUTING_LIMITS[R.Renormalize].max_experts == 2048


# --------------------------------------------------------------------------- packed format


def test_pack_unpack_round_trip_and_bit_layout(seeded):
    t, k = 50, 8
    ids = torch.randint(0, 2048, (t, k), generator=seeded, dtype=torch.int32)
    w = (torch.randn(t, k, generator=seeded) * 3).bfloat16()
    packed = pack_topk_reference(ids, w)
    assert packed.dtype == torch.int32 and packed.shape == (t, k)
    assert torch.equal(packed >> 16, ids)
    assert torch.equal(packed & 0xFFFF, w.view(torch.int16).int() & 0xFFFF)
    ids2, w2 = unpack_topk_reference(packed)
    assert ids2.dtype == torch.int32 and w2.dtype == torch.bfloat16
    assert torch.equal(ids2, ids) and torch.equal(w2.view(torch.int16), w.view(torch.int16))


def test_pack_rounds_float32_to_nearest_even(seeded):
    vals = torch.cat([torch.randn(200, generator=seeded) * 10,
                      torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 1e-40, -1e-40, float("inf"),
                                    -float("inf"), 3.3895e38, 0.0, -0.0])]).view(-1, 2)
    ids = torch.randint(0, 512, vals.shape, generator=seeded, dtype=torch.int32)
    _, w = unpack_topk_reference(pack_topk_reference(ids, vals))
    assert torch.equal(w.view(torch.int16), vals.bfloat16().view(torch.int16))
    nan = torch.tensor([[float("nan")]]).view(torch.int32) | 0x1234  # quiet NaN with a payload
    _, w = unpack_topk_reference(pack_topk_reference(torch.tensor([[3]], dtype=torch.int32), nan.view(torch.float32)))
    assert int(w.view(torch.int16)) & 0xFFFF == ((int(nan) >> 16) | 0x40) & 0xFFFF
