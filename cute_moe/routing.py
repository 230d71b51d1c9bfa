"""Routing, the MoE plan and the weighted combine on the GPU: the public host functions.

* ``route``: router logits -> ``(topk_ids int32 [T, K], topk_weights bf16 [T, K])`` by any
  FlashInfer RoutingMethodType (the standalone routing op: route once, reuse the result).
* ``build_plan``: ``topk_ids`` -> ``MoePlan`` (counts, padded offsets, permutation maps, tiles).
* ``combine``: FC2 rows -> ``out[t] = sum_j w[t, j] * gemm2_output[perm[t*K + j]]``.

Each function validates its arguments before any launch, launches on the current CUDA stream and
never reads device values on the host, so a sequence of them can be captured in a CUDA graph and
replayed for any routing of the same token count (``build_plan(..., plan=p)`` reuses ``p``'s
buffers).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import validate
from .enums import RoutingMethodType
from .kernels import runtime
from .plan import MoePlan, PlanShape

_METHODS_WITH_BIAS = (RoutingMethodType.MiniMax2, RoutingMethodType.DeepSeekV3)


def _require_cuda(t: torch.Tensor, name: str) -> None:
    if t.device.type != "cuda":
        raise ValueError(f"{name}: expected a tensor on a CUDA device, got a tensor on {t.device}")


def _same_device(t: torch.Tensor, name: str, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got a tensor on {t.device}")


# --------------------------------------------------------------------------- route


def route(routing_logits: torch.Tensor, routing_bias: Optional[torch.Tensor], top_k: int,
          routing_method_type, n_group: Optional[int] = None, topk_group: Optional[int] = None,
          routed_scaling_factor: Optional[float] = None, norm_topk_prob: bool = True,
          routing_replay_out: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing of ``routing_logits [T, E]`` (float32 or bf16) on the GPU.

    Returns ``(topk_ids int32 [T, top_k], topk_weights bf16 [T, top_k])``: global expert ids in
    descending score order (ties to the lower expert id) and their weights, computed in float32
    as ``cute_moe.routing_ref.route_reference`` specifies for each method and rounded once to
    bf16. ``routing_bias [E]`` (float32 or bf16) is read by MiniMax2 and DeepSeekV3 only;
    ``routed_scaling_factor`` (default 1.0) scales their weights; ``norm_topk_prob`` acts on
    SigmoidRenorm only. ``routing_replay_out`` (int16 ``[>= T, top_k]``) receives the ids in its
    first T rows.
    """
    from .kernels.routing import RouteTopk, route_example_args

    if not isinstance(routing_logits, torch.Tensor) or routing_logits.dim() != 2:
        validate.check_tensor(routing_logits, "routing_logits", dtypes=(torch.float32, torch.bfloat16), ndim=2)
    num_tokens, num_experts = routing_logits.shape
    method = validate.validate_routing_args(
        routing_logits, routing_bias, num_experts, top_k, n_group, topk_group, routing_method_type,
        routed_scaling_factor, routing_replay_out, norm_topk_prob=norm_topk_prob)
    _require_cuda(routing_logits, "routing_logits")
    device = routing_logits.device
    top_k = int(top_k)
    topk_ids = torch.empty(num_tokens, top_k, dtype=torch.int32, device=device)
    topk_weights = torch.empty(num_tokens, top_k, dtype=torch.bfloat16, device=device)
    if num_tokens == 0:
        return topk_ids, topk_weights

    grouped = method == RoutingMethodType.DeepSeekV3 and (n_group or 0) > 1
    ng, tg = (int(n_group), int(topk_group)) if grouped else (0, 0)
    use_bias = routing_bias is not None and method in _METHODS_WITH_BIAS
    bias_dtype = ("f32" if routing_bias.dtype == torch.float32 else "bf16") if use_bias else None
    logits_f32 = routing_logits.dtype == torch.float32
    norm = bool(norm_topk_prob) if method == RoutingMethodType.SigmoidRenorm else True
    replay = routing_replay_out is not None

    key = ("route", int(method), num_experts, top_k, logits_f32, bias_dtype, ng, tg, norm, replay)
    arch = runtime.arch_of_device(device)
    fn = runtime.KERNELS.get(key, arch, lambda: (
        RouteTopk(method, num_experts, top_k, logits_f32, bias_dtype, ng, tg, norm, replay),
        route_example_args(logits_f32, bias_dtype)))
    itemsize = routing_logits.element_size()
    bias_ptr = (runtime.ptr(routing_bias, align=routing_bias.element_size()) if use_bias
                else runtime.ptr(topk_ids, torch.float32, align=4))
    replay_ptr = (runtime.ptr(routing_replay_out, align=2) if replay
                  else runtime.ptr(topk_ids, torch.int16, align=2))
    scale = 1.0 if routed_scaling_factor is None else float(routed_scaling_factor)
    fn(runtime.ptr(routing_logits, align=itemsize), bias_ptr, runtime.ptr(topk_ids, align=4),
       runtime.ptr(topk_weights, align=2), replay_ptr, num_tokens, scale, runtime.current_stream())
    return topk_ids, topk_weights


