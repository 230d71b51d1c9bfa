"""One fused MoE call, start to finish: route -> plan -> FC1 -> FC2 -> combine.

Every public entry point builds a ``MoeCall`` and hands it to ``run_moe``. The steps are the
kernels behind cute_moe.routing, cute_moe.gemm and cute_moe.kernels.topk_pack, launched through
their ``launch_*`` functions; this module decides which buffers exist and what goes back to the
caller (FlashInfer's return table, see cute_moe.moe).

The eager host path is short: everything that follows from the call's signature (tensor
shapes, strides, dtypes and devices, the scalar arguments, the forced variant) is derived once,
after the full argument checks, into a ``CallRecipe`` (GEMM config, plan shape, kernel keys,
workspace layout) kept per signature. A repeated signature skips straight to the checks that
depend on data pointers (alignment), one workspace allocation for every internal buffer, and
the launches on plain addresses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Tuple

import torch

from . import validate
from .enums import ActivationType, RoutingInputMode
from .gemm import launch_gemm
from .kernels import runtime
from .activation_quant import launch_quantize
from .kernels.gemm_config import FP4_SCALE_ALIGN, INT4_SCALE_ALIGN, GemmConfig
from .kernels.topk_pack import launch_unpack_topk
from .plan import PlanShape
from .routing import PlanFront, PlanPointers, PlanPrefetch, launch_combine, launch_plan, launch_route
from .select import ENV_VARIANT


@dataclass(frozen=True)
class ExpertWeights:
    """Prepared expert weights of one call: ``kind`` is "bf16", "mxint4" or "nvfp4" (b12x's FP4
    experts). NVFP4 experts also carry float32 ``[L]`` vectors: ``gemm1_out_scale`` /
    ``gemm2_out_scale`` multiply FC1's accumulators (before the activation) and FC2's;
    ``gemm1_input_scale`` / ``gemm2_input_scale`` (both or neither) are the global scales with
    which FC1's and FC2's inputs are quantized to NVFP4 (cute_moe.kernels.fp4_quantize)."""

    kind: str
    gemm1: torch.Tensor
    gemm2: torch.Tensor
    gemm1_scale: Optional[torch.Tensor] = None
    gemm2_scale: Optional[torch.Tensor] = None
    gemm1_out_scale: Optional[torch.Tensor] = None
    gemm2_out_scale: Optional[torch.Tensor] = None
    gemm1_input_scale: Optional[torch.Tensor] = None
    gemm2_input_scale: Optional[torch.Tensor] = None

    @classmethod
    def bf16(cls, gemm1, gemm2) -> "ExpertWeights":
        return cls("bf16", gemm1, gemm2)

    @classmethod
    def mxint4(cls, gemm1, gemm1_scale, gemm2, gemm2_scale) -> "ExpertWeights":
        return cls("mxint4", gemm1, gemm2, gemm1_scale, gemm2_scale)

    @classmethod
    def nvfp4(cls, gemm1, gemm1_scale, gemm2, gemm2_scale, gemm1_out_scale, gemm2_out_scale,
              gemm1_input_scale=None, gemm2_input_scale=None) -> "ExpertWeights":
        return cls("nvfp4", gemm1, gemm2, gemm1_scale, gemm2_scale, gemm1_out_scale, gemm2_out_scale,
                   gemm1_input_scale, gemm2_input_scale)

    @property
    def quantizes_inputs(self) -> bool:
        return self.gemm1_input_scale is not None

    @property
    def vectors(self) -> Tuple[Optional[torch.Tensor], ...]:
        """The per-expert float32 vectors, in ExpertWeights.nvfp4's order."""
        return self.gemm1_out_scale, self.gemm2_out_scale, self.gemm1_input_scale, self.gemm2_input_scale


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


def _empty_result(call: MoeCall, output: torch.Tensor) -> List[torch.Tensor]:
    dev, k = call.hidden_states.device, call.top_k
    perm = torch.empty(0, dtype=torch.int32, device=dev)
    act = torch.empty(0, call.intermediate_size, dtype=torch.bfloat16, device=dev)
    if call.do_finalize:
        return [output] if call.gemm1_lora_delta is None else [output, perm, act]
    result = [torch.empty(0, call.hidden_size, dtype=torch.bfloat16, device=dev),
              torch.empty(0, k, dtype=torch.bfloat16, device=dev), perm]
    return result + ([act] if call.gemm1_lora_delta is not None else [])


