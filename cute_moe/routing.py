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

from dataclasses import astuple, dataclass
from typing import List, Optional, Tuple, Union

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

    spec = RouteSpec.of(method, num_experts, top_k, routing_logits.dtype,
                        None if routing_bias is None else routing_bias.dtype, n_group, topk_group,
                        norm_topk_prob, routing_replay_out is not None)
    p = runtime.ptr
    itemsize = routing_logits.element_size()
    bias_ptr = p(routing_bias, align=routing_bias.element_size()) if spec.bias_dtype else p(topk_ids, align=4)
    replay_ptr = p(routing_replay_out, align=2) if spec.replay else p(topk_ids, align=2)
    launch_route(spec.kernel(runtime.arch_of_device(device)), p(routing_logits, align=itemsize), bias_ptr,
                 p(topk_ids, align=4), p(topk_weights, align=2), replay_ptr, num_tokens,
                 1.0 if routed_scaling_factor is None else float(routed_scaling_factor), runtime.current_stream())
    return topk_ids, topk_weights


@dataclass(frozen=True)
class RouteSpec:
    """The compile-time choices of one routing kernel (its cache key), from validated arguments."""

    method: int
    num_experts: int
    top_k: int
    logits_f32: bool
    bias_dtype: Optional[str]  # "f32" / "bf16" when the method reads a bias, else None
    n_group: int
    topk_group: int
    norm: bool
    replay: bool

    @classmethod
    def of(cls, method, num_experts, top_k, logits_dtype: torch.dtype, bias_dtype: Optional[torch.dtype],
           n_group, topk_group, norm_topk_prob, replay: bool) -> "RouteSpec":
        """From validated arguments: the logits' dtype and the bias's (None without a bias)."""
        method = RoutingMethodType(int(method))
        grouped = method == RoutingMethodType.DeepSeekV3 and (n_group or 0) > 1
        ng, tg = (int(n_group), int(topk_group)) if grouped else (0, 0)
        use_bias = bias_dtype is not None and method in _METHODS_WITH_BIAS
        bias = ("f32" if bias_dtype == torch.float32 else "bf16") if use_bias else None
        norm = bool(norm_topk_prob) if method == RoutingMethodType.SigmoidRenorm else True
        return cls(int(method), int(num_experts), int(top_k), logits_dtype == torch.float32, bias, ng, tg, norm,
                   bool(replay))

    def route_topk(self):
        """The kernel object (compile-time parameters bound)."""
        from .kernels.routing import RouteTopk

        return RouteTopk(RoutingMethodType(self.method), self.num_experts, self.top_k, self.logits_f32,
                         self.bias_dtype, self.n_group, self.topk_group, self.norm, self.replay)

    def kernel(self, arch: str):
        """The launcher, compiled or loaded on first use."""
        from .kernels.routing import route_example_args

        return runtime.KERNELS.get(("route",) + astuple(self), arch, lambda: (
            self.route_topk(), route_example_args(self.logits_f32, self.bias_dtype)))


def launch_route(kernel, logits: int, bias: int, ids: int, weights: int, replay: int, num_tokens: int, scale: float,
                 stream: int) -> None:
    """Launch ``RouteSpec.kernel`` on ``num_tokens > 0`` rows; pointers are addresses (``bias`` /
    ``replay``: any aligned address when unused)."""
    kernel(logits, bias, ids, weights, replay, num_tokens, scale, stream)


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
    if launch not in ("auto", "single_cta", "chunked"):
        raise ValueError(f"launch: expected 'auto', 'single_cta' or 'chunked', got {launch!r}")
    shape = _check_plan_args(topk_ids, top_k, local_expert_offset, local_num_experts, tile_rows)
    device = topk_ids.device
    if plan is None:
        plan = MoePlan.empty(shape, device)
    else:
        _check_plan_buffers(plan, shape, device)

    workspace = torch.empty(max(plan_workspace_ints(shape, launch), 1), dtype=torch.int32, device=device)
    p = runtime.ptr
    launch_plan(plan_kernels(runtime.arch_of_device(device), plan_is_single_cta(shape, launch)), shape,
                int(local_expert_offset), p(topk_ids, align=4), PlanPointers.of(plan), p(workspace, align=4),
                runtime.current_stream())
    return plan


@dataclass(frozen=True)
class PlanPointers:
    """Addresses of a plan's buffers (int32, sized as ``MoePlan.empty`` allocates them)."""

    counts: int
    offsets: int
    e2p: int
    p2e: int
    tiles: int
    counters: int

    @classmethod
    def of(cls, plan: MoePlan) -> "PlanPointers":
        p = runtime.ptr
        return cls(p(plan.expert_counts, align=4), p(plan.expert_offsets, align=4),
                   p(plan.expanded_idx_to_permuted_idx, align=4), p(plan.permuted_idx_to_expanded_idx, align=4),
                   p(plan.tile_info, align=4), p(plan.counters, align=4))


