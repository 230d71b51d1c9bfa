"""One fused MoE call, start to finish: route -> plan -> FC1 -> FC2 -> combine.

Every public entry point builds a ``MoeCall`` and hands it to ``run_moe``. The steps are the
kernels of cute_moe.routing, cute_moe.gemm and cute_moe.kernels.topk_pack; this module only
decides which buffers exist and what goes back to the caller (FlashInfer's return table, see
cute_moe.moe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from . import validate
from .enums import ActivationType, RoutingInputMode


@dataclass(frozen=True)
class ExpertWeights:
    """Prepared expert weights of one call: ``kind`` is "bf16" or "mxint4"."""

    kind: str
    gemm1: torch.Tensor
    gemm2: torch.Tensor
    gemm1_scale: Optional[torch.Tensor] = None
    gemm2_scale: Optional[torch.Tensor] = None

    @classmethod
    def bf16(cls, gemm1, gemm2) -> "ExpertWeights":
        return cls("bf16", gemm1, gemm2)

    @classmethod
    def mxint4(cls, gemm1, gemm1_scale, gemm2, gemm2_scale) -> "ExpertWeights":
        return cls("mxint4", gemm1, gemm2, gemm1_scale, gemm2_scale)


@dataclass
class MoeCall:
    mode: RoutingInputMode
    hidden_states: torch.Tensor
    weights: ExpertWeights
    num_experts: int
    top_k: int
    n_group: Optional[int]
    topk_group: Optional[int]
    intermediate_size: int
    local_expert_offset: int
    local_num_experts: int
    routed_scaling_factor: Optional[float] = None
    routing_method_type: int = 0
    activation_type: int = int(ActivationType.Swiglu)
    norm_topk_prob: bool = True
    routing_logits: Optional[torch.Tensor] = None
    routing_bias: Optional[torch.Tensor] = None
    topk_ids: Optional[torch.Tensor] = None
    topk_weights: Optional[torch.Tensor] = None
    routing_replay_out: Optional[torch.Tensor] = None
    gemm1_lora_delta: Optional[torch.Tensor] = None
    gemm1_alpha: Optional[torch.Tensor] = None
    gemm1_beta: Optional[torch.Tensor] = None
    gemm1_clamp_limit: Optional[torch.Tensor] = None
    do_finalize: bool = True
    output: Optional[torch.Tensor] = None
    gemm_variant: Optional[str] = None

    @property
    def num_tokens(self) -> int:
        return self.hidden_states.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.hidden_states.shape[1]


def _validate(call: MoeCall) -> None:
    validate.validate_moe_call(call)


def _routing(call: MoeCall):
    """(topk_ids int32 [T, K], topk_weights [T, K]) for the call, on the device."""
    from .kernels.topk_pack import unpack_topk
    from .routing import route

    if call.mode == RoutingInputMode.FromLogits:
        return route(call.routing_logits, call.routing_bias, call.top_k, call.routing_method_type,
                     n_group=call.n_group, topk_group=call.topk_group,
                     routed_scaling_factor=call.routed_scaling_factor, norm_topk_prob=call.norm_topk_prob,
                     routing_replay_out=call.routing_replay_out)
    if call.mode == RoutingInputMode.PackedPrecomputed:
        ids, weights = unpack_topk(call.topk_ids)
    else:
        ids, weights = call.topk_ids, call.topk_weights
    if call.routing_replay_out is not None:
        call.routing_replay_out[: call.num_tokens].copy_(ids)
    return ids, weights


def _empty_result(call: MoeCall, output: torch.Tensor) -> List[torch.Tensor]:
    dev, k = call.hidden_states.device, call.top_k
    perm = torch.empty(0, dtype=torch.int32, device=dev)
    act = torch.empty(0, call.intermediate_size, dtype=torch.bfloat16, device=dev)
    if call.do_finalize:
        return [output] if call.gemm1_lora_delta is None else [output, perm, act]
    result = [torch.empty(0, call.hidden_size, dtype=torch.bfloat16, device=dev),
              torch.empty(0, k, dtype=torch.bfloat16, device=dev), perm]
    return result + ([act] if call.gemm1_lora_delta is not None else [])


def run_moe(call: MoeCall) -> List[torch.Tensor]:
    """Run one fused MoE call; returns FlashInfer's list (cute_moe.moe unwraps single tensors)."""
    from .gemm import grouped_gemm_fc1, grouped_gemm_fc2
    from .routing import build_plan, combine
    from .select import select_config

    _validate(call)
    t, h = call.num_tokens, call.hidden_size
    output = call.output
    if call.do_finalize and output is None:
        output = torch.empty(t, h, dtype=torch.bfloat16, device=call.hidden_states.device)
    if t == 0:
        return _empty_result(call, output)

    topk_ids, topk_weights = _routing(call)
    config = select_config(num_tokens=t, top_k=call.top_k, hidden_size=h,
                           intermediate_size=call.intermediate_size,
                           local_num_experts=call.local_num_experts, weight_kind=call.weights.kind,
                           device=call.hidden_states.device, variant=call.gemm_variant)
    plan = build_plan(topk_ids, call.top_k, call.local_expert_offset, call.local_num_experts,
                      config.tile_rows)
    act = grouped_gemm_fc1(
        call.hidden_states, plan, call.weights.gemm1, gemm1_weights_scale=call.weights.gemm1_scale,
        top_k=call.top_k, intermediate_size=call.intermediate_size,
        activation_type=call.activation_type, config=config, gemm1_alpha=call.gemm1_alpha,
        gemm1_beta=call.gemm1_beta, gemm1_clamp_limit=call.gemm1_clamp_limit,
        gemm1_lora_delta=call.gemm1_lora_delta)
    gemm2_output = grouped_gemm_fc2(act, plan, call.weights.gemm2, gemm2_weights_scale=call.weights.gemm2_scale,
                                    hidden_size=h, config=config)
    perm = plan.expanded_idx_to_permuted_idx[: t * call.top_k]
    extra = [act] if call.gemm1_lora_delta is not None else []
    if call.do_finalize:
        combine(gemm2_output, topk_weights, perm, out=output)
        return [output] + ([perm] + extra if extra else [])
    return [gemm2_output, topk_weights, perm] + extra
