"""Float reference MoE: the oracle every fused-MoE test compares against.

``reference_plan`` builds the ``MoePlan`` of docs/internals.md on the host side of the test.
``reference_moe_canonical`` runs the MoE on canonical (unprepared) weights; the
``reference_trtllm_*`` functions take the same arguments as the public entry points (prepared
weights) and return the same structures. Numerics, per routed (token t, slot j) pair of a local
expert e (``L`` = local_num_experts, ``I`` = intermediate size):

    h   = hidden[t] @ w1[e]^T  (+ gemm1_lora_delta[t, j])       [M]; FC1 rows are [up; gate]
    act = silu(gate) * up                                       Swiglu, no alpha/beta/limit given
        = gate * sigmoid(alpha_e * gate) * (up + beta_e)        Swiglu with any of them given, after
          with up = clamp(up, -limit_e, limit_e),               (alpha 1, beta 0, no clamp by default)
               gate = min(gate, limit_e)
        = relu(h)^2                                             Relu2 (M = I)
    act -> bf16                                                 gemm1_output row [I]
    y   = act @ w2[e]^T -> bf16                                 gemm2_output row [H]
    out[t] = bf16( sum_j w[t, j] * y_(t, j) )                   float32, slots j = 0..K-1 in order,
                                                                one fused multiply-add per slot

Products and the activation run in ``compute_dtype`` (float32 by default, float64 for an
error-free baseline); non-local experts contribute nothing. Routing weights enter the combine as
given: bf16 when they come from logits or packed routing (FlashInfer stores them in bf16), float32
when an (ids, float32 weights) pair is passed, as FlashInfer's finalize reads that buffer as is.
``routed_scaling_factor`` acts only inside DeepSeekV3 / MiniMax2 routing, never here.

Rows past each expert's routed count and past ``rows_in_use`` of ``gemm1_output`` /
``gemm2_output`` are zero here and unspecified in the kernels: compare through
``expanded_idx_to_permuted_idx``.

The ``reference_trtllm_*`` functions return (T tokens, K = top_k, H hidden, I intermediate):

=============  ======  =========================================================================
do_finalize    LoRA    returned
=============  ======  =========================================================================
True           no      ``output [T, H] bf16`` (bf16 entries: the tensor; mxint4 entries: ``[output]``)
True           yes     ``[output, expanded_idx_to_permuted_idx, gemm1_output]``
False          no      ``[gemm2_output, expert_weights, expanded_idx_to_permuted_idx]``
False          yes     the three above + ``gemm1_output``
=============  ======  =========================================================================

* ``output [T, H]`` bf16, the caller's ``output`` tensor when one is given;
* ``gemm2_output [P, H]`` bf16 and ``gemm1_output [P, I]`` bf16 (post-activation), permuted rows;
* ``expert_weights [T, K]``: bf16 from logits or packed routing, the caller's own tensor for an
  ``(ids, weights)`` pair (bf16 or float32);
* ``expanded_idx_to_permuted_idx [T * K]`` int32, -1 for experts that are not local.

Here ``P = PlanShape(T, K, local_num_experts, tile_rows).max_padded_rows``. FlashInfer allocates
``max(maxPadded(T, K, num_experts, tile), ceil(2**20 / (16 * width)))`` rows instead (its tile
choice, all experts, and at least 128 KiB per buffer), so row counts differ and rows are reached
through the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .enums import ActivationType, SUPPORTED_ACTIVATIONS, WeightLayout, is_gated_activation
from .plan import COUNTER_FIELDS, RASTER_TILES, TILE_INFO_FIELDS, MoePlan, PlanShape
from .routing_ref import expert_weights_bf16, route_reference, unpack_topk_reference

DEFAULT_TILE_ROWS = 8

# --------------------------------------------------------------------------- plan


def reference_plan(topk_ids: torch.Tensor, top_k: int, local_expert_offset: int, local_num_experts: int,
                   tile_rows: int) -> MoePlan:
    """The MoePlan of ``topk_ids [T, top_k]`` (global ids) on the ids' device.

    Local expert ``e = id - local_expert_offset`` in ``[0, L)`` owns the permuted rows
    ``[expert_offsets[e], expert_offsets[e] + expert_counts[e])``, its (token, slot) pairs in
    increasing ``t * top_k + j`` order, then padding up to a multiple of ``tile_rows``. Tiles
    follow in expert order, then row order: ``(e, first_row, min(tile_rows, rows left), 0)``.
    Unspecified entries are filled deterministically: -1 in both maps, 0 in ``tile_info``.
    """
    if not isinstance(topk_ids, torch.Tensor) or topk_ids.dim() != 2 or topk_ids.shape[1] != top_k:
        got = tuple(topk_ids.shape) if isinstance(topk_ids, torch.Tensor) else type(topk_ids).__name__
        raise ValueError(f"topk_ids: expected shape [num_tokens, {top_k}], got {got}")
    if topk_ids.dtype.is_floating_point or topk_ids.dtype == torch.bool:
        raise TypeError(f"topk_ids: expected an integer dtype, got {topk_ids.dtype}")
    shape = PlanShape(int(topk_ids.shape[0]), int(top_k), int(local_num_experts), int(tile_rows))
    dev = topk_ids.device
    n_local, rows = shape.local_num_experts, shape.tile_rows
    plan = MoePlan.empty(shape, dev)

    local = topk_ids.reshape(-1).long() - int(local_expert_offset)
    is_local = (local >= 0) & (local < n_local)
    bucket = torch.where(is_local, local, torch.full_like(local, n_local))  # non-local pairs sort last
    order = torch.sort(bucket, stable=True).indices
    counts = torch.bincount(bucket, minlength=n_local + 1)[:n_local]
    padded = (counts + rows - 1) // rows * rows
    offsets = _exclusive_cumsum(padded)
    sorted_starts = _exclusive_cumsum(counts)

    sorted_bucket = bucket[order]
    in_local = sorted_bucket < n_local
    rank = torch.arange(order.numel(), device=dev) - sorted_starts[sorted_bucket]
    perm = torch.full((shape.num_pairs,), -1, dtype=torch.int64, device=dev)
    perm[order[in_local]] = offsets[sorted_bucket[in_local]] + rank[in_local]

    inverse = torch.full((plan.permuted_idx_to_expanded_idx.numel(),), -1, dtype=torch.int64, device=dev)
    local_pairs = torch.nonzero(is_local).reshape(-1)
    inverse[perm[local_pairs]] = local_pairs

    tiles_per_expert = (counts + rows - 1) // rows
    tile_expert = torch.repeat_interleave(torch.arange(n_local, device=dev), tiles_per_expert)
    num_tiles = int(tile_expert.numel())
    if num_tiles > shape.max_tiles:  # the PlanShape bound is a theorem; a violation is a bug here
        raise AssertionError(f"{num_tiles} tiles exceed the bound {shape.max_tiles}")
    tile_in_expert = torch.arange(num_tiles, device=dev) - torch.repeat_interleave(
        _exclusive_cumsum(tiles_per_expert)[:-1], tiles_per_expert)
    first_row = offsets[tile_expert] + tile_in_expert * rows
    num_rows = torch.clamp(counts[tile_expert] - tile_in_expert * rows, max=rows)
    group_first = torch.arange(num_tiles, device=dev) - tile_in_expert % RASTER_TILES
    group_tiles = torch.clamp(tiles_per_expert[tile_expert] - tile_in_expert // RASTER_TILES * RASTER_TILES,
                              max=RASTER_TILES)
    raster_group = group_first * RASTER_TILES + group_tiles - 1

    plan.expert_counts.copy_(counts)
    plan.expert_offsets.copy_(offsets)
    plan.expanded_idx_to_permuted_idx.copy_(_pad_to(perm, plan.expanded_idx_to_permuted_idx.numel(), -1))
    plan.permuted_idx_to_expanded_idx.copy_(inverse)
    plan.tile_info.zero_()
    if num_tiles:
        plan.tile_info[:num_tiles] = torch.stack(
            [tile_expert, first_row, num_rows, raster_group], dim=1).int()
    counters = [num_tiles, int(offsets[-1])] + [0] * (COUNTER_FIELDS - 2)
    plan.counters.copy_(torch.tensor(counters, dtype=torch.int32))
    return plan


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.numel() + 1, dtype=torch.int64, device=x.device)
    out[1:] = torch.cumsum(x.long(), dim=0)
    return out


def _pad_to(x: torch.Tensor, n: int, fill: int) -> torch.Tensor:
    if x.numel() == n:
        return x
    return torch.cat([x, torch.full((n - x.numel(),), fill, dtype=x.dtype, device=x.device)])


def plan_specified_parts(plan: MoePlan) -> Dict[str, torch.Tensor]:
    """The entries of a plan that docs/internals.md specifies, as CPU int32 tensors.

    Two correct plans of the same routing are equal on these (reading them synchronizes).
    """
    s = plan.shape
    num_tiles, rows_in_use = (int(v) for v in plan.counters[:2].cpu())
    return {
        "expert_counts": plan.expert_counts[: s.local_num_experts].cpu(),
        "expert_offsets": plan.expert_offsets[: s.local_num_experts + 1].cpu(),
        "expanded_idx_to_permuted_idx": plan.expanded_idx_to_permuted_idx[: s.num_pairs].cpu(),
        "permuted_idx_to_expanded_idx": plan.permuted_idx_to_expanded_idx[:rows_in_use].cpu(),
        "tile_info": plan.tile_info[:num_tiles].reshape(num_tiles, TILE_INFO_FIELDS).cpu(),
        "counters": plan.counters[:2].cpu(),
    }


# --------------------------------------------------------------------------- numerics pieces


def apply_activation(h: torch.Tensor, activation_type, gemm1_alpha: Optional[torch.Tensor] = None,
                     gemm1_beta: Optional[torch.Tensor] = None,
                     gemm1_clamp_limit: Optional[torch.Tensor] = None) -> torch.Tensor:
    """FC1 activation of ``h [..., M]`` in h's dtype (formulas in the module docstring).

    ``gemm1_alpha`` / ``gemm1_beta`` / ``gemm1_clamp_limit`` broadcast against ``[..., M/2]``.
    """
    act = ActivationType(int(activation_type))
    given = any(v is not None for v in (gemm1_alpha, gemm1_beta, gemm1_clamp_limit))
    if act == ActivationType.Relu2:
        if given:
            raise ValueError("gemm1_alpha, gemm1_beta and gemm1_clamp_limit apply to Swiglu only")
        r = torch.relu(h)
        return r * r
    if act != ActivationType.Swiglu:
        raise ValueError(f"activation_type: expected one of {[a.name for a in SUPPORTED_ACTIVATIONS]}, "
                         f"got {act.name}")
    i = h.shape[-1] // 2
    up, gate = h[..., :i], h[..., i:]
    if not given:
        return F.silu(gate) * up
    if gemm1_clamp_limit is not None:
        up = torch.minimum(torch.maximum(up, -gemm1_clamp_limit), gemm1_clamp_limit)
        gate = torch.minimum(gate, gemm1_clamp_limit)
    alpha = 1.0 if gemm1_alpha is None else gemm1_alpha
    beta = 0.0 if gemm1_beta is None else gemm1_beta
    return gate * torch.sigmoid(alpha * gate) * (up + beta)


def combine_reference(gemm2_output: torch.Tensor, expert_weights: torch.Tensor,
                      expanded_idx_to_permuted_idx: torch.Tensor, top_k: int) -> torch.Tensor:
    """float32 ``[T, H]``: ``acc = fma(w[t, j], gemm2_output[perm[t*K + j]], acc)`` for j = 0..K-1,
    skipping slots whose permuted index is -1 (non-local experts)."""
    t = expert_weights.shape[0]
    h = gemm2_output.shape[1]
    perm = expanded_idx_to_permuted_idx.reshape(-1)[: t * top_k].reshape(t, top_k).long()
    # One zero row past the end stands in for the skipped slots, so gathers stay in range.
    rows = torch.cat([gemm2_output.double(), gemm2_output.new_zeros(1, h, dtype=torch.float64)])
    weights = expert_weights.double()
    acc = torch.zeros(t, h, dtype=torch.float32, device=gemm2_output.device)
    for j in range(top_k):
        p = perm[:, j]
        valid = (p >= 0).unsqueeze(-1)
        y = rows[torch.where(p >= 0, p, rows.shape[0] - 1)]
        # float64 holds w * y exactly (bf16 x float32), so one float32 rounding = a float32 fma.
        acc = torch.where(valid, (acc.double() + weights[:, j : j + 1] * y).float(), acc)
    return acc


def finalize_from_unfinalized(gemm2_output: torch.Tensor, expert_weights: torch.Tensor,
                              expanded_idx_to_permuted_idx: torch.Tensor, top_k: int) -> torch.Tensor:
    """Recombine a ``do_finalize=False`` result into the finalized bf16 output ``[T, H]``."""
    return combine_reference(gemm2_output, expert_weights, expanded_idx_to_permuted_idx, top_k).to(torch.bfloat16)


# --------------------------------------------------------------------------- canonical reference


@dataclass
class ReferenceMoe:
    output: torch.Tensor  # [T, H] bf16
    output_f32: torch.Tensor  # [T, H] float32, before the final rounding
    gemm1_output: torch.Tensor  # [P, I] bf16, post-activation, permuted rows
    gemm2_output: torch.Tensor  # [P, H] bf16, permuted rows
    expert_weights: torch.Tensor  # [T, K], the weights the combine used (caller's tensor)
    expanded_idx_to_permuted_idx: torch.Tensor  # [T * K] int32, -1 for non-local experts
    plan: MoePlan


def _per_expert(v: Optional[torch.Tensor], name: str, n_local: int, cd, dev) -> Optional[torch.Tensor]:
    if v is None:
        return None
    if v.dim() != 1 or v.shape[0] < n_local:
        raise ValueError(f"{name}: expected a 1-D tensor of at least local_num_experts ({n_local}) "
                         f"values, got shape {tuple(v.shape)}")
    return v.to(device=dev, dtype=cd)


def reference_moe_canonical(hidden_states: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                            w1: torch.Tensor, w2: torch.Tensor, activation_type, local_expert_offset: int,
                            local_num_experts: int, gemm1_alpha: Optional[torch.Tensor] = None,
                            gemm1_beta: Optional[torch.Tensor] = None,
                            gemm1_clamp_limit: Optional[torch.Tensor] = None,
                            gemm1_lora_delta: Optional[torch.Tensor] = None, *,
                            tile_rows: int = DEFAULT_TILE_ROWS,
                            compute_dtype: torch.dtype = torch.float32) -> ReferenceMoe:
    """MoE on canonical weights (formulas in the module docstring).

    ``hidden_states [T, H]``, ``topk_ids [T, K]`` global expert ids, ``topk_weights [T, K]``
    (bf16 or float32, used as given), ``w1 [>= L, M, H]`` with rows ``[up; gate]`` (M = 2I) or
    ``M = I`` for Relu2, ``w2 [>= L, H, I]``, row e of both = local expert e. ``gemm1_alpha``,
    ``gemm1_beta``, ``gemm1_clamp_limit``: per local expert. ``gemm1_lora_delta [T, K, M]`` in
    the FC1 row order ``[up; gate]``, added to FC1 before the activation.
    """
    t, h = hidden_states.shape
    k = topk_ids.shape[1]
    act = ActivationType(int(activation_type))
    n_local = int(local_num_experts)
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(f"topk_weights: expected shape {tuple(topk_ids.shape)}, got {tuple(topk_weights.shape)}")
    if topk_ids.shape[0] != t:
        raise ValueError(f"topk_ids: expected {t} rows (one per token), got {topk_ids.shape[0]}")
    if w1.dim() != 3 or w2.dim() != 3 or w1.shape[0] < n_local or w2.shape[0] < n_local:
        raise ValueError(f"w1, w2: expected [>= {n_local}, M, {h}] and [>= {n_local}, {h}, I], got "
                         f"{tuple(w1.shape)} and {tuple(w2.shape)}")
    inter = w2.shape[2]
    m = 2 * inter if is_gated_activation(act) else inter
    if tuple(w1.shape[1:]) != (m, h) or w2.shape[1] != h:
        raise ValueError(f"w1, w2: expected [*, {m}, {h}] and [*, {h}, {inter}] for {act.name}, got "
                         f"{tuple(w1.shape)} and {tuple(w2.shape)}")
    if gemm1_lora_delta is not None and tuple(gemm1_lora_delta.shape) != (t, k, m):
        raise ValueError(f"gemm1_lora_delta: expected shape [{t}, {k}, {m}], got {tuple(gemm1_lora_delta.shape)}")

    dev, cd = hidden_states.device, compute_dtype
    alpha = _per_expert(gemm1_alpha, "gemm1_alpha", n_local, cd, dev)
    beta = _per_expert(gemm1_beta, "gemm1_beta", n_local, cd, dev)
    limit = _per_expert(gemm1_clamp_limit, "gemm1_clamp_limit", n_local, cd, dev)

    plan = reference_plan(topk_ids.to(dev), k, local_expert_offset, n_local, tile_rows)
    p_rows = plan.shape.max_padded_rows
    perm = plan.expanded_idx_to_permuted_idx[: t * k]
    gemm1_output = torch.zeros(p_rows, inter, dtype=torch.bfloat16, device=dev)
    gemm2_output = torch.zeros(p_rows, h, dtype=torch.bfloat16, device=dev)
    x = hidden_states.to(cd)
    delta = None if gemm1_lora_delta is None else gemm1_lora_delta.reshape(t * k, m)

    counts = plan.expert_counts[:n_local].tolist()
    offsets = plan.expert_offsets.tolist()
    for e, count in enumerate(counts):
        if count == 0:
            continue
        rows = torch.arange(offsets[e], offsets[e] + count, device=dev)
        pairs = plan.permuted_idx_to_expanded_idx[rows].long()
        h1 = x[pairs // k] @ w1[e].to(device=dev, dtype=cd).T
        if delta is not None:
            h1 = h1 + delta[pairs].to(device=dev, dtype=cd)
        a = apply_activation(h1, act, *(None if v is None else v[e] for v in (alpha, beta, limit)))
        a = a.to(torch.bfloat16)
        y = (a.to(cd) @ w2[e].to(device=dev, dtype=cd).T).to(torch.bfloat16)
        gemm1_output[rows] = a
        gemm2_output[rows] = y

    out_f32 = combine_reference(gemm2_output, topk_weights.to(dev), perm, k)
    return ReferenceMoe(output=out_f32.to(torch.bfloat16), output_f32=out_f32, gemm1_output=gemm1_output,
                        gemm2_output=gemm2_output, expert_weights=topk_weights,
                        expanded_idx_to_permuted_idx=perm.clone(), plan=plan)


# --------------------------------------------------------------------------- prepared weights


def _canonical_bf16_weights(gemm1_weights: torch.Tensor, gemm2_weights: torch.Tensor,
                            activation_type) -> Tuple[torch.Tensor, torch.Tensor]:
    from .prepare import unprepare_bf16_moe_weights

    return unprepare_bf16_moe_weights(gemm1_weights, gemm2_weights, activation_type)


def _canonical_mxint4_weights(gemm1_weights, gemm1_weights_scale, gemm2_weights,
                              gemm2_weights_scale) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dequantized canonical weights: FC1 ``[E, 2I, H]``, FC2 ``[E, H, I]``, value = int4 x bf16 scale
    (exact in float32)."""
    from .prepare import dequantize_mxint4, unprepare_mxint4_moe_weights

    q1, s1, q2, s2 = unprepare_mxint4_moe_weights(gemm1_weights, gemm1_weights_scale, gemm2_weights,
                                                  gemm2_weights_scale)
    return dequantize_mxint4(q1, s1).float(), dequantize_mxint4(q2, s2).float()


