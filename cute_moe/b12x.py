"""``b12x_fused_moe``: FlashInfer's FP4 fused MoE entry (NVFP4 experts), on every arch.

Same arguments as ``flashinfer.fused_moe.b12x_fused_moe`` (plus ``local_expert_offset``,
``input_global_scale`` and ``gemm_variant``); the numerics are cute_moe.reference_b12x's rules.
One pipeline with the other entries (cute_moe.pipeline): precomputed routing -> plan -> FC1 ->
FC2 -> deterministic float32 combine. The FP4 weights are dequantized to bf16 inside the grouped
GEMM (``e2m1 * ue4m3`` is exact in bf16) and multiplied by bf16 activations on the warp MMA:

* ``quant_mode="w4a16"``: bf16 activations; FC1's accumulators times ``a1``, FC2's times ``a2``
  (``w1_alpha`` / ``w2_alpha``, or their reciprocals for ``source_format="compressed_tensors"``);
* ``"nvfp4"``: before FC1, ``x``'s rows are quantized to NVFP4 per routed expert (global scale
  ``input_global_scale[e]`` when given, else ``w1_alpha[e]``), FC1's activation again with
  ``fc2_input_scale[e]`` (cute_moe.kernels.fp4_quantize), and the GEMMs take the quantized values
  ``q * sf`` exactly: what the block-scaled FP4 MMA computes, up to summation order.

Global ids outside ``[local_expert_offset, local_expert_offset + num_local_experts)`` contribute
nothing (expert parallelism). Arguments are checked before any launch (validate.validate_b12x_args,
once per argument signature); the call never synchronizes with the host and can be captured in a
CUDA graph, with or without a pre-allocated ``output``.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from . import validate
from .enums import ActivationType, RoutingInputMode
from .ops import call_fused_moe, traced
from .pipeline import ExpertWeights, MoeCall

__all__ = ["b12x_fused_moe"]

_CHECKED: Dict[Tuple, validate.B12xCall] = {}
_MAX_CHECKED = 1024


def _meta(t):
    return None if t is None else (t.__class__, t.shape, t.stride(), t.dtype, t.device)


def _per_expert(v: torch.Tensor, local: int) -> torch.Tensor:
    return v if v.shape[0] == local else v.expand(local).contiguous()


def _traced_call(x, w2_weight, num_experts, top_k, num_local_experts, local_expert_offset, fc2_input_scale,
                 input_global_scale, output_dtype, activation, activation_precision, quant_mode,
                 source_format) -> validate.B12xCall:
    mode, gated = validate.b12x_modes(activation=activation, activation_precision=activation_precision,
                                      quant_mode=quant_mode, source_format=source_format, output_dtype=output_dtype)
    if mode == "nvfp4" and fc2_input_scale is None:
        raise ValueError("fc2_input_scale: expected a float32 tensor [1] or [E] (nvfp4 quantizes FC2's input with "
                         "it), got None")
    if mode != "nvfp4" and input_global_scale is not None:
        raise ValueError("input_global_scale: expected None with bf16 activations (w4a16 quantizes no activation)")
    local = num_experts if num_local_experts is None else num_local_experts
    return validate.B12xCall(mode, source_format, gated, x.shape[0], x.shape[1], 2 * w2_weight.shape[2], top_k,
                             num_experts, local, local_expert_offset)


def _checked_call(x, w1_weight, w1_weight_sf, w2_weight, w2_weight_sf, token_selected_experts, token_final_scales,
                  num_experts, top_k, w1_alpha, w2_alpha, fc2_input_scale, num_local_experts, output, output_dtype,
                  activation, activation_precision, quant_mode, source_format, input_global_scale,
                  local_expert_offset) -> validate.B12xCall:
    """validate.validate_b12x_args, once per argument signature (shapes, strides, dtypes, devices,
    scalars; data pointers are checked at every launch)."""
    sig = (_meta(x), _meta(w1_weight), _meta(w1_weight_sf), _meta(w2_weight), _meta(w2_weight_sf),
           _meta(token_selected_experts), _meta(token_final_scales), _meta(w1_alpha), _meta(w2_alpha),
           _meta(fc2_input_scale), _meta(input_global_scale), _meta(output), num_experts, top_k, num_local_experts,
           local_expert_offset, output_dtype, activation, activation_precision, quant_mode, source_format)
    try:
        call = _CHECKED.get(sig)
    except TypeError:  # an unhashable argument: let the checks name it
        call = None
    if call is None:
        call = validate.validate_b12x_args(
            x=x, w1_weight=w1_weight, w1_weight_sf=w1_weight_sf, w2_weight=w2_weight, w2_weight_sf=w2_weight_sf,
            token_selected_experts=token_selected_experts, token_final_scales=token_final_scales,
            num_experts=num_experts, top_k=top_k, w1_alpha=w1_alpha, w2_alpha=w2_alpha,
            fc2_input_scale=fc2_input_scale, input_global_scale=input_global_scale,
            num_local_experts=num_local_experts, local_expert_offset=local_expert_offset, output=output,
            output_dtype=output_dtype, activation=activation, activation_precision=activation_precision,
            quant_mode=quant_mode, source_format=source_format)
        if len(_CHECKED) >= _MAX_CHECKED:
            _CHECKED.clear()
        _CHECKED[sig] = call
    return call


def b12x_fused_moe(x: torch.Tensor, w1_weight: torch.Tensor, w1_weight_sf: torch.Tensor, w2_weight: torch.Tensor,
                   w2_weight_sf: torch.Tensor, token_selected_experts: torch.Tensor,
                   token_final_scales: torch.Tensor, num_experts: int, top_k: int, *, w1_alpha: torch.Tensor,
                   w2_alpha: torch.Tensor, fc2_input_scale: Optional[torch.Tensor] = None,
                   num_local_experts: Optional[int] = None, output: Optional[torch.Tensor] = None,
                   output_dtype: torch.dtype = torch.bfloat16, activation: str = "silu",
                   activation_precision: str = "fp4", quant_mode: Optional[str] = None,
                   source_format: str = "modelopt", input_global_scale: Optional[torch.Tensor] = None,
                   local_expert_offset: int = 0, gemm_variant: Optional[str] = None) -> torch.Tensor:
    """FP4-expert fused MoE -> ``[T, H]`` bf16 (``output`` when given). ``x [T, H]`` bf16;
    ``w1_weight`` uint8 ``[L, M, H/2]`` (``M = 2I`` rows ``[up; gate]`` for "silu", ``I`` for
    "relu2"), ``w2_weight [L, H, I/2]``, their ue4m3 scales as prepare_b12x_fp4_moe_weights returns
    them; ``token_selected_experts`` int32 ``[T, top_k]`` global ids, ``token_final_scales``
    float32 / bf16 ``[T, top_k]``; ``w1_alpha``, ``w2_alpha`` float32 ``[L]``;
    ``fc2_input_scale`` / ``input_global_scale`` float32 ``[L]`` or ``[1]`` (nvfp4 only; the first
    required). H and I must be multiples of 128. ``gemm_variant`` forces micro / static / dynamic."""
    if traced(x):  # data pointers cannot be read: the custom op checks the tensors when it runs
        call = _traced_call(x, w2_weight, num_experts, top_k, num_local_experts, local_expert_offset,
                            fc2_input_scale, input_global_scale, output_dtype, activation, activation_precision,
                            quant_mode, source_format)
    else:
        call = _checked_call(x, w1_weight, w1_weight_sf, w2_weight, w2_weight_sf, token_selected_experts,
                             token_final_scales, num_experts, top_k, w1_alpha, w2_alpha, fc2_input_scale,
                             num_local_experts, output, output_dtype, activation, activation_precision, quant_mode,
                             source_format, input_global_scale, local_expert_offset)
    local = call.local_num_experts
    a1, a2 = w1_alpha, w2_alpha
    x_scale = act_scale = None
    if call.quant_mode == "w4a16":
        if call.source_format == "compressed_tensors":  # a quantization scale: its reciprocal decodes
            a1, a2 = 1.0 / w1_alpha, 1.0 / w2_alpha
    else:
        act_scale = _per_expert(fc2_input_scale, local)
        if input_global_scale is None:
            x_scale = w1_alpha
        else:
            x_scale = _per_expert(input_global_scale, local)
            a1 = w1_alpha * x_scale
    moe = MoeCall(
        mode=RoutingInputMode.UnpackedPrecomputed, hidden_states=x,
        weights=ExpertWeights.nvfp4(w1_weight, w1_weight_sf, w2_weight, w2_weight_sf, a1, a2, x_scale, act_scale),
        num_experts=call.num_experts, top_k=call.top_k, n_group=None, topk_group=None,
        intermediate_size=call.intermediate_size, local_expert_offset=call.local_expert_offset,
        local_num_experts=local, activation_type=int(ActivationType.Swiglu if call.gated else ActivationType.Relu2),
        topk_ids=token_selected_experts, topk_weights=token_final_scales, do_finalize=True, output=output,
        gemm_variant=gemm_variant)
    return call_fused_moe(moe)[0]
