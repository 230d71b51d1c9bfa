"""FlashInfer-compatible fused MoE entry points.

``trtllm_bf16_moe``, ``trtllm_bf16_routed_moe``, ``trtllm_mxint4_block_scale_moe`` and
``trtllm_mxint4_block_scale_routed_moe`` take FlashInfer's arguments (same names, order,
defaults, enums and prepared-weight layouts) and return what FlashInfer returns:

=============  ==================  ==========================================================
do_finalize    gemm1_lora_delta    returned
=============  ==================  ==========================================================
True           None                ``output`` (bf16 entries; a one-element list for mxint4)
True           tensor              ``[output, expanded_idx_to_permuted_idx, gemm1_output]``
False          None                ``[gemm2_output, expert_weights, expanded_idx_to_permuted_idx]``
False          tensor              the three above + ``gemm1_output``
=============  ==================  ==========================================================

``gemm2_output`` / ``gemm1_output`` are in permuted row order; ``expanded_idx_to_permuted_idx``
(``[T * top_k]`` int32, -1 for experts that are not local) locates row ``t * top_k + j``.
Their padding follows cute_moe's own tile height, so index through the map.

``enable_pdl`` and ``tune_max_num_tokens`` only steer FlashInfer's launcher and autotuner; they are
accepted and ignored. ``gemm_variant`` (keyword, cute_moe only) forces a grouped-GEMM variant
(``"micro"``, ``"static"``, ``"dynamic"``, and on sm_90a with bf16 or MXINT4 weights ``"wgmma"``); the
``CUTE_MOE_GEMM_VARIANT`` environment variable does the same for every call.

Every call validates its arguments before launching anything, never reads device memory on the
host, and allocates only buffers whose sizes follow from the shapes: it can be captured in a
CUDA graph once and replayed for any routing of the same token count.
"""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch

from . import validate
from .enums import ActivationType, RoutingInputMode, WeightLayout
from .ops import call_fused_moe
from .pipeline import ExpertWeights, MoeCall


def trtllm_bf16_moe(
    routing_logits: torch.Tensor,
    routing_bias: Optional[torch.Tensor],
    hidden_states: torch.Tensor,
    gemm1_weights: torch.Tensor,
    gemm2_weights: torch.Tensor,
    num_experts: int,
    top_k: int,
    n_group: Optional[int],
    topk_group: Optional[int],
    intermediate_size: int,
    local_expert_offset: int,
    local_num_experts: int,
    routed_scaling_factor: Optional[float] = None,
    routing_method_type: int = 0,
    use_shuffled_weight: bool = True,
    weight_layout: int = WeightLayout.BlockMajorK,
    do_finalize: bool = True,
    enable_pdl: bool = True,
    tune_max_num_tokens: int = 8192,
    activation_type: int = ActivationType.Swiglu.value,
    norm_topk_prob: bool = True,
    routing_replay_out: Optional[torch.Tensor] = None,
    gemm1_alpha: Optional[torch.Tensor] = None,
    gemm1_beta: Optional[torch.Tensor] = None,
    gemm1_clamp_limit: Optional[torch.Tensor] = None,
    output: Optional[torch.Tensor] = None,
    *,
    gemm_variant: Optional[str] = None,
) -> Union[torch.Tensor, List[torch.Tensor]]:
    """BF16 MoE from routing logits (FlashInfer ``trtllm_bf16_moe``)."""
    call = MoeCall(
        mode=RoutingInputMode.FromLogits, routing_logits=routing_logits, routing_bias=routing_bias,
        hidden_states=hidden_states,
        weights=ExpertWeights.bf16(gemm1_weights, gemm2_weights),
        num_experts=num_experts, top_k=top_k, n_group=n_group, topk_group=topk_group,
        intermediate_size=intermediate_size, local_expert_offset=local_expert_offset,
        local_num_experts=local_num_experts, routed_scaling_factor=routed_scaling_factor,
        routing_method_type=routing_method_type, activation_type=activation_type,
        norm_topk_prob=norm_topk_prob, routing_replay_out=routing_replay_out,
        gemm1_alpha=gemm1_alpha, gemm1_beta=gemm1_beta, gemm1_clamp_limit=gemm1_clamp_limit,
        do_finalize=do_finalize, output=output, gemm_variant=gemm_variant,
    )
    validate.validate_bf16_layout_flags(use_shuffled_weight, weight_layout)
    result = call_fused_moe(call)
    return result[0] if do_finalize else result