def _check_sizes(w1: torch.Tensor, w2: torch.Tensor, hidden_states: torch.Tensor, intermediate_size: int,
                 activation_type) -> None:
    gated = is_gated_activation(activation_type)
    want1 = (2 if gated else 1) * intermediate_size
    if w1.shape[1] != want1 or w2.shape[2] != intermediate_size or w1.shape[2] != hidden_states.shape[1]:
        raise ValueError(
            f"weights: expected FC1 [E, {want1}, {hidden_states.shape[1]}] and FC2 [E, "
            f"{hidden_states.shape[1]}, {intermediate_size}] (intermediate_size={intermediate_size}), got "
            f"{tuple(w1.shape)} and {tuple(w2.shape)}")


def _write_replay(routing_replay_out: Optional[torch.Tensor], topk_ids: torch.Tensor) -> None:
    if routing_replay_out is not None:
        routing_replay_out[: topk_ids.shape[0]].copy_(topk_ids.to(routing_replay_out.dtype))


def _entry_result(res: ReferenceMoe, do_finalize: bool, with_lora: bool, output: Optional[torch.Tensor],
                  bare_output: bool) -> Union[torch.Tensor, List[torch.Tensor]]:
    if do_finalize:
        out = res.output if output is None else output.copy_(res.output)
        if with_lora:
            return [out, res.expanded_idx_to_permuted_idx, res.gemm1_output]
        return out if bare_output else [out]
    result = [res.gemm2_output, res.expert_weights, res.expanded_idx_to_permuted_idx]
    return result + [res.gemm1_output] if with_lora else result