# --------------------------------------------------------------------------- signature -> recipe

# tensors that kernels read or write with 16-byte vectors (validate.py's alignment rule)
_VECTOR_FIELDS = ("hidden_states", "gemm1_lora_delta", "output")


def _meta(t):
    return None if t is None else (t.__class__, t.shape, t.stride(), t.dtype, t.device)


def _typed(v):
    return v.__class__, v  # 1 and True hash alike; the checks tell them apart


def call_signature(call: MoeCall) -> Tuple:
    """Everything the argument checks and the recipe depend on, except data pointers."""
    c, w = call, call.weights
    return (_meta(c.hidden_states), _meta(c.routing_logits), _meta(c.routing_bias), _meta(c.topk_ids),
            _meta(c.topk_weights), _meta(c.routing_replay_out), _meta(c.gemm1_lora_delta), _meta(c.gemm1_alpha),
            _meta(c.gemm1_beta), _meta(c.gemm1_clamp_limit), _meta(c.output),
            w.kind, _meta(w.gemm1), _meta(w.gemm2), _meta(w.gemm1_scale), _meta(w.gemm2_scale),
            *(_meta(v) for v in w.vectors),
            _typed(c.mode), _typed(c.num_experts), _typed(c.top_k), _typed(c.n_group), _typed(c.topk_group),
            _typed(c.intermediate_size), _typed(c.local_expert_offset), _typed(c.local_num_experts),
            _typed(c.routed_scaling_factor), _typed(c.routing_method_type), _typed(c.activation_type),
            _typed(c.norm_topk_prob), _typed(c.do_finalize), c.gemm_variant, os.environ.get(ENV_VARIANT))


_ALIGN = 256  # workspace buffers start on 256-byte boundaries


def _quantized_bytes(rows: int, k: int, packed: bool) -> int:
    """NVFP4-quantized rows: bf16 ``q * sf`` values, or packed codes then ue4m3 scales."""
    return rows * k // 2 + rows * k // 16 if packed else 2 * rows * k