def trtllm_bf16_routed_moe(
    topk_ids: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
    hidden_states: torch.Tensor,
    gemm1_weights: torch.Tensor,
    gemm2_weights: torch.Tensor,
    num_experts: int,
    top_k: int,
    n_group: Optional[int],
    topk_group: Optional[int],
    intermediate_size: int,
    local_expert_offset: int,
    local_num_experts: int,
    routed_scaling_factor: Optional[float] = None,
    routing_method_type: int = 0,
    use_shuffled_weight: bool = True,
    weight_layout: int = WeightLayout.BlockMajorK,
    do_finalize: bool = True,
    enable_pdl: bool = True,
    gemm1_lora_delta: Optional[torch.Tensor] = None,
    tune_max_num_tokens: int = 8192,
    activation_type: int = ActivationType.Swiglu.value,
    routing_replay_out: Optional[torch.Tensor] = None,
    gemm1_alpha: Optional[torch.Tensor] = None,
    gemm1_beta: Optional[torch.Tensor] = None,
    gemm1_clamp_limit: Optional[torch.Tensor] = None,
    output: Optional[torch.Tensor] = None,
    *,
    gemm_variant: Optional[str] = None,
) -> Union[torch.Tensor, List[torch.Tensor]]:
    """BF16 MoE from precomputed routing: packed int32 ``topk_ids`` or an ``(ids, weights)`` pair
    (FlashInfer ``trtllm_bf16_routed_moe``)."""
    mode, ids, weights = _split_routed(topk_ids)
    call = MoeCall(
        mode=mode, topk_ids=ids, topk_weights=weights, hidden_states=hidden_states,
        weights=ExpertWeights.bf16(gemm1_weights, gemm2_weights),
        num_experts=num_experts, top_k=top_k, n_group=n_group, topk_group=topk_group,
        intermediate_size=intermediate_size, local_expert_offset=local_expert_offset,
        local_num_experts=local_num_experts, routed_scaling_factor=routed_scaling_factor,
        routing_method_type=routing_method_type, activation_type=activation_type,
        routing_replay_out=routing_replay_out, gemm1_lora_delta=gemm1_lora_delta,
        gemm1_alpha=gemm1_alpha, gemm1_beta=gemm1_beta, gemm1_clamp_limit=gemm1_clamp_limit,
        do_finalize=do_finalize, output=output, gemm_variant=gemm_variant,
    )
    validate.validate_bf16_layout_flags(use_shuffled_weight, weight_layout)
    result = call_fused_moe(call)
    return result[0] if do_finalize and gemm1_lora_delta is None else result