def _check_hidden(hidden_states: torch.Tensor) -> None:
    if hidden_states.dtype != torch.bfloat16 or hidden_states.dim() != 2:
        raise ValueError(f"hidden_states: expected a 2-D bfloat16 tensor, got {hidden_states.dtype} "
                         f"{tuple(hidden_states.shape)}")


def _check_logits(routing_logits: torch.Tensor, hidden_states: torch.Tensor, num_experts: int) -> None:
    if tuple(routing_logits.shape) != (hidden_states.shape[0], num_experts):
        raise ValueError(f"routing_logits: expected shape [{hidden_states.shape[0]}, {num_experts}], got "
                         f"{tuple(routing_logits.shape)}")


def _check_bf16_layout(use_shuffled_weight: bool, weight_layout) -> None:
    if not use_shuffled_weight or int(weight_layout) != WeightLayout.BlockMajorK:
        raise ValueError("bf16 MoE weights: expected use_shuffled_weight=True and weight_layout=BlockMajorK, "
                         f"got {use_shuffled_weight} and {int(weight_layout)}")


# --------------------------------------------------------------------------- entry equivalents
#
# Same arguments as the public entry points (cute_moe.moe / FlashInfer), plus keyword-only
# ``tile_rows`` (padding of the permuted outputs) and ``compute_dtype``; returns as in the module
# docstring.