# --------------------------------------------------------------------------- plan


def _check_plan_args(topk_ids, top_k, local_expert_offset, local_num_experts, tile_rows) -> PlanShape:
    from .kernels.plan import MAX_LOCAL_EXPERTS

    validate.check_tensor(topk_ids, "topk_ids", dtypes=(torch.int32,), ndim=2)
    for name, value, minimum in (("top_k", top_k, 1), ("local_expert_offset", local_expert_offset, 0),
                                 ("local_num_experts", local_num_experts, 1), ("tile_rows", tile_rows, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
        if value < minimum:
            raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    if topk_ids.shape[1] != top_k:
        raise ValueError(f"topk_ids: expected shape [num_tokens, top_k = {top_k}], got {tuple(topk_ids.shape)}")
    if local_num_experts > MAX_LOCAL_EXPERTS:
        raise ValueError(f"local_num_experts: expected at most {MAX_LOCAL_EXPERTS}, got {local_num_experts}")
    _require_cuda(topk_ids, "topk_ids")
    return PlanShape(int(topk_ids.shape[0]), int(top_k), int(local_num_experts), int(tile_rows))


def _check_plan_buffers(plan: MoePlan, shape: PlanShape, device: torch.device) -> None:
    if not isinstance(plan, MoePlan):
        raise TypeError(f"plan: expected a MoePlan or None, got {type(plan).__name__}")
    if plan.shape != shape:
        raise ValueError(f"plan: expected a plan of shape {shape}, got one of shape {plan.shape}")
    sizes = {  # as MoePlan.empty allocates them
        "expert_counts": (max(shape.local_num_experts, 1),),
        "expert_offsets": (shape.local_num_experts + 1,),
        "expanded_idx_to_permuted_idx": (max(shape.num_pairs, 1),),
        "permuted_idx_to_expanded_idx": (max(shape.max_padded_rows, 1),),
        "tile_info": (max(shape.max_tiles, 1), 4),
        "counters": (4,),
    }
    for name, dims in sizes.items():
        t = getattr(plan, name)
        validate.check_tensor(t, f"plan.{name}", dtypes=(torch.int32,), shape=dims)
        _same_device(t, f"plan.{name}", device)


def build_plan(topk_ids: torch.Tensor, top_k: int, local_expert_offset: int, local_num_experts: int,
               tile_rows: int, plan: Optional[MoePlan] = None, *, launch: str = "auto") -> MoePlan:
    """The ``MoePlan`` of ``topk_ids [T, top_k]`` (int32 global expert ids), built on the GPU.

    Local expert ``e = id - local_expert_offset`` in ``[0, L)`` owns permuted rows
    ``[expert_offsets[e], expert_offsets[e] + expert_counts[e])`` holding its pairs ``t*K + j``
    in increasing order, padded to a multiple of ``tile_rows`` (padding rows map to -1); pairs of
    other experts map to -1; tiles ``(e, first_row, num_rows, 0)`` follow in expert order;
    ``counters = (num_tiles, rows_in_use, 0, 0)``. Equal to ``cute_moe.reference.reference_plan``
    on every specified entry.

    ``plan``: a ``MoePlan`` of the same ``PlanShape`` whose buffers are overwritten (CUDA graphs).
    ``launch``: "auto" (one CTA up to ``SINGLE_CTA_MAX_PAIRS`` pairs, chunked above), or force
    "single_cta" / "chunked"; all give the same plan.
    """
    from .kernels import plan as kplan

    if launch not in ("auto", "single_cta", "chunked"):
        raise ValueError(f"launch: expected 'auto', 'single_cta' or 'chunked', got {launch!r}")
    shape = _check_plan_args(topk_ids, top_k, local_expert_offset, local_num_experts, tile_rows)
    device = topk_ids.device
    if plan is None:
        plan = MoePlan.empty(shape, device)
    else:
        _check_plan_buffers(plan, shape, device)

    n = shape.num_pairs
    num_local = shape.local_num_experts
    max_rows = max(shape.max_padded_rows, 1)
    max_tiles = max(shape.max_tiles, 1)
    single = n <= kplan.SINGLE_CTA_MAX_PAIRS if launch == "auto" else launch == "single_cta"
    arch = runtime.arch_of_device(device)
    stream = runtime.current_stream()
    p = runtime.ptr
    ids = p(topk_ids, align=4)
    counts, offsets = p(plan.expert_counts, align=4), p(plan.expert_offsets, align=4)
    e2p, p2e = p(plan.expanded_idx_to_permuted_idx, align=4), p(plan.permuted_idx_to_expanded_idx, align=4)
    tiles, counters = p(plan.tile_info, align=4), p(plan.counters, align=4)
    off, tr = int(local_expert_offset), int(tile_rows)

    if single or n == 0:
        fn = runtime.KERNELS.get(("plan_single_cta",), arch,
                                 lambda: (kplan.PlanSingleCta(), kplan.single_cta_example_args()))
        fn(ids, counts, offsets, e2p, p2e, tiles, counters, n, off, num_local, tr, max_rows, max_tiles, stream)
        return plan

    chunk = kplan.chunk_pairs_for(n)
    num_chunks = (n + chunk - 1) // chunk
    workspace = torch.empty(num_chunks * num_local, dtype=torch.int32, device=device)
    ws = p(workspace, align=4)
    count_fn = runtime.KERNELS.get(("plan_count",), arch,
                                   lambda: (kplan.PlanCountChunks(), kplan.count_example_args()))
    scan_fn = runtime.KERNELS.get(("plan_scan",), arch, lambda: (kplan.PlanScan(), kplan.scan_example_args()))
    scatter_fn = runtime.KERNELS.get(("plan_scatter",), arch,
                                     lambda: (kplan.PlanScatterChunks(), kplan.scatter_example_args()))
    count_fn(ids, ws, n, off, num_local, num_chunks, chunk, stream)
    scan_fn(ws, counts, offsets, p2e, tiles, counters, num_local, tr, max_rows, max_tiles, num_chunks, stream)
    scatter_fn(ids, ws, offsets, e2p, p2e, n, off, num_local, max_rows, num_chunks, chunk, stream)
    return plan


# --------------------------------------------------------------------------- combine


def combine(gemm2_output: torch.Tensor, topk_weights: torch.Tensor, expanded_idx_to_permuted_idx: torch.Tensor,
            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``out[t] = bf16(sum_{j: perm[t*K+j] >= 0} w[t, j] * gemm2_output[perm[t*K+j]])``.

    ``gemm2_output`` bf16 ``[P, H]`` (``H % 8 == 0``, 16-byte aligned), ``topk_weights`` bf16 or
    float32 ``[T, K]``, ``expanded_idx_to_permuted_idx`` int32 with ``T*K`` entries (``[T*K]`` or
    ``[T, K]``; -1 = slot of another device's expert). Float32 accumulation in slot order, one
    rounding; tokens with no local slot get 0. ``out`` (bf16 ``[T, H]``) is written in place when
    given. Deterministic: bitwise identical run to run.
    """
    from .kernels.combine import CombineRows, combine_example_args

    validate.check_tensor(gemm2_output, "gemm2_output", dtypes=(torch.bfloat16,), ndim=2)
    validate.check_tensor(topk_weights, "topk_weights", dtypes=(torch.bfloat16, torch.float32), ndim=2)
    validate.check_tensor(expanded_idx_to_permuted_idx, "expanded_idx_to_permuted_idx", dtypes=(torch.int32,))
    num_tokens, top_k = topk_weights.shape
    num_rows, hidden = gemm2_output.shape
    if expanded_idx_to_permuted_idx.numel() != num_tokens * top_k:
        raise ValueError(f"expanded_idx_to_permuted_idx: expected {num_tokens} * {top_k} = "
                         f"{num_tokens * top_k} entries, got shape {tuple(expanded_idx_to_permuted_idx.shape)}")
    if hidden % 8:
        raise ValueError(f"gemm2_output: expected a hidden size that is a multiple of 8, got {hidden}")
    _require_cuda(gemm2_output, "gemm2_output")
    device = gemm2_output.device
    _same_device(topk_weights, "topk_weights", device)
    _same_device(expanded_idx_to_permuted_idx, "expanded_idx_to_permuted_idx", device)
    validate.check_aligned(gemm2_output, "gemm2_output")
    if out is None:
        out = torch.empty(num_tokens, hidden, dtype=torch.bfloat16, device=device)
    else:
        validate.check_tensor(out, "out", dtypes=(torch.bfloat16,), shape=(num_tokens, hidden))
        _same_device(out, "out", device)
        validate.check_aligned(out, "out")
    if num_tokens == 0 or hidden == 0:
        return out

    f32 = topk_weights.dtype == torch.float32
    arch = runtime.arch_of_device(device)
    fn = runtime.KERNELS.get(("combine", top_k, f32), arch,
                             lambda: (CombineRows(top_k, f32), combine_example_args(f32)))
    rows = gemm2_output if num_rows else out  # any valid 16-byte aligned address; never read
    fn(runtime.ptr(rows, align=16), runtime.ptr(topk_weights, align=topk_weights.element_size()),
       runtime.ptr(expanded_idx_to_permuted_idx, align=4), runtime.ptr(out, align=16), num_tokens,
       max(num_rows, 1), hidden // 8, runtime.current_stream())
    return out
