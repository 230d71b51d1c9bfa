"""The public bf16 entry points end to end on the GPU, against the float reference.

Fresh random inputs per case; weights prepared by cute_moe.prepare; the bound is
||out - ref|| / ||ref|| <= 1e-2 with no NaN, and every measured error is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch

import cute_moe
from cute_moe import reference
from cute_moe.enums import ActivationType, RoutingMethodType as RM
from cute_moe.prepare import prepare_bf16_moe_weights
from cute_moe.routing_ref import ambiguous_tokens, pack_topk_reference
from moe_checks import check_graph_replay, compare

pytestmark = pytest.mark.gpu


@dataclass(frozen=True)
class Case:
    hidden: int
    inter: int
    experts: int
    top_k: int
    method: RM = RM.Renormalize
    activation: ActivationType = ActivationType.Swiglu
    local: Optional[int] = None  # local experts (default: all)
    offset: int = 0
    n_group: Optional[int] = None
    topk_group: Optional[int] = None
    scale: Optional[float] = None
    swiglu: Optional[tuple] = None  # (alpha, beta, limit)
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def num_local(self):
        return self.local or self.experts

    @property
    def fc1_rows(self):
        return (2 if self.activation.is_gated else 1) * self.inter


_WEIGHTS = {}


def _weights(case: Case):
    """Prepared weights per shape, made once per session (fresh seed per shape)."""
    key = (case.hidden, case.inter, case.num_local, case.activation)
    if key not in _WEIGHTS:
        g = torch.Generator(device="cuda").manual_seed(hash(key) % 2**31)
        w1 = (torch.randn(case.num_local, case.fc1_rows, case.hidden, generator=g, device="cuda")
              * case.hidden**-0.5).to(torch.bfloat16)
        w2 = (torch.randn(case.num_local, case.hidden, case.inter, generator=g, device="cuda")
              * case.inter**-0.5).to(torch.bfloat16)
        _WEIGHTS.clear()  # keep one shape resident at a time
        _WEIGHTS[key] = prepare_bf16_moe_weights(w1, w2, case.activation)
    return _WEIGHTS[key]


def _swiglu(case: Case):
    if case.swiglu is None:
        return {}
    a, b, lim = case.swiglu
    n = case.num_local
    jitter = lambda v: (v * (1 + 0.1 * torch.rand(n, device="cuda"))).float()
    return {"gemm1_alpha": jitter(a), "gemm1_beta": jitter(b), "gemm1_clamp_limit": jitter(lim)}


def _logits(case: Case, t: int):
    # Distinct values per token (a permutation of a grid) keep the selection unambiguous.
    grid = torch.stack([torch.randperm(case.experts, device="cuda") for _ in range(t)]) if t else \
        torch.empty(0, case.experts, device="cuda")
    return (grid.float() / 16 - case.experts / 32 + 0.01 * torch.rand(t, case.experts, device="cuda"))


def _common(case: Case):
    return dict(num_experts=case.experts, top_k=case.top_k, n_group=case.n_group, topk_group=case.topk_group,
                intermediate_size=case.inter, local_expert_offset=case.offset,
                local_num_experts=case.num_local, routed_scaling_factor=case.scale,
                routing_method_type=int(case.method), activation_type=int(case.activation))


QWEN3 = Case(2048, 768, 128, 8, RM.RenormalizeNaive)
GPT_OSS = Case(2880, 2880, 32, 4, RM.Renormalize, swiglu=(1.702, 1.0, 7.0))
DEEPSEEK = Case(7168, 2048, 16, 8, RM.DeepSeekV3, n_group=4, topk_group=2, scale=2.5)
RELU2 = Case(1024, 512, 8, 2, RM.Default, activation=ActivationType.Relu2)


@pytest.mark.parametrize("case,tokens", [
    *[(QWEN3, t) for t in (1, 3, 16, 128, 1000, 4096)],
    *[(GPT_OSS, t) for t in (1, 128, 1000)],
    *[(DEEPSEEK, t) for t in (1, 16, 512)],
    *[(RELU2, t) for t in (7, 300)],
], ids=lambda v: f"{v.hidden}x{v.inter}e{v.experts}k{v.top_k}" if isinstance(v, Case) else f"T{v}")
def test_bf16_moe_from_logits(case, tokens, record_error):
    g1, g2 = _weights(case)
    hidden = torch.randn(tokens, case.hidden, device="cuda").to(torch.bfloat16)
    logits = _logits(case, tokens)
    bias = (torch.randn(case.experts, device="cuda") * 0.1).to(torch.bfloat16) if case.method == RM.DeepSeekV3 else None
    kw = dict(_common(case), **_swiglu(case))
    out = cute_moe.trtllm_bf16_moe(logits, bias, hidden, g1, g2, **kw)
    ref = reference.reference_trtllm_bf16_moe(logits, bias, hidden, g1, g2, **kw)
    keep = ~ambiguous_tokens(logits, bias, case.top_k, case.method, case.n_group, case.topk_group)
    assert keep.float().mean() > 0.9
    compare(out, ref, record_error, keep)


SMALL = dict(hidden=512, inter=256, experts=64, top_k=4)


@pytest.mark.parametrize("tokens", [5, 64])  # 5: the one-CTA plan routes (FUSED_ROUTE_MAX_TOKENS)
@pytest.mark.parametrize("method", [m for m in RM if m != RM.Unspecified], ids=lambda m: m.name)
def test_every_routing_method(method, tokens, record_error):
    extra = {}
    if method == RM.Llama4:
        extra = dict(top_k=1)
    if method == RM.DeepSeekV3:
        extra = dict(n_group=8, topk_group=4, scale=2.5)
    case = Case(**{**SMALL, **extra}, method=method)
    g1, g2 = _weights(case)
    hidden = torch.randn(tokens, case.hidden, device="cuda").to(torch.bfloat16)
    logits = _logits(case, tokens)
    bias = None
    if method in (RM.DeepSeekV3, RM.MiniMax2):
        bias = (torch.randn(case.experts, device="cuda") * 0.1).to(torch.bfloat16)
    out = cute_moe.trtllm_bf16_moe(logits, bias, hidden, g1, g2, **_common(case))
    ref = reference.reference_trtllm_bf16_moe(logits, bias, hidden, g1, g2, **_common(case))
    keep = ~ambiguous_tokens(logits, bias, case.top_k, method, case.n_group, case.topk_group)
    compare(out, ref, record_error, keep)


def _routing(case: Case, t: int, experts=None):
    """Random distinct expert ids per token (from `experts` if given) and positive weights."""
    pool = torch.arange(case.experts, device="cuda") if experts is None else torch.as_tensor(experts, device="cuda")
    ids = torch.stack([pool[torch.randperm(pool.numel(), device="cuda")[: case.top_k]] for _ in range(t)]) \
        if t else torch.empty(0, case.top_k, dtype=torch.long, device="cuda")
    w = torch.rand(t, case.top_k, device="cuda") + 0.1
    return ids.to(torch.int32), (w / w.sum(-1, keepdim=True)).to(torch.bfloat16)


def _routed(case, hidden, routing, record, variant=None, **extra_kw):
    g1, g2 = _weights(case)
    kw = dict(_common(case), **_swiglu(case), **extra_kw)
    out = cute_moe.trtllm_bf16_routed_moe(routing, hidden, g1, g2, gemm_variant=variant, **kw)
    ref = reference.reference_trtllm_bf16_routed_moe(routing, hidden, g1, g2, **kw)
    return out, ref


VARIANT_CASE = Case(2048, 768, 32, 8)


@pytest.mark.parametrize("variant", ["micro", "static", "dynamic", "wgmma"])
@pytest.mark.parametrize("tokens", [1, 128, 1000])
def test_every_variant_forced(variant, tokens, record_error):
    from cute_moe.kernels.runtime import arch_of_device

    if variant == "wgmma" and arch_of_device() != "sm_90a":
        pytest.skip("the wgmma instantiation runs on SM90")
    case = VARIANT_CASE
    hidden = torch.randn(tokens, case.hidden, device="cuda").to(torch.bfloat16)
    ids, w = _routing(case, tokens)
    out, ref = _routed(case, hidden, pack_topk_reference(ids, w), record_error, variant=variant)
    compare(out, ref, record_error)


@pytest.mark.parametrize("name,experts_used,local,offset", [
    ("expert_parallel", None, 16, 16),  # most slots land on experts of other ranks
    ("one_hot_expert", "hot", None, 0),  # every token routes to expert 5 (plus others)
    ("empty_experts", list(range(0, 64, 8)), None, 0),  # 56 of 64 experts receive nothing
])
@pytest.mark.parametrize("tokens", [1, 200])
def test_routing_edge_cases(name, experts_used, local, offset, tokens, record_error):
    case = Case(1024, 512, 64, 4, local=local, offset=offset)
    hidden = torch.randn(tokens, case.hidden, device="cuda").to(torch.bfloat16)
    if experts_used == "hot":
        ids, w = _routing(case, tokens, [e for e in range(64) if e != 5])
        ids[:, 0] = 5
    else:
        ids, w = _routing(case, tokens, experts_used)
    out, ref = _routed(case, hidden, (ids, w), record_error)
    compare(out, ref, record_error)


@pytest.mark.parametrize("tokens", [3, 100])  # 3: the one-CTA plan routes / unpacks; 100: separate launches
def test_routing_replay_out(tokens, record_error):
    """Both entry points write the routed ids into ``routing_replay_out`` (rows past T untouched)
    and still match the reference."""
    case = Case(1024, 512, 64, 4)
    g1, g2 = _weights(case)
    hidden = torch.randn(tokens, case.hidden, device="cuda").to(torch.bfloat16)
    logits = _logits(case, tokens)
    replay = torch.full((tokens + 3, case.top_k), -7, dtype=torch.int16, device="cuda")
    out = cute_moe.trtllm_bf16_moe(logits, None, hidden, g1, g2, routing_replay_out=replay, **_common(case))
    ids, _ = cute_moe.route(logits, None, case.top_k, case.method)
    assert torch.equal(replay[:tokens].int(), ids) and bool((replay[tokens:] == -7).all())
    compare(out, reference.reference_trtllm_bf16_moe(logits, None, hidden, g1, g2, **_common(case)), record_error)
    packed_ids, w = _routing(case, tokens)
    replay.fill_(-7)
    out, ref = _routed(case, hidden, pack_topk_reference(packed_ids, w), record_error, routing_replay_out=replay)
    assert torch.equal(replay[:tokens].int(), packed_ids) and bool((replay[tokens:] == -7).all())
    compare(out, ref, record_error)


@pytest.mark.parametrize("weights_dtype", [torch.bfloat16, torch.float32])
def test_pair_routing_and_unfinalized_outputs(weights_dtype, record_error):
    case = Case(1024, 512, 16, 4)
    t = 77
    hidden = torch.randn(t, case.hidden, device="cuda").to(torch.bfloat16)
    ids, w = _routing(case, t)
    routing = (ids, w.to(weights_dtype))
    out, ref = _routed(case, hidden, routing, record_error, do_finalize=False)
    g2_out, weights, perm = out
    g2_ref, w_ref, perm_ref = ref
    assert weights.dtype == weights_dtype and torch.equal(weights.float(), w_ref.float())
    rows, rows_ref = perm.view(t, case.top_k).long(), perm_ref.view(t, case.top_k).long()
    assert (rows >= 0).all()
    compare(g2_out[rows.flatten()], g2_ref[rows_ref.flatten()], record_error)
    final = reference.finalize_from_unfinalized(g2_out, weights, perm, case.top_k)
    compare(final, reference.finalize_from_unfinalized(g2_ref, w_ref, perm_ref, case.top_k), record_error)


@pytest.mark.parametrize("do_finalize", [True, False])
def test_lora_delta(do_finalize, record_error):
    case = Case(1024, 512, 16, 4)
    t = 50
    hidden = torch.randn(t, case.hidden, device="cuda").to(torch.bfloat16)
    ids, w = _routing(case, t)
    delta = (torch.randn(t, case.top_k, case.fc1_rows, device="cuda") * 0.5).to(torch.bfloat16)
    out, ref = _routed(case, hidden, pack_topk_reference(ids, w), record_error, gemm1_lora_delta=delta,
                       do_finalize=do_finalize)
    perm, perm_ref = out[-2].long(), ref[-2].long()
    act, act_ref = out[-1], ref[-1]
    compare(act[perm], act_ref[perm_ref], record_error, what="gemm1_output")
    first = out[0] if do_finalize else reference.finalize_from_unfinalized(out[0], out[1], out[2], case.top_k)
    first_ref = ref[0] if do_finalize else reference.finalize_from_unfinalized(ref[0], ref[1], ref[2], case.top_k)
    compare(first, first_ref, record_error)


def test_zero_tokens_and_output_in_place():
    case = Case(1024, 512, 16, 4)
    g1, g2 = _weights(case)
    hidden = torch.empty(0, case.hidden, dtype=torch.bfloat16, device="cuda")
    out = cute_moe.trtllm_bf16_moe(_logits(case, 0), None, hidden, g1, g2, **_common(case))
    assert out.shape == (0, case.hidden)
    hidden = torch.randn(9, case.hidden, device="cuda").to(torch.bfloat16)
    dst = torch.full((9, case.hidden), float("nan"), dtype=torch.bfloat16, device="cuda")
    res = cute_moe.trtllm_bf16_moe(_logits(case, 9), None, hidden, g1, g2, output=dst, **_common(case))
    assert res.data_ptr() == dst.data_ptr() and not torch.isnan(dst).any()


def test_cuda_graph_replays_new_routing(record_error):
    case = Case(2048, 768, 64, 8, RM.RenormalizeNaive)
    g1, g2 = _weights(case)
    t = 96
    hidden = torch.randn(t, case.hidden, device="cuda").to(torch.bfloat16)
    logits = _logits(case, t)
    out = torch.empty(t, case.hidden, dtype=torch.bfloat16, device="cuda")

    def refresh():
        logits.copy_(_logits(case, t))
        hidden.copy_(torch.randn(t, case.hidden, device="cuda").to(torch.bfloat16))

    check_graph_replay(
        lambda: cute_moe.trtllm_bf16_moe(logits, None, hidden, g1, g2, output=out, **_common(case)), out, refresh,
        lambda: cute_moe.trtllm_bf16_moe(logits, None, hidden, g1, g2, **_common(case)),
        lambda: reference.reference_trtllm_bf16_moe(logits, None, hidden, g1, g2, **_common(case)), record_error)


def test_torch_compile_traces_the_custom_op(record_error):
    case = Case(1024, 512, 16, 4)
    g1, g2 = _weights(case)
    hidden = torch.randn(33, case.hidden, device="cuda").to(torch.bfloat16)
    logits = _logits(case, 33)
    fn = torch.compile(lambda x, l: cute_moe.trtllm_bf16_moe(l, None, x, g1, g2, **_common(case)), fullgraph=True)
    out = fn(hidden, logits)
    compare(out, reference.reference_trtllm_bf16_moe(logits, None, hidden, g1, g2, **_common(case)), record_error)