def reference_trtllm_bf16_moe(
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
    tile_rows: int = DEFAULT_TILE_ROWS,
    compute_dtype: torch.dtype = torch.float32,
) -> Union[torch.Tensor, List[torch.Tensor]]:
    """Reference of ``trtllm_bf16_moe``: route_reference, weights rounded to bf16, canonical MoE."""
    _check_hidden(hidden_states)
    _check_logits(routing_logits, hidden_states, num_experts)
    _check_bf16_layout(use_shuffled_weight, weight_layout)
    ids, weights = route_reference(routing_logits, routing_bias, top_k, routing_method_type, n_group=n_group,
                                   topk_group=topk_group, routed_scaling_factor=routed_scaling_factor,
                                   norm_topk_prob=norm_topk_prob)
    _write_replay(routing_replay_out, ids)
    w1, w2 = _canonical_bf16_weights(gemm1_weights, gemm2_weights, activation_type)
    _check_sizes(w1, w2, hidden_states, intermediate_size, activation_type)
    res = reference_moe_canonical(hidden_states, ids, expert_weights_bf16(weights), w1, w2, activation_type,
                                  local_expert_offset, local_num_experts, gemm1_alpha, gemm1_beta,
                                  gemm1_clamp_limit, tile_rows=tile_rows, compute_dtype=compute_dtype)
    return _entry_result(res, do_finalize, False, output, bare_output=True)


