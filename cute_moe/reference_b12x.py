"""Float reference of ``b12x_fused_moe`` (FP4 experts): the oracle its kernels are tested against.

Rules, per routed (token t, slot j) pair of local expert ``e`` (global id ``local_expert_offset + e``),
as FlashInfer's SM120 static / dynamic b12x kernels compute them (flashinfer 0.6.18,
``flashinfer/fused_moe/cute_dsl/blackwell_sm12x/moe_static_kernel.py`` and the dynamic kernels,
``fp4_common.py::quantize_block_fp4``, ``moe_activation.py::gated_activation_f32``,
``moe_w4a16_kernel.py`` for W4A16, ``moe_dispatch.py`` for the argument rules):

    W1[e] = e2m1(w1_weight[e]) * ue4m3(w1_weight_sf[e])      per block of 16 along K, exact
    W2[e] likewise
    nvfp4 ("w4a4", the default):
        X  = Q(x[t], gs = g1)                                  per routed pair, blocks of 16
        h  = w1_alpha[e] * g1' * (X @ W1[e]^T)                 float32
             g1 = input_global_scale[e] and g1' = g1 when input_global_scale is given (newer
             FlashInfer; how a ModelOpt checkpoint's input_scale enters), else g1 = w1_alpha[e], g1' = 1
        A  = Q(float(bf16(act(h))), gs = fc2_input_scale[e])
        y  = bf16(w2_alpha[e] * (A @ W2[e]^T))
    w4a16 (bf16 activations):
        h  = a1 * (x[t] @ W1[e]^T),  a1 = w1_alpha[e] ("modelopt") or 1 / w1_alpha[e]
             ("compressed_tensors", whose global scale is a quantization scale)
        A  = float(bf16(act(h)))
        y  = bf16(a2 * (A @ W2[e]^T)),  a2 likewise from w2_alpha[e]
    act(h) = silu(h[I:2I]) * h[0:I]    "silu": w1 rows are [up; gate], no interleave
           = relu(h)^2                 "relu2" (w1 has I rows)
    out[t] = bf16(sum_j w[t, j] * y_(t, j))   float32, slots in order (FlashInfer adds bf16 partials
                                              with atomics; ours is deterministic)

The activation quantizer ``Q(v, gs)`` (FlashInfer's precise path; a global scale divides):

    sf = ue4m3(min(max|v_blk| / (6 * gs), 448))     round to nearest even
    q  = e2m1(v / (sf * gs))                        round to nearest even, saturating at +-6; 0 if sf = 0
    Q  = q * sf                                     so that Q * gs ~ v

Global ids outside ``[local_expert_offset, local_expert_offset + num_local_experts)`` contribute
nothing (expert parallelism; FlashInfer raises instead). FlashInfer's gated kernels take
approximate reciprocals in ``Q`` by default (``fast_math``); they can differ from the exact
division above at rounding ties only. Its direct-micro kernel treats the global scales as
multipliers, the opposite convention; this reference follows the static / dynamic kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .layouts.packing import E2M1_MAX, UE4M3_MAX, decode_e2m1, decode_ue4m3, encode_e2m1, encode_ue4m3, \
    unpack_nibbles
from .layouts.quantize import NVFP4_BLOCK
from .layouts.scale_interleave import block_scale_deinterleave, scale_mma_storage
from .validate import B12xCall, validate_b12x_args

__all__ = ["quantize_nvfp4_activations", "dequantize_b12x_weights", "reference_b12x_fused_moe", "B12xReference"]


def quantize_nvfp4_activations(v: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """``Q(v, gs)`` of the module docstring: ``v [..., K]`` float, ``global_scale`` broadcastable to
    ``v.shape[:-1]`` (one per row) -> float32 ``q * sf`` (``[..., K]``)."""
    blk = v.float().unflatten(-1, (-1, NVFP4_BLOCK))
    gs = torch.as_tensor(global_scale, dtype=torch.float32, device=v.device)
    gs = gs.expand(v.shape[:-1]).unsqueeze(-1).unsqueeze(-1)
    sf = decode_ue4m3(encode_ue4m3(torch.clamp(blk.abs().amax(-1, keepdim=True) / (E2M1_MAX * gs), max=UE4M3_MAX)))
    safe = torch.where(sf > 0, sf * gs, torch.ones_like(sf))
    q = decode_e2m1(encode_e2m1(torch.where(sf > 0, blk / safe, torch.zeros_like(blk))))
    return (q * sf).flatten(-2)


def dequantize_b12x_weights(weight: torch.Tensor, weight_sf: torch.Tensor) -> torch.Tensor:
    """Packed e2m1 ``[E, N, K/2]`` and its prepared ue4m3 scales (the 6-D view of
    cute_moe.prepare.prepare_b12x_fp4_moe_weights) -> float32 ``[E, N, K]`` block values
    ``e2m1 * ue4m3`` (exact; the global scale stays apart)."""
    e, n, half = weight.shape
    k = 2 * half
    scales = decode_ue4m3(block_scale_deinterleave(scale_mma_storage(weight_sf), n, k // NVFP4_BLOCK))
    values = decode_e2m1(unpack_nibbles(weight)).unflatten(-1, (-1, NVFP4_BLOCK))
    return (values * scales.to(values.device).unsqueeze(-1)).flatten(-2)


@dataclass
class B12xReference:
    output: torch.Tensor  # [T, H] bf16
    output_f32: torch.Tensor  # [T, H] float32, before the final rounding
    act: torch.Tensor  # [T, K, I] bf16, the activation of each routed pair (0 for non-local)
    y: torch.Tensor  # [T, K, H] bf16, FC2 of each routed pair (0 for non-local)


def _activation(h: torch.Tensor, gated: bool) -> torch.Tensor:
    if gated:
        i = h.shape[-1] // 2
        return torch.nn.functional.silu(h[..., i:]) * h[..., :i]
    return torch.relu(h) ** 2


def reference_b12x_fused_moe(x: torch.Tensor, w1_weight: torch.Tensor, w1_weight_sf: torch.Tensor,
                             w2_weight: torch.Tensor, w2_weight_sf: torch.Tensor,
                             token_selected_experts: torch.Tensor, token_final_scales: torch.Tensor,
                             num_experts: int, top_k: int, *, w1_alpha: torch.Tensor, w2_alpha: torch.Tensor,
                             fc2_input_scale: Optional[torch.Tensor] = None,
                             input_global_scale: Optional[torch.Tensor] = None,
                             num_local_experts: Optional[int] = None, local_expert_offset: int = 0,
                             output: Optional[torch.Tensor] = None, output_dtype: torch.dtype = torch.bfloat16,
                             activation: str = "silu", activation_precision: str = "fp4",
                             quant_mode: Optional[str] = None, source_format: str = "modelopt") -> B12xReference:
    """``b12x_fused_moe``'s arguments (plus ``local_expert_offset``, an extension, and
    ``input_global_scale`` as newer FlashInfer versions take it) -> the module docstring's result, on
    the arguments' device. ``output``, when given, receives ``output``."""
    call: B12xCall = validate_b12x_args(
        x=x, w1_weight=w1_weight, w1_weight_sf=w1_weight_sf, w2_weight=w2_weight, w2_weight_sf=w2_weight_sf,
        token_selected_experts=token_selected_experts, token_final_scales=token_final_scales,
        num_experts=num_experts, top_k=top_k, w1_alpha=w1_alpha, w2_alpha=w2_alpha, fc2_input_scale=fc2_input_scale,
        input_global_scale=input_global_scale, num_local_experts=num_local_experts, local_expert_offset=local_expert_offset, output=output,
        output_dtype=output_dtype, activation=activation, activation_precision=activation_precision,
        quant_mode=quant_mode, source_format=source_format, require_cuda=False)
    ids = token_selected_experts
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_experts):
        raise ValueError(f"token_selected_experts: ids must lie in [0, {num_experts}), got "
                         f"[{int(ids.min())}, {int(ids.max())}]")
    dev = x.device
    t, k = token_selected_experts.shape
    w1 = dequantize_b12x_weights(w1_weight, w1_weight_sf).to(dev)
    w2 = dequantize_b12x_weights(w2_weight, w2_weight_sf).to(dev)
    a1 = w1_alpha.float().to(dev)
    a2 = w2_alpha.float().to(dev)
    if call.quant_mode == "w4a16" and call.source_format == "compressed_tensors":
        a1, a2 = 1.0 / a1, 1.0 / a2
    fc2_gs = x_gs = None
    if call.quant_mode == "nvfp4":
        fc2_gs = fc2_input_scale.float().to(dev).expand(call.local_num_experts)
        x_gs = a1
        if input_global_scale is not None:
            x_gs = input_global_scale.float().to(dev).expand(call.local_num_experts)
            a1 = a1 * x_gs

    act = torch.zeros(t, k, call.intermediate_size, dtype=torch.bfloat16, device=dev)
    y = torch.zeros(t, k, call.hidden_size, dtype=torch.bfloat16, device=dev)
    local = token_selected_experts.long().to(dev) - call.local_expert_offset
    xf = x.float()
    for e in range(call.local_num_experts):
        tok, slot = torch.nonzero(local == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        xe = xf[tok]
        if call.quant_mode == "nvfp4":
            xe = quantize_nvfp4_activations(xe, x_gs[e])
        a = _activation(a1[e] * (xe @ w1[e].T), call.gated).to(torch.bfloat16)
        ae = a.float()
        if call.quant_mode == "nvfp4":
            ae = quantize_nvfp4_activations(ae, fc2_gs[e])
        act[tok, slot] = a
        y[tok, slot] = (a2[e] * (ae @ w2[e].T)).to(torch.bfloat16)

    weights = token_final_scales.to(dev).float()
    out = torch.zeros(t, call.hidden_size, dtype=torch.float32, device=dev)
    for j in range(k):
        out = torch.addcmul(out, weights[:, j:j + 1], y[:, j].float())
    result = out.to(torch.bfloat16)
    if output is not None:
        output.copy_(result)
    return B12xReference(output=result, output_f32=out, act=act, y=y)
