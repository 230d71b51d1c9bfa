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
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from . import validate
from .enums import ActivationType, RoutingInputMode
from .kernels import runtime
from .plan import PlanShape


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

_TENSOR_FIELDS = ("hidden_states", "routing_logits", "routing_bias", "topk_ids", "topk_weights",
                  "routing_replay_out", "gemm1_lora_delta", "gemm1_alpha", "gemm1_beta", "gemm1_clamp_limit",
                  "output")
_SCALAR_FIELDS = ("mode", "num_experts", "top_k", "n_group", "topk_group", "intermediate_size",
                  "local_expert_offset", "local_num_experts", "routed_scaling_factor", "routing_method_type",
                  "activation_type", "norm_topk_prob", "do_finalize", "gemm_variant")
# tensors that kernels read or write with 16-byte vectors (validate.py's alignment rule)
_VECTOR_FIELDS = ("hidden_states", "gemm1_lora_delta", "output")


def _meta(t):
    return None if t is None else (t.__class__, t.shape, t.stride(), t.dtype, t.device)


def call_signature(call: MoeCall) -> Tuple:
    """Everything the argument checks and the recipe depend on, except data pointers."""
    w = call.weights
    return (tuple(_meta(getattr(call, f)) for f in _TENSOR_FIELDS),
            tuple((v.__class__, v) for v in (getattr(call, f) for f in _SCALAR_FIELDS)),
            w.kind, _meta(w.gemm1), _meta(w.gemm2), _meta(w.gemm1_scale), _meta(w.gemm2_scale),
            os.environ.get("CUTE_MOE_GEMM_VARIANT"))