def _routed_ids_weights(topk_ids, top_k: int, num_tokens: int):
    if isinstance(topk_ids, tuple):
        if len(topk_ids) != 2:
            raise ValueError(f"topk_ids: expected a packed tensor or an (ids, weights) pair, got a tuple "
                             f"of {len(topk_ids)}")
        ids, weights = topk_ids
        if weights.dtype not in (torch.bfloat16, torch.float32):
            raise TypeError(f"topk_weights: expected dtype bfloat16 or float32, got {weights.dtype}")
    else:
        ids, weights = unpack_topk_reference(topk_ids)
    if tuple(ids.shape) != (num_tokens, top_k) or tuple(weights.shape) != (num_tokens, top_k):
        raise ValueError(f"topk_ids: expected [{num_tokens}, {top_k}] ids and weights, got "
                         f"{tuple(ids.shape)} and {tuple(weights.shape)}")
    return ids, weights


def reference_trtllm_bf16_routed_moe(
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
    tile_rows: int = DEFAULT_TILE_ROWS,
    compute_dtype: torch.dtype = torch.float32,
) -> Union[torch.Tensor, List[torch.Tensor]]:
    """Reference of ``trtllm_bf16_routed_moe`` (packed int32 routing or an (ids, weights) pair)."""
    _check_hidden(hidden_states)
    _check_bf16_layout(use_shuffled_weight, weight_layout)
    ids, weights = _routed_ids_weights(topk_ids, top_k, hidden_states.shape[0])
    _write_replay(routing_replay_out, ids)
    w1, w2 = _canonical_bf16_weights(gemm1_weights, gemm2_weights, activation_type)
    _check_sizes(w1, w2, hidden_states, intermediate_size, activation_type)
    res = reference_moe_canonical(hidden_states, ids, weights, w1, w2, activation_type, local_expert_offset,
                                  local_num_experts, gemm1_alpha, gemm1_beta, gemm1_clamp_limit,
                                  gemm1_lora_delta, tile_rows=tile_rows, compute_dtype=compute_dtype)
    return _entry_result(res, do_finalize, gemm1_lora_delta is not None, output, bare_output=True)


