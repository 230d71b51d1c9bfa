"""Inputs and callables for one benchmark preset: weights (canonical and prepared), input sets
that rotate, and one callable per implementation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from .. import moe
from ..prepare import prepare_bf16_moe_weights
from .peers import GroupedMmPipeline, PerExpertLoop
from .presets import MoeShape

GEMM_VARIANTS = ("micro", "static", "dynamic", "wgmma")  # wgmma: SM90, bf16 and MXINT4 weights


@dataclass
class InputSet:
    hidden: torch.Tensor  # [T, H] bf16
    logits: torch.Tensor  # [T, E] float32
    bias: Optional[torch.Tensor]  # [E] bf16 (DeepSeekV3-style routing only)
    packed_topk: torch.Tensor  # [T, K] int32, the routing of `logits`, for the routed entry points
    topk_ids: torch.Tensor  # [T, K] int32
    topk_weights: torch.Tensor  # [T, K] float32


class PresetWeights:
    """Random weights of one preset, kept for the whole token sweep."""

    def __init__(self, shape: MoeShape, device="cuda", seed: int = 0):
        g = torch.Generator(device=device).manual_seed(seed)
        e, h, i, m = shape.num_experts, shape.hidden_size, shape.intermediate_size, shape.fc1_rows
        # Scales keep activations O(1) through both GEMMs.
        self.w1 = (torch.randn(e, m, h, generator=g, device=device) * h**-0.5).to(torch.bfloat16)
        self.w2 = (torch.randn(e, h, i, generator=g, device=device) * i**-0.5).to(torch.bfloat16)
        self.shape = shape
        self.gemm1 = self.gemm2 = None
        self.mxint4 = self.nvfp4 = None
        if shape.weight_format == "mxint4":
            self.mxint4 = _prepare_mxint4(shape, self.w1, self.w2)
        elif shape.weight_format == "nvfp4":
            self.nvfp4 = _prepare_nvfp4(shape, self.w1, self.w2)
        if shape.weight_format != "bf16":
            # The bf16 path and the peers run on the dequantized weights: every implementation
            # computes the same function.
            self.w1, self.w2 = (self.mxint4 or self.nvfp4).pop("dequantized")
        self.gemm1, self.gemm2 = prepare_bf16_moe_weights(self.w1, self.w2, shape.activation)
        self.swiglu = _swiglu_tensors(shape, device)


def _swiglu_tensors(shape: MoeShape, device) -> Dict[str, Optional[torch.Tensor]]:
    def per_expert(v):
        return None if v is None else torch.full((shape.num_experts,), v, dtype=torch.float32, device=device)

    return {"gemm1_alpha": per_expert(shape.swiglu_alpha), "gemm1_beta": per_expert(shape.swiglu_beta),
            "gemm1_clamp_limit": per_expert(shape.swiglu_limit)}


def _prepare_mxint4(shape: MoeShape, w1: torch.Tensor, w2: torch.Tensor) -> Dict[str, object]:
    from ..prepare import dequantize_mxint4, prepare_mxint4_moe_weights, quantize_mxint4

    q1, s1 = quantize_mxint4(w1)
    q2, s2 = quantize_mxint4(w2)
    g1, g1s, g2, g2s = prepare_mxint4_moe_weights(q1, s1, q2, s2)
    deq = (dequantize_mxint4(q1, s1).to(torch.bfloat16), dequantize_mxint4(q2, s2).to(torch.bfloat16))
    return {"gemm1_weights": g1, "gemm1_weights_scale": g1s, "gemm2_weights": g2,
            "gemm2_weights_scale": g2s, "dequantized": deq}


# nvfp4 mode's activation global scale (x and FC1's output, both ~O(1)): well inside NVFP4's range
NVFP4_INPUT_SCALE = 0.01


def _prepare_nvfp4(shape: MoeShape, w1: torch.Tensor, w2: torch.Tensor) -> Dict[str, object]:
    """NVFP4 experts (one global scale per expert and matrix) as b12x_fused_moe takes them, their
    decode scales, and the dequantized bf16 weights (the global scale folded in). For nvfp4 mode,
    the activation global scale and FC2's alpha with it folded in, as a ModelOpt checkpoint
    carries them (cute-moe-convert --format nvfp4), so that a timed call computes none of them."""
    from ..layouts.quantize import dequantize_nvfp4, quantize_nvfp4
    from ..prepare import prepare_b12x_fp4_moe_weights

    out = {}
    deq = []
    for name, w in (("w1", w1), ("w2", w2)):
        packed, scales, alphas, floats = [], [], [], []
        for e in range(w.shape[0]):
            p, s, g = quantize_nvfp4(w[e].float())
            packed.append(p)
            scales.append(s)
            alphas.append(1.0 / g)
            floats.append(dequantize_nvfp4(p, s, g).to(torch.bfloat16))
        out[name] = (torch.stack(packed), torch.stack(scales))
        out[f"{name}_alpha"] = torch.stack(alphas).float()
        deq.append(torch.stack(floats))
    prepared = prepare_b12x_fp4_moe_weights(*out.pop("w1"), *out.pop("w2"))
    out["input_scale"] = torch.full_like(out["w1_alpha"], NVFP4_INPUT_SCALE)
    out["w2_alpha_nvfp4"] = out["w2_alpha"] * out["input_scale"]
    return {**prepared, **out, "dequantized": tuple(deq)}


def make_input_sets(shape: MoeShape, num_tokens: int, count: int, device="cuda", seed: int = 1) -> List[InputSet]:
    from ..routing_ref import pack_topk_reference, route_reference

    g = torch.Generator(device=device).manual_seed(seed + num_tokens)
    sets = []
    for _ in range(count):
        hidden = torch.randn(num_tokens, shape.hidden_size, generator=g, device=device).to(torch.bfloat16)
        logits = torch.randn(num_tokens, shape.num_experts, generator=g, device=device)
        bias = None
        if shape.routing_method.name == "DeepSeekV3":
            bias = (torch.randn(shape.num_experts, generator=g, device=device) * 0.1).to(torch.bfloat16)
        ids, weights = route_reference(logits, bias, shape.top_k, shape.routing_method, n_group=shape.n_group,
                                       topk_group=shape.topk_group,
                                       routed_scaling_factor=shape.routed_scaling_factor)
        sets.append(InputSet(hidden, logits, bias, pack_topk_reference(ids, weights), ids, weights.float()))
    return sets


def _common_kwargs(shape: MoeShape) -> Dict[str, object]:
    return dict(num_experts=shape.num_experts, top_k=shape.top_k, n_group=shape.n_group,
                topk_group=shape.topk_group, intermediate_size=shape.intermediate_size,
                local_expert_offset=0, local_num_experts=shape.num_experts,
                routed_scaling_factor=shape.routed_scaling_factor,
                routing_method_type=int(shape.routing_method))


def implementations(weights: PresetWeights, variants: bool) -> Dict[str, Callable[[InputSet], object]]:
    """name -> callable(input_set); cute_moe paths first, then the peers."""
    shape = weights.shape
    kw = _common_kwargs(shape)
    impls: Dict[str, Callable[[InputSet], object]] = {}
    forced = (None,) + (GEMM_VARIANTS if variants else ())
    for variant in forced:
        suffix = "" if variant is None else f"[{variant}]"
        if weights.mxint4 is not None:
            q = weights.mxint4
            impls["cute_mxint4" + suffix] = lambda s, v=variant: moe.trtllm_mxint4_block_scale_moe(
                s.logits, s.bias, s.hidden, q["gemm1_weights"], q["gemm1_weights_scale"],
                weights.swiglu["gemm1_alpha"], weights.swiglu["gemm1_beta"], weights.swiglu["gemm1_clamp_limit"],
                q["gemm2_weights"], q["gemm2_weights_scale"], gemm_variant=v, **kw)
        if weights.nvfp4 is not None and variant != "wgmma":
            for mode in ("w4a16", "nvfp4"):
                impls[f"cute_{mode}" + suffix] = lambda s, v=variant, m=mode: _b12x(weights, s, m, v)
        quantized = weights.mxint4 is not None or weights.nvfp4 is not None
        if variant is None or not quantized:
            act = int(shape.activation)
            impls["cute_bf16" + suffix] = lambda s, v=variant: moe.trtllm_bf16_moe(
                s.logits, s.bias, s.hidden, weights.gemm1, weights.gemm2, activation_type=act,
                gemm_variant=v, **kw, **weights.swiglu)
            if weights.mxint4 is None:
                impls["cute_bf16_routed" + suffix] = lambda s, v=variant: moe.trtllm_bf16_routed_moe(
                    s.packed_topk, s.hidden, weights.gemm1, weights.gemm2, activation_type=act,
                    gemm_variant=v, **kw, **weights.swiglu)
    grouped = GroupedMmPipeline(shape, weights.w1, weights.w2)
    loop = PerExpertLoop(shape, weights.w1, weights.w2)
    impls[grouped.name] = lambda s: grouped(s.hidden, s.logits, s.bias)
    impls[loop.name] = lambda s: loop(s.hidden, s.logits, s.bias)
    return impls


def _b12x(weights: PresetWeights, s: InputSet, mode: str, variant: Optional[str]):
    """b12x_fused_moe on the preset's NVFP4 experts; nvfp4 quantizes x and FC1's activation with
    the global scales _prepare_nvfp4 set up."""
    from ..b12x import b12x_fused_moe

    q, shape = weights.nvfp4, weights.shape
    kw = dict(w2_alpha=q["w2_alpha"])
    if mode == "nvfp4":
        kw = dict(w2_alpha=q["w2_alpha_nvfp4"], input_global_scale=q["input_scale"], fc2_input_scale=q["input_scale"])
    return b12x_fused_moe(s.hidden, q["w1_weight"], q["w1_weight_sf"], q["w2_weight"], q["w2_weight_sf"], s.topk_ids,
                          s.topk_weights, shape.num_experts, shape.top_k, w1_alpha=q["w1_alpha"],
                          activation="silu" if shape.activation.is_gated else "relu2", quant_mode=mode,
                          gemm_variant=variant, **kw)


SYNCHRONIZING = {PerExpertLoop.name}  # timed eagerly, not under graph replay
