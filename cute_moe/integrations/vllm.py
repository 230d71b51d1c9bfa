"""Drop-in for vLLM's ``flashinfer_mxint4_moe`` helper module
(``vllm/model_executor/layers/quantization/utils/flashinfer_mxint4_moe.py``): same three names,
same signatures and behaviour, backed by cute_moe's kernels — which also run on Hopper (SM90) and
SM120, where FlashInfer's trtllm-gen kernels do not.

    from cute_moe.integrations.vllm import (
        is_flashinfer_mxint4_moe_available, prepare_static_weights_for_trtllm_mxint4_moe,
        flashinfer_trtllm_mxint4_moe)
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from ..enums import RoutingMethodType
from ..prepare import prepare_static_weights_for_trtllm_mxint4_moe

__all__ = [
    "prepare_static_weights_for_trtllm_mxint4_moe",
    "flashinfer_trtllm_mxint4_moe",
    "is_flashinfer_mxint4_moe_available",
]


@functools.cache
def is_flashinfer_mxint4_moe_available() -> bool:
    """True when a CUDA GPU of SM90, SM100 or SM120 is present (the kernels cute_moe ships)."""
    from ..kernels.runtime import gpu_available

    return gpu_available()


def flashinfer_trtllm_mxint4_moe(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    w13_weight_packed: torch.Tensor,
    w13_weight_scale: torch.Tensor,
    w2_weight_packed: torch.Tensor,
    w2_weight_scale: torch.Tensor,
    global_num_experts: int,
    top_k: int,
    intermediate_size_per_partition: int,
    local_num_experts: int,
    ep_rank: int = 0,
    num_expert_group: Optional[int] = None,
    topk_group: Optional[int] = None,
    e_score_correction_bias: Optional[torch.Tensor] = None,
    routing_method_type: Optional[int] = None,
    routing_replay_out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The MXINT4 fused MoE on prepared weights (``prepare_static_weights_for_trtllm_mxint4_moe``).

    As in vLLM: the routing bias is cast to bf16, DeepSeekV3 logits to float32, this rank's
    experts start at ``ep_rank * local_num_experts``, and missing group arguments mean no groups.
    Returns the ``[T, hidden]`` output in ``x``'s dtype (bf16).
    """
    from ..moe import trtllm_mxint4_block_scale_moe

    for name, t, dtype in (("x", x, torch.bfloat16), ("w13_weight_packed", w13_weight_packed, torch.uint8),
                           ("w13_weight_scale", w13_weight_scale, torch.bfloat16),
                           ("w2_weight_packed", w2_weight_packed, torch.uint8),
                           ("w2_weight_scale", w2_weight_scale, torch.bfloat16)):
        if t.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if routing_method_type is None:
        raise ValueError("routing_method_type: expected a RoutingMethodType value, got None")
    routing_bias = None if e_score_correction_bias is None else e_score_correction_bias.to(torch.bfloat16)
    if int(routing_method_type) == RoutingMethodType.DeepSeekV3:
        router_logits = router_logits.to(torch.float32)
    out = trtllm_mxint4_block_scale_moe(
        routing_logits=router_logits,
        routing_bias=routing_bias,
        hidden_states=x,
        gemm1_weights=w13_weight_packed.data,
        gemm1_weights_scale=w13_weight_scale.data,
        gemm1_alpha=None,
        gemm1_beta=None,
        gemm1_clamp_limit=None,
        gemm2_weights=w2_weight_packed.data,
        gemm2_weights_scale=w2_weight_scale.data,
        num_experts=global_num_experts,
        top_k=top_k,
        n_group=num_expert_group if num_expert_group is not None else 0,
        topk_group=topk_group if topk_group is not None else 0,
        intermediate_size=intermediate_size_per_partition,
        local_expert_offset=ep_rank * local_num_experts,
        local_num_experts=local_num_experts,
        routed_scaling_factor=None,
        routing_method_type=int(routing_method_type),
        do_finalize=True,
        output=None,
        routing_replay_out=routing_replay_out,
    )
    return out[0].to(x.dtype)