def reference_trtllm_mxint4_block_scale_moe(
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
    tile_rows: int = DEFAULT_TILE_ROWS,
    compute_dtype: torch.dtype = torch.float32,
) -> List[torch.Tensor]:
    """Reference of ``trtllm_mxint4_block_scale_moe`` (Swiglu, dequantized weights)."""
    _check_hidden(hidden_states)
    _check_logits(routing_logits, hidden_states, num_experts)
    ids, weights = route_reference(routing_logits, routing_bias, top_k, routing_method_type, n_group=n_group,
                                   topk_group=topk_group, routed_scaling_factor=routed_scaling_factor,
                                   norm_topk_prob=norm_topk_prob)
    _write_replay(routing_replay_out, ids)
    w1, w2 = _canonical_mxint4_weights(gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale)
    _check_sizes(w1, w2, hidden_states, intermediate_size, ActivationType.Swiglu)
    res = reference_moe_canonical(hidden_states, ids, expert_weights_bf16(weights), w1, w2,
                                  ActivationType.Swiglu, local_expert_offset, local_num_experts, gemm1_alpha,
                                  gemm1_beta, gemm1_clamp_limit, tile_rows=tile_rows,
                                  compute_dtype=compute_dtype)
    return _entry_result(res, do_finalize, False, output, bare_output=False)