_ALIGN = 256  # workspace buffers start on 256-byte boundaries


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
    """What a fused call launches, derived once per signature after the full argument checks."""

    arch: str
    config: object  # GemmConfig
    plan: PlanShape
    plan_workspace_ints: int
    route: object  # RouteSpec, FromLogits only
    fc1_key: Tuple
    fc2_key: Tuple
    fc1_ctas: int
    fc2_ctas: int
    fc1_rows: int  # M of FC1: 2I gated, I for Relu2
    layout: WorkspaceLayout

    @classmethod
    def of(cls, call: MoeCall) -> "CallRecipe":
        from .gemm import _num_ctas, fc1_kernel_key, fc2_kernel_key
        from .routing import RouteSpec, plan_workspace_ints
        from .select import select_config

        device = call.hidden_states.device
        t, h, k, inter = call.num_tokens, call.hidden_size, call.top_k, call.intermediate_size
        act = ActivationType(int(call.activation_type))
        config = select_config(num_tokens=t, top_k=k, hidden_size=h, intermediate_size=inter,
                               local_num_experts=call.local_num_experts, weight_kind=call.weights.kind,
                               device=device, variant=call.gemm_variant)
        shape = PlanShape(t, k, call.local_num_experts, config.tile_rows)
        route = None
        if call.mode == RoutingInputMode.FromLogits:
            bias = call.routing_bias
            route = RouteSpec.of(call.routing_method_type, call.num_experts, k, call.routing_logits.dtype,
                                 None if bias is None else bias.dtype, call.n_group, call.topk_group,
                                 call.norm_topk_prob, call.routing_replay_out is not None)
        lora = call.gemm1_lora_delta is not None
        finalize = call.do_finalize
        pairs, rows, tiles, local = shape.num_pairs, shape.max_padded_rows, shape.max_tiles, shape.local_num_experts
        ws_ints = plan_workspace_ints(shape)
        own_routing = call.mode != RoutingInputMode.UnpackedPrecomputed
        layout = WorkspaceLayout.of({
            "topk_ids": (4 * pairs, own_routing),
            "topk_weights": (2 * pairs, own_routing and finalize),
            "expert_counts": (4 * local, True),
            "expert_offsets": (4 * (local + 1), True),
            "expanded_idx_to_permuted_idx": (4 * pairs, finalize and not lora),
            "permuted_idx_to_expanded_idx": (4 * rows, True),
            "tile_info": (16 * tiles, True),
            "counters": (16, True),
            "plan_workspace": (4 * ws_ints, True),
            "act": (2 * rows * inter, not lora),
            "gemm2_output": (2 * rows * h, finalize),
        })
        m = (2 if act.is_gated else 1) * inter
        kind = call.weights.kind
        fc1_key = fc1_kernel_key(config.fc1, config.variant, act, lora, call.gemm1_alpha is not None,
                                 call.gemm1_beta is not None, call.gemm1_clamp_limit is not None, kind)
        fc2_key = fc2_kernel_key(config.fc2, config.variant, kind)
        return cls(runtime.arch_of_device(device), config, shape, ws_ints, route, fc1_key, fc2_key,
                   _num_ctas(config, config.fc1, device, tiles, m), _num_ctas(config, config.fc2, device, tiles, h),
                   m, layout)


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
    from .gemm import launch_gemm
    from .kernels.gemm_config import INT4_SCALE_ALIGN
    from .kernels.topk_pack import launch_unpack_topk
    from .routing import launch_combine, launch_plan

    recipe = recipe_for(call)
    t, h, k = call.num_tokens, call.hidden_size, int(call.top_k)
    device = call.hidden_states.device
    output = call.output
    if call.do_finalize and output is None:
        output = torch.empty(t, h, dtype=torch.bfloat16, device=device)
    if t == 0:
        return _empty_result(call, output)
    for name in _VECTOR_FIELDS:  # data pointers change from call to call: checked every time
        x = getattr(call, name)
        if x is not None:
            validate.check_aligned(x, name)
    w = call.weights
    for name, x in (("gemm1_weights", w.gemm1), ("gemm2_weights", w.gemm2), ("gemm1_weights_scale", w.gemm1_scale),
                    ("gemm2_weights_scale", w.gemm2_scale)):
        if x is not None:
            validate.check_aligned(x, name)

    # every address before the first launch, so a bad one raises with nothing launched
    p = runtime.ptr
    w1, w2 = p(w.gemm1), p(w.gemm2)
    s1 = p(w.gemm1_scale, align=INT4_SCALE_ALIGN) if w.gemm1_scale is not None else w1
    s2 = p(w.gemm2_scale, align=INT4_SCALE_ALIGN) if w.gemm2_scale is not None else w2
    x = p(call.hidden_states)
    lora = p(call.gemm1_lora_delta) if call.gemm1_lora_delta is not None else x
    alpha, beta, clamp = (p(v, align=4) if v is not None else x
                          for v in (call.gemm1_alpha, call.gemm1_beta, call.gemm1_clamp_limit))

    layout = recipe.layout.offsets
    workspace = torch.empty(recipe.layout.nbytes, dtype=torch.uint8, device=device)
    base = workspace.data_ptr()
    own = {}  # buffers the call returns: allocated apart

    def buf(name, shape, dtype) -> int:
        if layout[name] is not None:
            return base + layout[name]
        own[name] = torch.empty(shape, dtype=dtype, device=device)
        return own[name].data_ptr()

    arch, stream = recipe.arch, runtime.current_stream(device)
    pairs = t * k
    if call.mode == RoutingInputMode.UnpackedPrecomputed:
        ids, weights = p(call.topk_ids, align=4), p(call.topk_weights, align=call.topk_weights.element_size())
        weights_f32 = call.topk_weights.dtype == torch.float32
    else:
        ids = buf("topk_ids", (t, k), torch.int32)
        weights, weights_f32 = buf("topk_weights", (t, k), torch.bfloat16), False
        if recipe.route is not None:
            replay = call.routing_replay_out
            recipe.route.launch(arch, p(call.routing_logits, align=call.routing_logits.element_size()),
                                p(call.routing_bias, align=call.routing_bias.element_size())
                                if recipe.route.bias_dtype else ids, ids, weights,
                                p(replay, align=2) if replay is not None else ids, t,
                                1.0 if call.routed_scaling_factor is None else float(call.routed_scaling_factor),
                                stream)
        else:
            launch_unpack_topk(arch, p(call.topk_ids, align=4), ids, weights, pairs, stream)
    if call.routing_replay_out is not None and recipe.route is None:
        ids_view = call.topk_ids if call.mode == RoutingInputMode.UnpackedPrecomputed else \
            workspace[layout["topk_ids"]:layout["topk_ids"] + 4 * pairs].view(torch.int32).view(t, k)
        call.routing_replay_out[:t].copy_(ids_view)

    from .routing import PlanPointers

    shape = recipe.plan
    plan = PlanPointers(buf("expert_counts", None, None), buf("expert_offsets", None, None),
                        buf("expanded_idx_to_permuted_idx", (pairs,), torch.int32),
                        buf("permuted_idx_to_expanded_idx", None, None), buf("tile_info", None, None),
                        buf("counters", None, None))
    launch_plan(arch, shape, int(call.local_expert_offset), ids, plan, buf("plan_workspace", None, None), stream)

    rows, inter, local, tiles = shape.max_padded_rows, int(call.intermediate_size), shape.local_num_experts, shape.max_tiles
    config = recipe.config
    act = buf("act", (rows, inter), torch.bfloat16)
    launch_gemm(recipe.fc1_key, arch, w1, s1, x, plan.p2e, plan.tiles, plan.counters, act, lora, alpha, beta,
                clamp, recipe.fc1_rows, h, inter, k, local, tiles, recipe.fc1_ctas, config.pdl, stream)
    gemm2 = buf("gemm2_output", (rows, h), torch.bfloat16)
    launch_gemm(recipe.fc2_key, arch, w2, s2, act, plan.p2e, plan.tiles, plan.counters, gemm2, act, act, act, act,
                h, inter, h, k, local, tiles, recipe.fc2_ctas, config.pdl, stream)

    extra = [own["act"]] if call.gemm1_lora_delta is not None else []
    if call.do_finalize:
        launch_combine(arch, k, weights_f32, gemm2, weights, plan.e2p, p(output), t, rows, h, stream)
        return [output] + ([own["expanded_idx_to_permuted_idx"]] + extra if extra else [])
    expert_weights = call.topk_weights.clone() if call.mode == RoutingInputMode.UnpackedPrecomputed \
        else own["topk_weights"]
    return [own["gemm2_output"], expert_weights, own["expanded_idx_to_permuted_idx"]] + extra
