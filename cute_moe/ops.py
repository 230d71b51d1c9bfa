"""The fused MoE as a torch.library custom op, so torch.compile traces through it and CUDA graphs
capture it. Eager calls (nothing tracing them) run the pipeline directly: the same work without
the op's dispatch.

``cute_moe::fused_moe`` takes the flattened ``MoeCall`` (see cute_moe.pipeline). It writes the
caller's ``output`` (do_finalize) and ``routing_replay_out`` in place and returns a fixed
4-tuple of freshly allocated tensors ``(gemm2_output, expert_weights, expanded_idx_to_permuted_idx,
gemm1_output)``, empty where the call does not produce one; ``call_fused_moe`` puts FlashInfer's
return list together. (torch.compile functionalizes a mutating custom op only when its arguments
are plain tensors and its returns a fixed tuple: absent buffers travel as empty tensors.)
The fake implementation derives every shape from the arguments alone: the permuted row count
follows from the selector's tile height, itself a function of shapes.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .enums import RoutingInputMode
from .pipeline import ExpertWeights, MoeCall, run_moe
from .plan import PlanShape


@torch.library.custom_op("cute_moe::fused_moe", mutates_args=("output", "routing_replay_out"))
def fused_moe(
    routing_input_mode: int,
    hidden_states: torch.Tensor,
    weight_kind: str,
    gemm1: torch.Tensor,
    gemm1_scale: Optional[torch.Tensor],
    gemm2: torch.Tensor,
    gemm2_scale: Optional[torch.Tensor],
    gemm1_out_scale: Optional[torch.Tensor],
    gemm2_out_scale: Optional[torch.Tensor],
    gemm1_input_scale: Optional[torch.Tensor],
    gemm2_input_scale: Optional[torch.Tensor],
    routing_logits: Optional[torch.Tensor],
    routing_bias: Optional[torch.Tensor],
    topk_ids: Optional[torch.Tensor],
    topk_weights: Optional[torch.Tensor],
    routing_replay_out: torch.Tensor,
    gemm1_lora_delta: Optional[torch.Tensor],
    gemm1_alpha: Optional[torch.Tensor],
    gemm1_beta: Optional[torch.Tensor],
    gemm1_clamp_limit: Optional[torch.Tensor],
    output: torch.Tensor,
    num_experts: int,
    top_k: int,
    n_group: Optional[int],
    topk_group: Optional[int],
    intermediate_size: int,
    local_expert_offset: int,
    local_num_experts: int,
    routed_scaling_factor: Optional[float],
    routing_method_type: int,
    activation_type: int,
    norm_topk_prob: bool,
    do_finalize: bool,
    gemm_variant: Optional[str],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    call = MoeCall(
        mode=RoutingInputMode(routing_input_mode), hidden_states=hidden_states,
        weights=ExpertWeights(weight_kind, gemm1, gemm2, gemm1_scale, gemm2_scale, gemm1_out_scale, gemm2_out_scale,
                              gemm1_input_scale, gemm2_input_scale),
        num_experts=num_experts, top_k=top_k, n_group=n_group, topk_group=topk_group,
        intermediate_size=intermediate_size, local_expert_offset=local_expert_offset,
        local_num_experts=local_num_experts, routed_scaling_factor=routed_scaling_factor,
        routing_method_type=routing_method_type, activation_type=activation_type,
        norm_topk_prob=norm_topk_prob, routing_logits=routing_logits, routing_bias=routing_bias,
        topk_ids=topk_ids, topk_weights=topk_weights,
        routing_replay_out=routing_replay_out if routing_replay_out.numel() else None,
        gemm1_lora_delta=gemm1_lora_delta, gemm1_alpha=gemm1_alpha, gemm1_beta=gemm1_beta,
        gemm1_clamp_limit=gemm1_clamp_limit, do_finalize=do_finalize,
        output=output if do_finalize else None, gemm_variant=gemm_variant,
    )
    result = run_moe(call)
    lora = gemm1_lora_delta is not None
    empty = hidden_states.new_empty
    act = result[-1] if lora else empty((0, intermediate_size), dtype=torch.bfloat16)
    if do_finalize:  # [output (written in place), (perm, act with LoRA)]
        perm = result[1] if lora else empty((0,), dtype=torch.int32)
        return empty((0, hidden_states.shape[1]), dtype=torch.bfloat16), empty((0, top_k), dtype=torch.bfloat16), perm, act
    gemm2_output, weights, perm = result[:3]  # weights: never the caller's tensor (run_moe copies it)
    return gemm2_output, weights, perm, act


@fused_moe.register_fake
def _fused_moe_fake(routing_input_mode, hidden_states, weight_kind, gemm1, gemm1_scale, gemm2, gemm2_scale,
                    gemm1_out_scale, gemm2_out_scale, gemm1_input_scale, gemm2_input_scale, routing_logits,
                    routing_bias, topk_ids, topk_weights, routing_replay_out,
                    gemm1_lora_delta, gemm1_alpha, gemm1_beta, gemm1_clamp_limit, output, num_experts,
                    top_k, n_group, topk_group, intermediate_size, local_expert_offset, local_num_experts,
                    routed_scaling_factor, routing_method_type, activation_type, norm_topk_prob,
                    do_finalize, gemm_variant):
    from .select import select_config

    t, h = hidden_states.shape
    config = select_config(num_tokens=t, top_k=top_k, hidden_size=h, intermediate_size=intermediate_size,
                           local_num_experts=local_num_experts, weight_kind=weight_kind,
                           device=hidden_states.device, variant=gemm_variant, activation_type=activation_type)
    rows = PlanShape(t, top_k, local_num_experts, config.tile_rows).max_padded_rows if t else 0
    new = hidden_states.new_empty
    lora = gemm1_lora_delta is not None
    act = new((rows if lora else 0, intermediate_size), dtype=torch.bfloat16)
    perm = new((t * top_k if (lora or not do_finalize) else 0,), dtype=torch.int32)
    if do_finalize:
        return new((0, h), dtype=torch.bfloat16), new((0, top_k), dtype=torch.bfloat16), perm, act
    weights_dtype = topk_weights.dtype if topk_weights is not None else torch.bfloat16
    return new((rows, h), dtype=torch.bfloat16), new((t, top_k), dtype=weights_dtype), perm, act


def traced(hidden_states) -> bool:
    """True while torch.compile / export / a tracing mode is looking at a call on
    ``hidden_states``: only then does the call need the custom op (eager calls skip its
    dispatch, tens of microseconds) and only then can data pointers not be read."""
    return (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
            or type(hidden_states) is not torch.Tensor)


def call_fused_moe(call: MoeCall) -> List[torch.Tensor]:
    """Run ``call`` (through the custom op when traced) and return FlashInfer's list."""
    if not traced(call.hidden_states):
        return run_moe(call)
    dev = call.hidden_states.device
    output = call.output
    if output is None:
        rows = call.num_tokens if call.do_finalize else 0
        output = torch.empty(rows, call.hidden_size, dtype=torch.bfloat16, device=dev)
    replay = call.routing_replay_out
    if replay is None:
        replay = torch.empty(0, call.top_k, dtype=torch.int16, device=dev)
    w = call.weights
    gemm2_output, weights, perm, act = fused_moe(
        int(call.mode), call.hidden_states, w.kind, w.gemm1, w.gemm1_scale, w.gemm2, w.gemm2_scale, *w.vectors,
        call.routing_logits, call.routing_bias, call.topk_ids, call.topk_weights, replay,
        call.gemm1_lora_delta, call.gemm1_alpha, call.gemm1_beta, call.gemm1_clamp_limit, output,
        call.num_experts, call.top_k, call.n_group, call.topk_group, call.intermediate_size,
        call.local_expert_offset, call.local_num_experts,
        None if call.routed_scaling_factor is None else float(call.routed_scaling_factor),
        int(call.routing_method_type), int(call.activation_type), bool(call.norm_topk_prob),
        bool(call.do_finalize), call.gemm_variant,
    )
    extra = [act] if call.gemm1_lora_delta is not None else []
    if call.do_finalize:
        return [output] + ([perm] + extra if extra else [])
    return [gemm2_output, weights, perm] + extra