def reference_trtllm_mxint4_block_scale_routed_moe(
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
    tile_rows: int = DEFAULT_TILE_ROWS,
    compute_dtype: torch.dtype = torch.float32,
) -> List[torch.Tensor]:
    """Reference of ``trtllm_mxint4_block_scale_routed_moe`` (packed int32 routing)."""
    _check_hidden(hidden_states)
    if isinstance(topk_ids, tuple):
        raise TypeError("topk_ids: the mxint4 routed entry takes packed int32 routing only")
    ids, weights = _routed_ids_weights(topk_ids, top_k, hidden_states.shape[0])
    w1, w2 = _canonical_mxint4_weights(gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale)
    _check_sizes(w1, w2, hidden_states, intermediate_size, ActivationType.Swiglu)
    res = reference_moe_canonical(hidden_states, ids, weights, w1, w2, ActivationType.Swiglu,
                                  local_expert_offset, local_num_experts, gemm1_alpha, gemm1_beta,
                                  gemm1_clamp_limit, gemm1_lora_delta, tile_rows=tile_rows,
                                  compute_dtype=compute_dtype)
    return _entry_result(res, do_finalize, gemm1_lora_delta is not None, output, bare_output=False)


__all__ = [
    "DEFAULT_TILE_ROWS", "ReferenceMoe", "apply_activation", "combine_reference", "finalize_from_unfinalized",
    "plan_specified_parts", "reference_moe_canonical", "reference_plan", "reference_trtllm_bf16_moe",
    "reference_trtllm_bf16_routed_moe", "reference_trtllm_mxint4_block_scale_moe",
    "reference_trtllm_mxint4_block_scale_routed_moe",
]