@dataclass(frozen=True)
class WorkspaceLayout:
    """Byte offsets of the internal buffers that share one allocation (None: allocated apart,
    because the call returns it)."""

    offsets: Dict[str, Optional[int]]
    nbytes: int

    @classmethod
    def of(cls, sizes: Dict[str, Tuple[int, bool]]) -> "WorkspaceLayout":
        """``sizes``: name -> (bytes, shared)."""
        offsets, end = {}, 0
        for name, (nbytes, shared) in sizes.items():
            if shared:
                offsets[name] = end
                end += -(-max(nbytes, 4) // _ALIGN) * _ALIGN
            else:
                offsets[name] = None
        return cls(offsets, max(end, _ALIGN))


@dataclass(frozen=True)
class CallRecipe:
    """What a fused call launches, derived once per signature after the full argument checks; the
    kernels are resolved (compiled or loaded) here, before any launch."""

    device_index: int
    config: GemmConfig
    plan: PlanShape
    route: Optional[Callable]  # FromLogits: the routing kernel
    quantize: Optional[Tuple[Callable, Callable]]  # NVFP4 inputs: (x rows, FC1's act)
    block_scaled: bool  # NVFP4 inputs on SM120: packed FP4 rows for the block-scaled MMA
    unpack: Optional[Callable]  # PackedPrecomputed: the unpacking kernel
    plan_kernels: List[Callable]
    plan_routes: bool  # the one-CTA plan folds in the routing or the unpacking (route / unpack: None)
    plan_prefetch: Optional[PlanPrefetch]  # L2 prefetch of the one-CTA plan, weight addresses 0 (set per call)
    fc1: Callable
    fc2: Callable
    combine: Optional[Callable]  # do_finalize only
    fc1_ctas: int
    fc2_ctas: int
    fc1_rows: int  # M of FC1: 2I gated, I for Relu2
    scale: float  # routed_scaling_factor
    layout: WorkspaceLayout

    @classmethod
    def of(cls, call: MoeCall) -> "CallRecipe":
        from .gemm import _num_ctas, fc1_kernel_key, fc2_kernel_key, gemm_kernel, token_rows_of
        from .kernels.topk_pack import unpack_kernel
        from .routing import (RouteSpec, combine_kernel, fused_plan_source, plan_is_single_cta, plan_kernels,
                              plan_prefetch, plan_workspace_ints)
        from .select import select_config

        device = call.hidden_states.device
        arch = runtime.arch_of_device(device)
        t, h, k, inter = call.num_tokens, call.hidden_size, int(call.top_k), int(call.intermediate_size)
        act = ActivationType(int(call.activation_type))
        config = select_config(num_tokens=t, top_k=k, hidden_size=h, intermediate_size=inter,
                               local_num_experts=call.local_num_experts, weight_kind=call.weights.kind,
                               device=device, variant=call.gemm_variant, activation_type=act)
        shape = PlanShape(t, k, int(call.local_num_experts), config.tile_rows)
        spec = None
        if call.mode == RoutingInputMode.FromLogits:
            bias = call.routing_bias
            spec = RouteSpec.of(call.routing_method_type, call.num_experts, k, call.routing_logits.dtype,
                                None if bias is None else bias.dtype, call.n_group, call.topk_group,
                                call.norm_topk_prob, call.routing_replay_out is not None)
        # at small T the one-CTA plan routes or unpacks itself (one launch fewer before FC1)
        source = fused_plan_source(shape, spec, call.mode == RoutingInputMode.PackedPrecomputed)
        route = spec.kernel(arch) if spec is not None and source == "ids" else None
        unpack = unpack_kernel(arch) if call.mode == RoutingInputMode.PackedPrecomputed and source == "ids" else None
        lora = call.gemm1_lora_delta is not None
        finalize = bool(call.do_finalize)
        pairs, rows, tiles, local = shape.num_pairs, shape.max_padded_rows, shape.max_tiles, shape.local_num_experts
        own_routing = call.mode != RoutingInputMode.UnpackedPrecomputed
        # SM120 multiplies NVFP4 weights by NVFP4 activations on its block-scaled MMA; other arches
        # dequantize both to bf16 (the same products, exactly)
        fc1_rows, fc2_rows = token_rows_of(arch, call.weights.quantizes_inputs)
        block_scaled = fc1_rows == "fp4"
        layout = WorkspaceLayout.of({
            "topk_ids": (4 * pairs, own_routing),
            "topk_weights": (2 * pairs, own_routing and finalize),
            "expert_counts": (4 * local, True),
            "expert_offsets": (4 * (local + 1), True),
            "expanded_idx_to_permuted_idx": (4 * pairs, finalize and not lora),
            "permuted_idx_to_expanded_idx": (4 * rows, True),
            "tile_info": (16 * tiles, True),
            "counters": (16, True),
            "plan_workspace": (4 * plan_workspace_ints(shape), True),
            "act": (2 * rows * inter, not lora),
            "x_quantized": (_quantized_bytes(rows, h, block_scaled) if call.weights.quantizes_inputs else 0, True),
            "act_quantized": (_quantized_bytes(rows, inter, True) if block_scaled else 0, True),
            "gemm2_output": (2 * rows * h, finalize),
        })
        m = (2 if act.is_gated else 1) * inter
        kind = call.weights.kind
        out_scale = call.weights.gemm1_out_scale is not None
        quantize = None
        if call.weights.quantizes_inputs:
            from .activation_quant import quantize_kernel

            quantize = (quantize_kernel(arch, gather=True, packed=block_scaled),
                        quantize_kernel(arch, gather=False, packed=block_scaled))
        fc1 = gemm_kernel(fc1_kernel_key(config.fc1, config.variant, act, lora, call.gemm1_alpha is not None,
                                         call.gemm1_beta is not None, call.gemm1_clamp_limit is not None, kind,
                                         has_out_scale=out_scale, token_rows=fc1_rows), arch)
        fc2 = gemm_kernel(fc2_kernel_key(config.fc2, config.variant, kind, has_out_scale=out_scale,
                                         token_rows=fc2_rows), arch)
        weights_f32 = call.topk_weights is not None and call.topk_weights.dtype == torch.float32
        combine = combine_kernel(arch, k, weights_f32) if finalize else None
        scale = 1.0 if call.routed_scaling_factor is None else float(call.routed_scaling_factor)
        # decode (programmatic launches): DRAM idles while the plan runs; the prefix order of
        # prefetch holds for weights stored k-block major (bf16, MXINT4), not for b12x's rows
        prefetch = None
        if config.pdl and kind in ("bf16", "mxint4") and plan_is_single_cta(shape):
            prefetch = plan_prefetch(shape, 0, 0, call.weights.gemm1.nbytes // local,
                                     call.weights.gemm2.nbytes // local)
        return cls(device.index if device.index is not None else torch.cuda.current_device(), config, shape, route,
                   quantize, block_scaled, unpack, plan_kernels(arch, plan_is_single_cta(shape), source),
                   source != "ids", prefetch, fc1, fc2, combine,
                   _num_ctas(config, config.fc1, device, tiles, m), _num_ctas(config, config.fc2, device, tiles, h),
                   m, scale, layout)


_RECIPES: Dict[Tuple, CallRecipe] = {}
_MAX_RECIPES = 1024


def recipe_for(call: MoeCall) -> CallRecipe:
    """The call's recipe: full argument checks the first time a signature is seen."""
    sig = call_signature(call)
    recipe = _RECIPES.get(sig)
    if recipe is None:
        validate.validate_moe_call(call)
        recipe = CallRecipe.of(call) if call.num_tokens else None
        if len(_RECIPES) >= _MAX_RECIPES:
            _RECIPES.clear()
        _RECIPES[sig] = recipe
    return recipe


# --------------------------------------------------------------------------- the call


def run_moe(call: MoeCall) -> List[torch.Tensor]:
    """Run one fused MoE call; returns FlashInfer's list (cute_moe.moe unwraps single tensors)."""
    recipe = recipe_for(call)
    t, h, k = call.num_tokens, call.hidden_size, int(call.top_k)
    device = call.hidden_states.device
    output = call.output
    if call.do_finalize and output is None:
        output = torch.empty(t, h, dtype=torch.bfloat16, device=device)
    if t == 0:
        return _empty_result(call, output)
    w = call.weights
    # data pointers change from call to call: checked every time, before the first launch
    for name, x in ((name, getattr(call, name)) for name in _VECTOR_FIELDS):
        if x is not None:
            validate.check_aligned(x, name)
    scale_align = FP4_SCALE_ALIGN if w.kind == "nvfp4" else INT4_SCALE_ALIGN
    for name, x, align in (("gemm1_weights", w.gemm1, 16), ("gemm2_weights", w.gemm2, 16),
                           ("gemm1_weights_scale", w.gemm1_scale, scale_align),
                           ("gemm2_weights_scale", w.gemm2_scale, scale_align)):
        if x is not None:
            validate.check_aligned(x, name, align)

    p = runtime.ptr
    w1, w2 = p(w.gemm1), p(w.gemm2)
    s1 = p(w.gemm1_scale, align=scale_align) if w.gemm1_scale is not None else w1
    s2 = p(w.gemm2_scale, align=scale_align) if w.gemm2_scale is not None else w2
    out1, out2, in1, in2 = (p(v, align=4) if v is not None else w1 for v in w.vectors)
    x = p(call.hidden_states)
    lora = p(call.gemm1_lora_delta) if call.gemm1_lora_delta is not None else x
    alpha, beta, clamp = (p(v, align=4) if v is not None else x
                          for v in (call.gemm1_alpha, call.gemm1_beta, call.gemm1_clamp_limit))

    layout = recipe.layout.offsets
    workspace = torch.empty(recipe.layout.nbytes, dtype=torch.uint8, device=device)
    base = workspace.data_ptr()
    own = {}  # buffers the call returns: allocated apart

    def buf(name, shape=None, dtype=None) -> int:
        if layout[name] is not None:
            return base + layout[name]
        own[name] = torch.empty(shape, dtype=dtype, device=device)
        return own[name].data_ptr()

    stream = runtime.current_stream(recipe.device_index)
    pairs = t * k
    replay = call.routing_replay_out
    front = None  # the routing or unpacking the one-CTA plan folds in
    if call.mode == RoutingInputMode.UnpackedPrecomputed:
        ids, weights = p(call.topk_ids, align=4), p(call.topk_weights, align=call.topk_weights.element_size())
    else:
        ids, weights = buf("topk_ids", (t, k), torch.int32), buf("topk_weights", (t, k), torch.bfloat16)
        if call.mode == RoutingInputMode.FromLogits:
            logits = p(call.routing_logits, align=call.routing_logits.element_size())
            bias = p(call.routing_bias, align=call.routing_bias.element_size()) if call.routing_bias is not None \
                else ids
            replay_ptr = p(replay, align=2) if replay is not None else ids
            if recipe.plan_routes:
                front = PlanFront(logits, bias, weights, replay_ptr, recipe.scale)
            else:
                launch_route(recipe.route, logits, bias, ids, weights, replay_ptr, t, recipe.scale, stream)
        elif recipe.plan_routes:
            front = PlanFront(p(call.topk_ids, align=4), ids, weights, ids)
        else:
            launch_unpack_topk(recipe.unpack, p(call.topk_ids, align=4), ids, weights, pairs, stream)

    shape = recipe.plan
    plan = PlanPointers(buf("expert_counts"), buf("expert_offsets"),
                        buf("expanded_idx_to_permuted_idx", (pairs,), torch.int32),
                        buf("permuted_idx_to_expanded_idx"), buf("tile_info"), buf("counters"))
    # decode configs launch every stage from the plan on as a programmatic dependent of the one
    # before: each kernel launches while its predecessor runs and waits for it at its start (the
    # first kernel of the call, a plan that routes itself, launches plainly)
    pdl = recipe.config.pdl
    prefetch = replace(recipe.plan_prefetch, w1=w1, w2=w2) if recipe.plan_prefetch is not None else None
    launch_plan(recipe.plan_kernels, shape, int(call.local_expert_offset), ids, plan, buf("plan_workspace"), stream,
                pdl and front is None, front, prefetch)
    if replay is not None and call.mode != RoutingInputMode.FromLogits:
        ids_view = call.topk_ids if call.mode == RoutingInputMode.UnpackedPrecomputed else \
            workspace[layout["topk_ids"]:layout["topk_ids"] + 4 * pairs].view(torch.int32).view(t, k)
        replay[:t].copy_(ids_view)

    rows, inter, local, tiles = shape.max_padded_rows, int(call.intermediate_size), shape.local_num_experts, shape.max_tiles
    act = buf("act", (rows, inter), torch.bfloat16)
    fc1_x, fc2_x = x, act
    if recipe.quantize is not None:  # NVFP4 inputs: x's rows quantized per routed expert, in plan order
        fc1_x = buf("x_quantized")
        launch_quantize(recipe.quantize[0], x, fc1_x, in1, plan.p2e, plan.tiles, plan.counters, h, k, local, tiles,
                        shape.tile_rows, stream)
    launch_gemm(recipe.fc1, w1, s1, fc1_x, plan.p2e, plan.tiles, plan.counters, act, lora, alpha, beta, clamp, out1,
                recipe.fc1_rows, h, inter, k, local, tiles, recipe.fc1_ctas, pdl, stream)
    if recipe.quantize is not None:  # FC1's activation: in place (bf16 q * sf) or packed apart (SM120)
        fc2_x = buf("act_quantized") if recipe.block_scaled else act
        launch_quantize(recipe.quantize[1], act, fc2_x, in2, plan.p2e, plan.tiles, plan.counters, inter, k, local,
                        tiles, shape.tile_rows, stream)
    gemm2 = buf("gemm2_output", (rows, h), torch.bfloat16)
    launch_gemm(recipe.fc2, w2, s2, fc2_x, plan.p2e, plan.tiles, plan.counters, gemm2, act, act, act, act, out2, h, inter,
                h, k, local, tiles, recipe.fc2_ctas, pdl, stream)

    extra = [own["act"]] if call.gemm1_lora_delta is not None else []
    if call.do_finalize:
        launch_combine(recipe.combine, gemm2, weights, plan.e2p, p(output), t, rows, h, stream, pdl)
        return [output] + ([own["expanded_idx_to_permuted_idx"]] + extra if extra else [])
    expert_weights = call.topk_weights.clone() if call.mode == RoutingInputMode.UnpackedPrecomputed \
        else own["topk_weights"]
    return [own["gemm2_output"], expert_weights, own["expanded_idx_to_permuted_idx"]] + extra