def trtllm_mxint4_block_scale_moe(
    routing_logits: torch.Tensor,
    routing_bias: Optional[torch.Tensor],
    hidden_states: torch.Tensor,
    gemm1_weights: torch.Tensor,
    gemm1_weights_scale: torch.Tensor,
    gemm1_alpha: Optional[torch.Tensor],
    gemm1_beta: Optional[torch.Tensor],
    gemm1_clamp_limit: Optional[torch.Tensor],
    gemm2_weights: torch.Tensor,
    gemm2_weights_scale: torch.Tensor,
    num_experts: int,
    top_k: int,
    n_group: Optional[int],
    topk_group: Optional[int],
    intermediate_size: int,
    local_expert_offset: int,
    local_num_experts: int,
    routed_scaling_factor: Optional[float],
    routing_method_type: int = 0,
    do_finalize: bool = True,
    enable_pdl: Optional[bool] = None,
    output: Optional[torch.Tensor] = None,
    tune_max_num_tokens: int = 8192,
    norm_topk_prob: bool = True,
    routing_replay_out: Optional[torch.Tensor] = None,
    *,
    gemm_variant: Optional[str] = None,
) -> List[torch.Tensor]:
    """MXINT4 (int4 weights, bf16 scales per 32 values, bf16 activations) MoE from routing logits
    (FlashInfer ``trtllm_mxint4_block_scale_moe``)."""
    call = MoeCall(
        mode=RoutingInputMode.FromLogits, routing_logits=routing_logits, routing_bias=routing_bias,
        hidden_states=hidden_states,
        weights=ExpertWeights.mxint4(gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale),
        num_experts=num_experts, top_k=top_k, n_group=n_group, topk_group=topk_group,
        intermediate_size=intermediate_size, local_expert_offset=local_expert_offset,
        local_num_experts=local_num_experts, routed_scaling_factor=routed_scaling_factor,
        routing_method_type=routing_method_type, activation_type=int(ActivationType.Swiglu),
        norm_topk_prob=norm_topk_prob, routing_replay_out=routing_replay_out,
        gemm1_alpha=gemm1_alpha, gemm1_beta=gemm1_beta, gemm1_clamp_limit=gemm1_clamp_limit,
        do_finalize=do_finalize, output=output, gemm_variant=gemm_variant,
    )
    return call_fused_moe(call)


def trtllm_mxint4_block_scale_routed_moe(
    topk_ids: torch.Tensor,
    hidden_states: torch.Tensor,
    gemm1_weights: torch.Tensor,
    gemm1_weights_scale: torch.Tensor,
    gemm1_alpha: Optional[torch.Tensor],
    gemm1_beta: Optional[torch.Tensor],
    gemm1_clamp_limit: Optional[torch.Tensor],
    gemm2_weights: torch.Tensor,
    gemm2_weights_scale: torch.Tensor,
    num_experts: int,
    top_k: int,
    n_group: Optional[int],
    topk_group: Optional[int],
    intermediate_size: int,
    local_expert_offset: int,
    local_num_experts: int,
    routed_scaling_factor: Optional[float],
    routing_method_type: int = 0,
    do_finalize: bool = True,
    enable_pdl: Optional[bool] = None,
    gemm1_lora_delta: Optional[torch.Tensor] = None,
    output: Optional[torch.Tensor] = None,
    tune_max_num_tokens: int = 8192,
    *,
    gemm_variant: Optional[str] = None,
) -> List[torch.Tensor]:
    """MXINT4 MoE from packed precomputed routing (FlashInfer ``trtllm_mxint4_block_scale_routed_moe``)."""
    call = MoeCall(
        mode=RoutingInputMode.PackedPrecomputed, topk_ids=topk_ids, hidden_states=hidden_states,
        weights=ExpertWeights.mxint4(gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale),
        num_experts=num_experts, top_k=top_k, n_group=n_group, topk_group=topk_group,
        intermediate_size=intermediate_size, local_expert_offset=local_expert_offset,
        local_num_experts=local_num_experts, routed_scaling_factor=routed_scaling_factor,
        routing_method_type=routing_method_type, activation_type=int(ActivationType.Swiglu),
        gemm1_lora_delta=gemm1_lora_delta, gemm1_alpha=gemm1_alpha, gemm1_beta=gemm1_beta,
        gemm1_clamp_limit=gemm1_clamp_limit, do_finalize=do_finalize, output=output,
        gemm_variant=gemm_variant,
    )
    return call_fused_moe(call)


def _split_routed(topk_ids):
    if isinstance(topk_ids, tuple):
        if len(topk_ids) != 2:
            raise ValueError(f"topk_ids: expected a packed tensor or an (ids, weights) pair, got a "
                             f"tuple of {len(topk_ids)}")
        return RoutingInputMode.UnpackedPrecomputed, topk_ids[0], topk_ids[1]
    return RoutingInputMode.PackedPrecomputed, topk_ids, None
