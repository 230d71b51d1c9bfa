"""The MXINT4 entry points and the vLLM helper end to end on the GPU, against the float reference.

Weights: fresh random float experts quantized by cute_moe.prepare.quantize_mxint4 (signed int4,
bf16 scale per 32 values) and prepared by cute_moe.prepare; the reference dequantizes the
prepared tensors (``q * s`` in float32). Bound: ``||out - ref|| / ||ref|| <= 1e-2``, no NaN; every
measured error is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import torch

import cute_moe
from cute_moe import reference
from cute_moe.enums import RoutingMethodType as RM
from cute_moe.integrations import vllm
from cute_moe.kernels import runtime
from cute_moe.layouts import pack_uint4b8, unpack_int4
from cute_moe.prepare import prepare_mxint4_moe_weights, prepare_static_weights_for_trtllm_mxint4_moe, quantize_mxint4
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
    local: Optional[int] = None
    offset: int = 0
    n_group: Optional[int] = None
    topk_group: Optional[int] = None
    scale: Optional[float] = None

    @property
    def num_local(self):
        return self.local or self.experts


KIMI = Case(7168, 2048, 64, 8, RM.DeepSeekV3, n_group=1, topk_group=1, scale=2.827)
KIMI_EP = Case(7168, 2048, 384, 8, RM.DeepSeekV3, local=64, offset=128, n_group=1, topk_group=1, scale=2.827)
QWEN3 = Case(2048, 768, 128, 8, RM.RenormalizeNaive)
SMALL = Case(1024, 512, 16, 4)

_WEIGHTS = {}


def _quantized_experts(n: int, rows: int, cols: int, g: torch.Generator):
    """(packed uint8 [n, rows, cols/2], scales bf16 [n, rows, cols/32]), one expert at a time."""
    packed = torch.empty(n, rows, cols // 2, dtype=torch.uint8, device="cuda")
    scales = torch.empty(n, rows, cols // 32, dtype=torch.bfloat16, device="cuda")
    for e in range(n):
        w = torch.randn(rows, cols, generator=g, device="cuda") * cols**-0.5
        packed[e], scales[e] = quantize_mxint4(w)
    return packed, scales


def _weights(case: Case):
    """Prepared MXINT4 weights per shape (one shape resident at a time)."""
    key = (case.hidden, case.inter, case.num_local)
    if key not in _WEIGHTS:
        _WEIGHTS.clear()
        g = torch.Generator(device="cuda").manual_seed(hash(key) % 2**31)
        w1, s1 = _quantized_experts(case.num_local, 2 * case.inter, case.hidden, g)
        w2, s2 = _quantized_experts(case.num_local, case.hidden, case.inter, g)
        _WEIGHTS[key] = prepare_mxint4_moe_weights(w1, s1, w2, s2)
    return _WEIGHTS[key]


def _common(case: Case):
    return dict(num_experts=case.experts, top_k=case.top_k, n_group=case.n_group, topk_group=case.topk_group,
                intermediate_size=case.inter, local_expert_offset=case.offset, local_num_experts=case.num_local,
                routed_scaling_factor=case.scale, routing_method_type=int(case.method))


def _swiglu(case: Case, on: bool):
    n = case.num_local
    if not on:
        return dict(gemm1_alpha=None, gemm1_beta=None, gemm1_clamp_limit=None)
    jitter = lambda v: (v * (1 + 0.1 * torch.rand(n, device="cuda"))).float()  # noqa: E731
    return dict(gemm1_alpha=jitter(1.702), gemm1_beta=jitter(1.0), gemm1_clamp_limit=jitter(7.0))


def _logits(case: Case, t: int):
    grid = torch.stack([torch.randperm(case.experts, device="cuda") for _ in range(t)]) if t else \
        torch.empty(0, case.experts, device="cuda")
    return grid.float() / 16 - case.experts / 32 + 0.01 * torch.rand(t, case.experts, device="cuda")


def _routing(case: Case, t: int):
    ids = torch.stack([torch.randperm(case.experts, device="cuda")[: case.top_k] for _ in range(t)])
    w = torch.rand(t, case.top_k, device="cuda") + 0.1
    return ids.to(torch.int32), (w / w.sum(-1, keepdim=True)).to(torch.bfloat16)


def _from_logits(case: Case, t: int, record, swiglu=False, **kw):
    g1, g1s, g2, g2s = _weights(case)
    hidden = torch.randn(t, case.hidden, device="cuda").to(torch.bfloat16)
    logits = _logits(case, t)
    bias = (torch.randn(case.experts, device="cuda") * 0.1).to(torch.bfloat16) if case.method == RM.DeepSeekV3 \
        else None
    args = (logits, bias, hidden, g1, g1s)
    opts = dict(_swiglu(case, swiglu), gemm2_weights=g2, gemm2_weights_scale=g2s, **_common(case), **kw)
    out = cute_moe.trtllm_mxint4_block_scale_moe(*args, **opts)
    ref = reference.reference_trtllm_mxint4_block_scale_moe(*args, **opts)
    keep = ~ambiguous_tokens(logits, bias, case.top_k, case.method, case.n_group, case.topk_group)
    assert keep.float().mean() > 0.9
    return out, ref, keep


@pytest.mark.parametrize("case,tokens", [
    *[(KIMI, t) for t in (1, 4, 64, 512, 4096)],
    *[(QWEN3, t) for t in (1, 4, 64, 512, 4096)],
    (KIMI_EP, 64),  # expert parallel: 64 of 384 experts local, most slots elsewhere
], ids=lambda v: f"{v.hidden}x{v.inter}e{v.experts}l{v.num_local}" if isinstance(v, Case) else f"T{v}")
def test_mxint4_moe_from_logits(case, tokens, record_error):
    out, ref, keep = _from_logits(case, tokens, record_error)
    assert isinstance(out, list) and len(out) == 1
    compare(out[0], ref[0], record_error, keep)


@pytest.mark.parametrize("tokens", [4, 512])
def test_mxint4_swiglu_alpha_beta_clamp(tokens, record_error):
    out, ref, keep = _from_logits(QWEN3, tokens, record_error, swiglu=True)
    compare(out[0], ref[0], record_error, keep)


def _routed(case: Case, t: int, swiglu: bool, gemm_variant: Optional[str] = None, **kw):
    g1, g1s, g2, g2s = _weights(case)
    hidden = torch.randn(t, case.hidden, device="cuda").to(torch.bfloat16)
    packed = pack_topk_reference(*_routing(case, t))
    opts = dict(_swiglu(case, swiglu), gemm2_weights=g2, gemm2_weights_scale=g2s, **_common(case), **kw)
    out = cute_moe.trtllm_mxint4_block_scale_routed_moe(packed, hidden, g1, g1s, gemm_variant=gemm_variant,
                                                        **opts)
    ref = reference.reference_trtllm_mxint4_block_scale_routed_moe(packed, hidden, g1, g1s, **opts)
    return out, ref


@pytest.mark.parametrize("swiglu", [False, True], ids=["plain", "alpha_beta_clamp"])
@pytest.mark.parametrize("lora", [False, True], ids=["no_lora", "lora"])
@pytest.mark.parametrize("do_finalize", [True, False])
def test_mxint4_routed_return_table(swiglu, lora, do_finalize, record_error):
    case, t = SMALL, 61
    kw = {"do_finalize": do_finalize}
    if lora:
        kw["gemm1_lora_delta"] = (torch.randn(t, case.top_k, 2 * case.inter, device="cuda") * 0.5).to(torch.bfloat16)
    out, ref = _routed(case, t, swiglu, **kw)
    assert len(out) == len(ref)
    if lora:
        perm, perm_ref = out[-2].long(), ref[-2].long()
        compare(out[-1][perm], ref[-1][perm_ref], record_error, what="gemm1_output")
    if do_finalize:
        compare(out[0], ref[0], record_error)
    else:
        final = reference.finalize_from_unfinalized(out[0], out[1], out[2], case.top_k)
        final_ref = reference.finalize_from_unfinalized(ref[0], ref[1], ref[2], case.top_k)
        compare(final, final_ref, record_error)


@pytest.mark.parametrize("variant", ["micro", "static", "dynamic", "wgmma"])
@pytest.mark.parametrize("tokens", [1, 128, 1000])
def test_mxint4_every_variant_forced(variant, tokens, record_error):
    if variant == "wgmma" and runtime.arch_of_device() != "sm_90a":
        pytest.skip("the wgmma instantiation runs on SM90")
    out, ref = _routed(Case(2048, 768, 32, 8), tokens, False, gemm_variant=variant)
    compare(out[0], ref[0], record_error)


def test_mxint4_zero_and_one_token(record_error):
    case = SMALL
    g1, g1s, g2, g2s = _weights(case)
    empty = torch.empty(0, case.hidden, dtype=torch.bfloat16, device="cuda")
    out = cute_moe.trtllm_mxint4_block_scale_moe(_logits(case, 0), None, empty, g1, g1s, None, None, None, g2, g2s,
                                                 **_common(case))
    assert out[0].shape == (0, case.hidden)
    out, ref, keep = _from_logits(case, 1, record_error)
    compare(out[0], ref[0], record_error, keep)


def _checkpoint(case: Case, g: torch.Generator):
    """vLLM checkpoint tensors: int32 uint4b8 words, FC1 rows [gate; up], bf16 scales."""
    w1, s1 = _quantized_experts(case.num_local, 2 * case.inter, case.hidden, g)
    w2, s2 = _quantized_experts(case.num_local, case.hidden, case.inter, g)
    return pack_uint4b8(unpack_int4(w1)), s1, pack_uint4b8(unpack_int4(w2)), s2


def test_vllm_helper_matches_the_entry_point(record_error):
    case = Case(1024, 512, 32, 4, RM.DeepSeekV3, local=16, offset=16, n_group=4, topk_group=2, scale=None)
    g = torch.Generator(device="cuda").manual_seed(7)
    w1, s1, w2, s2 = _checkpoint(case, g)
    prepared = prepare_static_weights_for_trtllm_mxint4_moe(w1, s1, w2, s2)
    t = 40
    x = torch.randn(t, case.hidden, device="cuda").to(torch.bfloat16)
    logits = _logits(case, t).to(torch.bfloat16)
    bias = torch.randn(case.experts, device="cuda") * 0.1
    out = vllm.flashinfer_trtllm_mxint4_moe(
        x, logits, prepared["gemm1_weights"], prepared["gemm1_scales"], prepared["gemm2_weights"],
        prepared["gemm2_scales"], global_num_experts=case.experts, top_k=case.top_k,
        intermediate_size_per_partition=case.inter, local_num_experts=case.num_local, ep_rank=1,
        num_expert_group=case.n_group, topk_group=case.topk_group, e_score_correction_bias=bias,
        routing_method_type=int(RM.DeepSeekV3))
    args = (logits.float(), bias.to(torch.bfloat16), x, prepared["gemm1_weights"], prepared["gemm1_scales"], None,
            None, None, prepared["gemm2_weights"], prepared["gemm2_scales"])
    direct = cute_moe.trtllm_mxint4_block_scale_moe(*args, **_common(case))
    assert torch.equal(out, direct[0]), "the vLLM helper and the entry point disagree"
    ref = reference.reference_trtllm_mxint4_block_scale_moe(*args, **_common(case))
    keep = ~ambiguous_tokens(logits.float(), bias.to(torch.bfloat16), case.top_k, case.method, case.n_group,
                             case.topk_group)
    compare(out, ref[0], record_error, keep)
    assert vllm.is_flashinfer_mxint4_moe_available()


def test_mxint4_cuda_graph_replays_new_routing(record_error):
    case = QWEN3
    g1, g1s, g2, g2s = _weights(case)
    t = 96
    hidden = torch.randn(t, case.hidden, device="cuda").to(torch.bfloat16)
    logits = _logits(case, t)
    out = torch.empty(t, case.hidden, dtype=torch.bfloat16, device="cuda")
    args = (logits, None, hidden, g1, g1s, None, None, None, g2, g2s)

    def refresh():
        logits.copy_(_logits(case, t))
        hidden.copy_(torch.randn(t, case.hidden, device="cuda").to(torch.bfloat16))

    check_graph_replay(
        lambda: cute_moe.trtllm_mxint4_block_scale_moe(*args, output=out, **_common(case)), out, refresh,
        lambda: cute_moe.trtllm_mxint4_block_scale_moe(*args, **_common(case))[0],
        lambda: reference.reference_trtllm_mxint4_block_scale_moe(*args, **_common(case))[0], record_error)