def plan_is_single_cta(shape: PlanShape, launch: str = "auto") -> bool:
    """Whether the plan of ``shape`` runs in one CTA (``launch``: "auto" or a forced choice)."""
    from .kernels import plan as kplan

    n = shape.num_pairs
    return n == 0 or (n <= kplan.SINGLE_CTA_MAX_PAIRS if launch == "auto" else launch == "single_cta")


def plan_workspace_ints(shape: PlanShape, launch: str = "auto") -> int:
    """int32 scratch the chunked plan needs (0 for the single-CTA plan)."""
    from .kernels import plan as kplan

    if plan_is_single_cta(shape, launch):
        return 0
    n = shape.num_pairs
    return -(-n // kplan.chunk_pairs_for(n)) * shape.local_num_experts


_PLAN_KERNELS = {  # name -> (kernel class, example-args factory), in cute_moe.kernels.plan
    "single_cta": ("PlanSingleCta", "single_cta_example_args"),
    "count": ("PlanCountChunks", "count_example_args"),
    "scan": ("PlanScan", "scan_example_args"),
    "scatter": ("PlanScatterChunks", "scatter_example_args"),
}
PlanSource = Union[str, "RouteSpec"]  # where the one-CTA plan takes its ids: "ids", "packed" or routing


def plan_kernel(arch: str, name: str, source: PlanSource = "ids"):
    """One plan kernel's launcher: ``name`` in "single_cta", "count", "scan", "scatter";
    ``source`` (single_cta only): "ids", "packed" or the RouteSpec of the routing it folds in."""
    from .kernels import plan as kplan

    cls, args = _PLAN_KERNELS[name]
    if name != "single_cta":
        return runtime.KERNELS.get((f"plan_{name}",), arch, lambda: (getattr(kplan, cls)(), getattr(kplan, args)()))
    key = (source,) if isinstance(source, str) else ("route",) + astuple(source)

    def build():
        src = source if isinstance(source, str) else source.route_topk()
        return kplan.PlanSingleCta(src), kplan.single_cta_example_args(src)

    return runtime.KERNELS.get(("plan_single_cta",) + key, arch, build)


def plan_kernels(arch: str, single_cta: bool, source: PlanSource = "ids") -> List:
    """The plan's launchers: ``[single]`` (from ``source``) or ``[count, scan, scatter]`` (from ids)."""
    if single_cta:
        return [plan_kernel(arch, "single_cta", source)]
    return [plan_kernel(arch, n) for n in ("count", "scan", "scatter")]


def fused_plan_source(shape: PlanShape, route: Optional["RouteSpec"], packed: bool) -> PlanSource:
    """What the one-CTA plan of a fused call folds in: the routing (``route``, at most
    ``FUSED_ROUTE_MAX_TOKENS`` tokens), the unpacking of packed pairs, or nothing ("ids": the
    routing or unpacking runs as its own launch, or the caller passed ids)."""
    from .kernels import plan as kplan

    if not plan_is_single_cta(shape):
        return "ids"
    if route is not None:
        return route if shape.num_tokens <= kplan.FUSED_ROUTE_MAX_TOKENS else "ids"
    return "packed" if packed else "ids"


@dataclass(frozen=True)
class PlanFront:
    """Addresses of a folded-in routing or unpacking (``PlanSingleCta``'s source other than
    ids): its input (logits or packed pairs), the bias, the outputs' ids / weights / replay ids."""

    src: int
    bias: int
    weights: int
    replay: int
    scale: float = 1.0


@dataclass(frozen=True)
class PlanPrefetch:
    """Weights the one-CTA plan's extra CTAs move into L2 while it runs (kernels/l2_prefetch.py):
    the first ``share`` bytes of each routed pair's expert, FC1's (``w1``, ``fc1_bytes`` per
    local expert) then FC2's, spread over ``ctas`` CTAs."""

    w1: int
    w2: int
    fc1_bytes: int
    fc2_bytes: int
    share: int
    ctas: int


NO_PREFETCH = PlanPrefetch(0, 0, 0, 0, 0, 0)  # no extra CTAs (the plan's CTA reads none of it)


# A decode call's plan runs ~4.4 us before FC1 streams (H100, qwen3-30b-a3b T=1), DRAM idle:
# PREFETCH_CTAS more CTAs of the plan's launch move PREFETCH_BUDGET bytes of the routed experts'
# weights into L2 meanwhile. Measured (one H100, A/B in one session): qwen3-30b-a3b T=1 -1.1 us
# (bf16, 75 MB streamed) and -0.4 to -1.2 us (MXINT4, 20 MB), but gpt-oss-120b T=1 (200 MB) +1.2
# to +1.7 us and T=8 points within noise, hence the bound on the streamed bytes; budgets of 4 and
# 16 MB and 128 CTAs gave the same gains (docs/gemm_notes.md).
PREFETCH_BUDGET = 8 << 20
PREFETCH_CTAS = 32
PREFETCH_MAX_PAIRS = 64
PREFETCH_MAX_STREAM = 96 << 20  # routed pairs x expert bytes


def plan_prefetch(shape: PlanShape, w1: int, w2: int, fc1_bytes: int, fc2_bytes: int) -> Optional[PlanPrefetch]:
    """The L2 prefetch of a decode call's one-CTA plan, or None where it did not pay: more than
    ``PREFETCH_MAX_PAIRS`` pairs or ``PREFETCH_MAX_STREAM`` bytes of routed experts."""
    from .kernels.l2_prefetch import PREFETCH_CHUNK

    n = shape.num_pairs
    if n == 0 or n > PREFETCH_MAX_PAIRS or n * (fc1_bytes + fc2_bytes) > PREFETCH_MAX_STREAM:
        return None
    share = max(PREFETCH_BUDGET // n // PREFETCH_CHUNK, 1) * PREFETCH_CHUNK
    return PlanPrefetch(w1, w2, fc1_bytes, fc2_bytes, share, PREFETCH_CTAS)


def launch_plan(kernels: List, shape: PlanShape, local_expert_offset: int, topk_ids: int, plan: PlanPointers,
                workspace: int, stream: int, use_pdl: bool = False, front: Optional[PlanFront] = None,
                prefetch: Optional[PlanPrefetch] = None) -> None:
    """Launch ``plan_kernels`` for ``shape`` (one CTA: ``[single]``, chunked: ``[count, scan,
    scatter]`` with ``plan_workspace_ints`` int32 of ``workspace``). ``use_pdl``: the one-CTA
    plan launches as a programmatic dependent of the previous kernel (it waits for it at its
    start). ``front``: the inputs of the routing or unpacking a one-CTA plan folds in (it then
    writes ``topk_ids``). ``prefetch``: weights the one-CTA plan moves into L2."""
    from .kernels import plan as kplan

    n, num_local, tr = shape.num_pairs, shape.local_num_experts, shape.tile_rows
    max_rows, max_tiles = max(shape.max_padded_rows, 1), max(shape.max_tiles, 1)
    if (front is not None or prefetch is not None) and (len(kernels) != 1 or n > kplan.SINGLE_CTA_MAX_PAIRS):
        raise ValueError(f"a plan that routes, unpacks or prefetches runs in one CTA of at most "
                         f"{kplan.SINGLE_CTA_MAX_PAIRS} pairs, got {n} pairs on {len(kernels)} kernels")
    if len(kernels) == 1:
        f = front or PlanFront(topk_ids, topk_ids, topk_ids, topk_ids)
        pf = prefetch or NO_PREFETCH
        kernels[0](f.src, f.bias, topk_ids, f.weights, f.replay, plan.counts, plan.offsets, plan.e2p, plan.p2e,
                   plan.tiles, plan.counters, n, local_expert_offset, num_local, tr, max_rows, max_tiles, f.scale,
                   pf.w1, pf.w2, pf.fc1_bytes, pf.fc2_bytes, pf.share, pf.ctas, int(use_pdl), stream)
        return
    chunk = kplan.chunk_pairs_for(n)
    num_chunks = (n + chunk - 1) // chunk
    count_fn, scan_fn, scatter_fn = kernels
    count_fn(topk_ids, workspace, n, local_expert_offset, num_local, num_chunks, chunk, stream)
    scan_fn(workspace, plan.counts, plan.offsets, plan.p2e, plan.tiles, plan.counters, num_local, tr, max_rows,
            max_tiles, num_chunks, stream)
    scatter_fn(topk_ids, workspace, plan.offsets, plan.e2p, plan.p2e, n, local_expert_offset, num_local, max_rows,
               num_chunks, chunk, stream)


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

    rows = gemm2_output if num_rows else out  # any valid 16-byte aligned address; never read
    launch_combine(combine_kernel(runtime.arch_of_device(device), top_k, topk_weights.dtype == torch.float32),
                   runtime.ptr(rows, align=16), runtime.ptr(topk_weights, align=topk_weights.element_size()),
                   runtime.ptr(expanded_idx_to_permuted_idx, align=4), runtime.ptr(out, align=16), num_tokens,
                   num_rows, hidden, runtime.current_stream())
    return out


def combine_kernel(arch: str, top_k: int, weights_f32: bool):
    from .kernels.combine import CombineRows, combine_example_args

    return runtime.KERNELS.get(("combine", top_k, weights_f32), arch,
                               lambda: (CombineRows(top_k, weights_f32), combine_example_args(weights_f32)))


def launch_combine(kernel, rows: int, weights: int, perm: int, out: int, num_tokens: int, num_rows: int,
                   hidden: int, stream: int, use_pdl: bool = False) -> None:
    """Launch ``combine_kernel`` on ``num_tokens > 0`` tokens of ``hidden % 8 == 0`` columns
    (``use_pdl``: as a programmatic dependent of the previous kernel, FC2)."""
    kernel(rows, weights, perm, out, num_tokens, max(num_rows, 1), hidden // 8, int(use_pdl), stream)
