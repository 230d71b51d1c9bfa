"""Float routing reference for every RoutingMethodType, and the packed top-k format in torch.

This module is the oracle the GPU routing is tested against, so it follows the arithmetic of
FlashInfer's trtllm-gen routing kernels step by step, on any torch device:

* Scores are float32. bfloat16 logits are upcast exactly; the methods that rank raw logits
  (Renormalize, RenormalizeNaive, TopK, TopKSigmoid, Llama4) rank them exactly as given.
* ``sigmoid(x) = 0.5 * tanh(0.5 * x) + 0.5`` (the kernels' ``sigmoid_accurate``): it saturates
  to exactly 1.0 above x ~ 17 and to exactly 0.0 below x ~ -17, which creates ties.
* Top-k ranks the key ``(value, -index)``: larger value first, and on equal float32 values the
  smaller expert index wins. Values compare by their bits in IEEE total order, so +0.0 outranks
  -0.0. Output slot j holds the (j+1)-th best expert: slots are in descending key order.
* Sums over the k selected values (renormalization) use the warp's butterfly order: slot values in
  lanes 0..31 (zeros past k), then ``v[i] += v[i ^ m]`` for m = 16, 8, 4, 2, 1.
* The softmax over all experts (Default) sums each lane's experts ``lane, lane+32, ...`` in
  order, then across lanes in the butterfly order, and divides each exponential by that sum
  (FlashInfer's warp-per-token kernels; its block-per-token kernel, picked for some batch sizes
  at E >= 160, sums in another order and multiplies by the reciprocal: a float32 ulp apart).

The kernels are built with fast math (``expf``, division and ``tanhf`` within a few ulp), so the
float32 weights here agree with theirs to a few float32 ulp and the stored bf16 weights almost
always bit for bit (at most one bf16 ulp apart). Selections can differ only where two ranked
scores are that close: ``topk_score_margin`` / ``ambiguous_tokens`` find those tokens.

Method by method (E experts, k = top_k, s = sigmoid, scale = routed_scaling_factor or 1):

=================  ===========================================  =====================================
method             ranked quantity (selection)                  weight of a selected expert
=================  ===========================================  =====================================
Default            softmax(logits) over all E                   its softmax probability
Renormalize        logits                                       softmax over the k selected logits
RenormalizeNaive   logits (same kernel as Renormalize)          softmax over the k selected logits
TopK               logits                                       the logit itself
SigmoidRenorm      s(logits)                                    s / max(sum_k s, 1e-20) (or s when
                                                                ``norm_topk_prob`` is False)
Sigmoid            s(logits)                                    s
TopKSigmoid        logits                                       s(logit)
MiniMax2           s(logits) + bias                             s * scale / (sum_k s + 1e-20)
DeepSeekV3         s(logits) + bias; with n_group > 1 only the  s * scale / (sum_k s + 1e-20)
                   topk_group groups of best top-2 sum compete
Llama4 (k = 1)     logits                                       s(logit)
=================  ===========================================  =====================================

The bias is read as float32 (bf16 upcast exactly), except for grouped DeepSeekV3 (n_group > 1),
whose kernel rounds the bias to bfloat16 before adding it. ``routed_scaling_factor`` acts only in
DeepSeekV3 and MiniMax2 and defaults to 1.0; ``norm_topk_prob`` acts only in SigmoidRenorm.
``routing_bias`` is ignored by every other method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from .enums import RoutingMethodType

WARP_SIZE = 32
SUM_EPSILON = 1e-20  # denominators of SigmoidRenorm (as a floor) and of MiniMax2 / DeepSeekV3
_INDEX_SLOTS = 65536  # top-k keys pack (65535 - index) below the value bits
_NO_KEY = torch.iinfo(torch.int64).min

# Methods whose selection ranks the caller's logits themselves: no arithmetic precedes the
# comparison, so a GPU kernel and this reference select identically, ties included.
EXACT_SELECTION_METHODS = frozenset({
    RoutingMethodType.Renormalize, RoutingMethodType.RenormalizeNaive, RoutingMethodType.TopK,
    RoutingMethodType.TopKSigmoid, RoutingMethodType.Llama4,
})

# Relative gap under which two float32 scores computed by different code (fast-math kernels vs
# this reference) may compare either way: a few hundred float32 ulps.
TIE_RTOL = 1e-5


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class RoutingLimits:
    """(num_experts, top_k) pairs FlashInfer compiles a routing kernel for.

    A configuration is supported when some tier ``(max_experts, max_top_k)`` has
    ``num_experts <= max_experts`` and ``top_k <= max_top_k``.
    """

    tiers: Tuple[Tuple[int, int], ...]
    source: str

    def covers(self, num_experts: int, top_k: int) -> bool:
        return any(num_experts <= e and top_k <= k for e, k in self.tiers)

    @property
    def max_experts(self) -> int:
        return max(e for e, _ in self.tiers)

    @property
    def max_top_k(self) -> int:
        return max(k for _, k in self.tiers)


_POLICY_SRC = "include/flashinfer/trtllm/fused_moe/RoutingCustomPolicy.cuh, PolicyTraits<{}>"
_SMALL_TIERS = ((128, 8), (256, 8))
_SOFTMAX_AFTER_TOPK = RoutingLimits(
    ((128, 4), (128, 8), (160, 8), (256, 8), (256, 16), (512, 8), (512, 16), (512, 22), (512, 32),
     (576, 8), (768, 32), (896, 16), (1024, 32), (2048, 32)),
    _POLICY_SRC.format("NoOpPreprocess, SoftmaxPostprocess"))
_SIGMOID_BIAS = RoutingLimits(
    ((128, 8), (256, 8), (384, 8), (512, 8), (512, 22), (896, 16), (1024, 32)),
    _POLICY_SRC.format("SigmoidBiasPreprocess, ScaledSumNormalizePostprocess"))
_SIGMOID_SUM = RoutingLimits(_SMALL_TIERS, _POLICY_SRC.format("SigmoidPreprocess, SumNormalizePostprocess"))

ROUTING_LIMITS: Dict[RoutingMethodType, RoutingLimits] = {
    RoutingMethodType.Default: RoutingLimits(
        _SMALL_TIERS, _POLICY_SRC.format("SoftmaxPreprocess, NoOpPostprocess")),
    RoutingMethodType.Renormalize: _SOFTMAX_AFTER_TOPK,
    RoutingMethodType.RenormalizeNaive: _SOFTMAX_AFTER_TOPK,
    RoutingMethodType.TopK: RoutingLimits(_SMALL_TIERS, _POLICY_SRC.format("NoOpPreprocess, NoOpPostprocess")),
    RoutingMethodType.SigmoidRenorm: _SIGMOID_SUM,
    RoutingMethodType.Sigmoid: _SIGMOID_SUM,
    RoutingMethodType.TopKSigmoid: RoutingLimits(
        _SMALL_TIERS, _POLICY_SRC.format("NoOpPreprocess, SigmoidPostprocess")),
    RoutingMethodType.MiniMax2: _SIGMOID_BIAS,
    # n_group <= 1; grouped DeepSeekV3 follows DEEPSEEK_GROUPED_LIMITS instead.
    RoutingMethodType.DeepSeekV3: _SIGMOID_BIAS,
    RoutingMethodType.Llama4: RoutingLimits(
        ((128, 1),), "csrc/fused_moe/trtllm_backend/trtllm_fused_moe_routing_llama4.cu "
                     "(MaxSupportedExperts = 128) and trtllm_fused_moe_routing_runner.cu (topK == 1)"),
}

# Grouped DeepSeekV3 (n_group > 1): trtllm_fused_moe_routing_runner.cu (top_k <= 22,
# topk_group <= 4) and routingDeepSeek::run in trtllm_fused_moe_routing_deepseek.cu (the rest).
DEEPSEEK_GROUPED_LIMITS = {
    "max_top_k": 22,
    "max_topk_group": 4,
    "max_groups": 8,
    "max_experts": 512,
    "max_experts_per_group": WARP_SIZE,
    "experts_multiple_of": 4,
}


def is_grouped_deepseek(routing_method_type, n_group: Optional[int]) -> bool:
    """DeepSeekV3 runs its grouped kernel only for n_group > 1 (otherwise it is MiniMax2's)."""
    return int(routing_method_type) == RoutingMethodType.DeepSeekV3 and (n_group or 0) > 1


def check_routing_limits(routing_method_type, num_experts: int, top_k: int,
                         n_group: Optional[int] = None, topk_group: Optional[int] = None) -> None:
    """Raise ValueError unless FlashInfer's routing kernels accept this configuration.

    Every method needs ``1 <= top_k <= num_experts`` and a compiled (experts, top_k) tier
    (``ROUTING_LIMITS``). Grouped DeepSeekV3 instead needs ``top_k <= 22``,
    ``1 <= topk_group <= min(4, n_group)``, ``n_group <= 8``, ``num_experts % n_group == 0``,
    ``num_experts / n_group <= 32``, ``num_experts % 4 == 0``, ``num_experts <= 512``, and (not
    checked by FlashInfer, whose kernel would then emit -inf scores) ``top_k <= topk_group *
    num_experts / n_group``.
    """
    method = RoutingMethodType(int(routing_method_type))
    if method == RoutingMethodType.Unspecified:
        raise ValueError("routing_method_type: expected a concrete RoutingMethodType, got Unspecified")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k: expected 1 <= top_k <= num_experts ({num_experts}), got {top_k}")
    if is_grouped_deepseek(method, n_group):
        _check_grouped_deepseek(num_experts, top_k, n_group, topk_group)
        return
    limits = ROUTING_LIMITS[method]
    if not limits.covers(num_experts, top_k):
        raise ValueError(
            f"{method!r}: no routing kernel for num_experts={num_experts}, top_k={top_k}; "
            f"supported (max_experts, max_top_k) tiers: {limits.tiers}")


def _check_grouped_deepseek(num_experts: int, top_k: int, n_group: int, topk_group: Optional[int]) -> None:
    lim = DEEPSEEK_GROUPED_LIMITS
    problems = []
    if top_k > lim["max_top_k"]:
        problems.append(f"top_k <= {lim['max_top_k']} (got {top_k})")
    if n_group > lim["max_groups"]:
        problems.append(f"n_group <= {lim['max_groups']} (got {n_group})")
    if topk_group is None or not 1 <= topk_group <= min(lim["max_topk_group"], n_group):
        problems.append(f"1 <= topk_group <= min({lim['max_topk_group']}, n_group) (got {topk_group})")
    if num_experts % n_group:
        problems.append(f"num_experts divisible by n_group (got {num_experts} and {n_group})")
    elif num_experts // n_group > lim["max_experts_per_group"]:
        problems.append(f"num_experts / n_group <= {lim['max_experts_per_group']} "
                        f"(got {num_experts // n_group})")
    if num_experts % lim["experts_multiple_of"]:
        problems.append(f"num_experts a multiple of {lim['experts_multiple_of']} (got {num_experts})")
    if num_experts > lim["max_experts"]:
        problems.append(f"num_experts <= {lim['max_experts']} (got {num_experts})")
    if not problems and top_k > topk_group * (num_experts // n_group):
        problems.append(f"top_k <= topk_group * num_experts / n_group (got {top_k} > "
                        f"{topk_group * (num_experts // n_group)})")
    if problems:
        raise ValueError("grouped DeepSeekV3 routing expects " + "; ".join(problems))


# --------------------------------------------------------------------------- arithmetic pieces


def sigmoid_accurate(x: torch.Tensor) -> torch.Tensor:
    """``0.5 * tanh(0.5 * x) + 0.5`` in float32 (saturates to exactly 0 and 1)."""
    x = x.float()
    return 0.5 * torch.tanh(0.5 * x) + 0.5


def _order_key(values: torch.Tensor) -> torch.Tensor:
    """int64 keys that order float32 values like the kernels' bit twiddle (-0.0 < +0.0)."""
    bits = values.float().contiguous().view(torch.int32).long()
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _rank_keys(values: torch.Tensor, candidates: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Unique keys ``(value, 65535 - index)`` along the last dim; non-candidates rank last."""
    idx = torch.arange(values.shape[-1], device=values.device, dtype=torch.int64)
    keys = _order_key(values) * _INDEX_SLOTS + (_INDEX_SLOTS - 1 - idx)
    if candidates is not None:
        keys = keys.masked_fill(~candidates, _NO_KEY)
    return keys


def _topk_by_key(values: torch.Tensor, k: int, candidates: Optional[torch.Tensor] = None):
    """``(selected values, indices)`` of the k best keys, in descending key order."""
    _, idx = torch.topk(_rank_keys(values, candidates), k, dim=-1, largest=True, sorted=True)
    return values.gather(-1, idx), idx


def warp_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim (at most 32 entries, one per lane) in the warp butterfly order."""
    n = values.shape[-1]
    if n > WARP_SIZE:
        raise ValueError(f"warp_sum: at most {WARP_SIZE} values, got {n}")
    v = torch.nn.functional.pad(values.float(), (0, WARP_SIZE - n))
    m = WARP_SIZE // 2
    while m >= 1:
        v = v[..., :m] + v[..., m:2 * m]
        m //= 2
    return v[..., 0]


def _lane_then_warp_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``[..., E]``: lane l adds experts l, l+32, ... in order, then warp_sum over lanes."""
    e = values.shape[-1]
    padded = (e + WARP_SIZE - 1) // WARP_SIZE * WARP_SIZE
    v = torch.nn.functional.pad(values.float(), (0, padded - e))
    v = v.reshape(*v.shape[:-1], padded // WARP_SIZE, WARP_SIZE)
    acc = v[..., 0, :]
    for c in range(1, v.shape[-2]):
        acc = acc + v[..., c, :]
    return warp_sum(acc)


def _f32(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=like.device)


# --------------------------------------------------------------------------- selection


@dataclass
class _Selection:
    scores: torch.Tensor  # [T, E] float32, the ranked quantity
    inputs: torch.Tensor  # [T, E] int64, bits of what each score is computed from (logit, bias)
    candidates: Optional[torch.Tensor] = None  # [T, E] bool, experts allowed to compete
    group_scores: Optional[torch.Tensor] = None  # [T, G] float32 (grouped DeepSeekV3)
    topk_group: int = 0


def _input_bits(logits: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    bits = (logits.contiguous().view(torch.int32).long() & 0xFFFFFFFF) << 32
    if bias is not None:
        bits = bits | (bias.contiguous().view(torch.int32).long() & 0xFFFFFFFF)
    return bits


def _bias_f32(routing_bias: Optional[torch.Tensor], logits: torch.Tensor, round_to_bf16: bool) -> torch.Tensor:
    if routing_bias is None:
        return torch.zeros(logits.shape[-1], dtype=torch.float32, device=logits.device)
    bias = routing_bias.reshape(-1).to(logits.device)
    if round_to_bf16:
        bias = bias.to(torch.bfloat16)
    return bias.float()


def _selection(logits: torch.Tensor, routing_bias, method: RoutingMethodType,
               n_group: Optional[int], topk_group: Optional[int]) -> _Selection:
    if method == RoutingMethodType.Default:
        mx = logits.amax(dim=-1, keepdim=True)
        ex = torch.exp(logits - mx)
        return _Selection(ex / _lane_then_warp_sum(ex).unsqueeze(-1), _input_bits(logits))
    if method in (RoutingMethodType.SigmoidRenorm, RoutingMethodType.Sigmoid):
        return _Selection(sigmoid_accurate(logits), _input_bits(logits))
    if method in (RoutingMethodType.MiniMax2, RoutingMethodType.DeepSeekV3):
        grouped = is_grouped_deepseek(method, n_group)
        bias = _bias_f32(routing_bias, logits, round_to_bf16=grouped)
        biased = sigmoid_accurate(logits) + bias
        inputs = _input_bits(logits, bias.expand_as(logits))
        if not grouped:
            return _Selection(biased, inputs)
        return _grouped_selection(biased, inputs, n_group, topk_group)
    return _Selection(logits, _input_bits(logits))  # raw-logit methods


def _grouped_selection(biased: torch.Tensor, inputs: torch.Tensor, n_group: int, topk_group: int) -> _Selection:
    t, e = biased.shape
    per_group = biased.reshape(t, n_group, e // n_group)
    if per_group.shape[-1] < 2:  # the kernel's second-best of a one-expert group is -inf
        per_group = torch.nn.functional.pad(per_group, (0, 1), value=float("-inf"))
    top2, _ = _topk_by_key(per_group, 2)
    group_scores = top2[..., 0] + top2[..., 1]
    _, best_groups = _topk_by_key(group_scores, topk_group)
    chosen = torch.zeros(t, n_group, dtype=torch.bool, device=biased.device)
    chosen.scatter_(-1, best_groups, True)
    candidates = chosen.repeat_interleave(e // n_group, dim=-1)
    return _Selection(biased, inputs, candidates, group_scores, topk_group)


def _llama4_top1(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 as the Llama4 kernel finds it: lane l scans experts l, l+32, l+64, l+96 keeping the
    first strictly greater value (index 0 if none), then lanes compare by key."""
    t, e = logits.shape
    lanes = torch.arange(WARP_SIZE, device=logits.device)
    best = torch.full((t, WARP_SIZE), float("-inf"), dtype=torch.float32, device=logits.device)
    best_idx = torch.zeros(t, WARP_SIZE, dtype=torch.int64, device=logits.device)
    for chunk in range((e + WARP_SIZE - 1) // WARP_SIZE):
        expert = chunk * WARP_SIZE + lanes
        v = torch.full((t, WARP_SIZE), float("-inf"), dtype=torch.float32, device=logits.device)
        valid = expert < e
        v[:, valid] = logits[:, expert[valid]]
        better = v > best
        best = torch.where(better, v, best)
        best_idx = torch.where(better, expert.expand(t, -1), best_idx)
    keys = _order_key(best) * _INDEX_SLOTS + (_INDEX_SLOTS - 1 - best_idx)
    lane = keys.argmax(dim=-1, keepdim=True)
    return best_idx.gather(-1, lane)


# --------------------------------------------------------------------------- public routing


def _check_routing_inputs(routing_logits, routing_bias, top_k, method, n_group, topk_group):
    if not isinstance(routing_logits, torch.Tensor) or routing_logits.dim() != 2:
        raise ValueError("routing_logits: expected a 2-D tensor [num_tokens, num_experts]")
    if routing_logits.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"routing_logits: expected dtype float32 or bfloat16, got {routing_logits.dtype}")
    e = routing_logits.shape[1]
    if routing_bias is not None:
        if routing_bias.dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"routing_bias: expected dtype float32 or bfloat16, got {routing_bias.dtype}")
        if routing_bias.numel() != e:
            raise ValueError(f"routing_bias: expected {e} elements, got {routing_bias.numel()}")
    if method == RoutingMethodType.Unspecified:
        raise ValueError("routing_method_type: expected a concrete RoutingMethodType, got Unspecified")
    if not 1 <= top_k <= e:
        raise ValueError(f"top_k: expected 1 <= top_k <= num_experts ({e}), got {top_k}")
    if method == RoutingMethodType.Llama4 and top_k != 1:
        raise ValueError(f"top_k: Llama4 routing selects exactly one expert, got {top_k}")
    if is_grouped_deepseek(method, n_group):
        if e % n_group:
            raise ValueError(f"n_group: expected a divisor of num_experts ({e}), got {n_group}")
        if topk_group is None or not 1 <= topk_group <= n_group:
            raise ValueError(f"topk_group: expected 1 <= topk_group <= n_group ({n_group}), got {topk_group}")
        if top_k > topk_group * (e // n_group):
            raise ValueError(f"top_k: expected at most topk_group * num_experts / n_group = "
                             f"{topk_group * (e // n_group)}, got {top_k}")


def route_reference(routing_logits: torch.Tensor, routing_bias: Optional[torch.Tensor], top_k: int,
                    routing_method_type, n_group: Optional[int] = None, topk_group: Optional[int] = None,
                    routed_scaling_factor: Optional[float] = None, norm_topk_prob: bool = True
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing of ``routing_logits [T, E]`` (float32 or bf16) by FlashInfer's method.

    Returns ``(topk_ids int32 [T, top_k], topk_weights float32 [T, top_k])`` on the logits'
    device: global expert ids in descending rank order and the weights before their rounding to
    bf16 (``expert_weights_bf16`` gives the stored form). The module docstring gives each
    method's formula. Only well-definedness is checked here; ``check_routing_limits`` says
    whether FlashInfer's kernels accept the configuration.
    """
    method = RoutingMethodType(int(routing_method_type))
    _check_routing_inputs(routing_logits, routing_bias, top_k, method, n_group, topk_group)
    logits = routing_logits.float()
    if method == RoutingMethodType.Llama4:
        ids = _llama4_top1(logits)
        return ids.int(), sigmoid_accurate(logits.gather(-1, ids))

    sel = _selection(logits, routing_bias, method, n_group, topk_group)
    values, ids = _topk_by_key(sel.scores, top_k, sel.candidates)
    if method in (RoutingMethodType.Default, RoutingMethodType.TopK, RoutingMethodType.Sigmoid):
        weights = values
    elif method == RoutingMethodType.TopKSigmoid:
        weights = sigmoid_accurate(values)
    elif method in (RoutingMethodType.Renormalize, RoutingMethodType.RenormalizeNaive):
        ex = torch.exp(values - values.amax(dim=-1, keepdim=True))
        weights = ex / warp_sum(ex).unsqueeze(-1)
    elif method == RoutingMethodType.SigmoidRenorm:
        if norm_topk_prob:
            weights = values / torch.clamp(warp_sum(values), min=SUM_EPSILON).unsqueeze(-1)
        else:
            weights = values
    else:  # MiniMax2, DeepSeekV3: renormalize the unbiased sigmoid of the selected experts
        s = sigmoid_accurate(logits.gather(-1, ids))
        scale = _f32(1.0 if routed_scaling_factor is None else float(routed_scaling_factor), s)
        weights = (s * scale) / (warp_sum(s) + _f32(SUM_EPSILON, s)).unsqueeze(-1)
    return ids.int(), weights.float()


def expert_weights_bf16(topk_weights: torch.Tensor) -> torch.Tensor:
    """Routing weights as the fused kernels store and combine them: bf16, round to nearest even."""
    return topk_weights.to(torch.bfloat16)


# --------------------------------------------------------------------------- tie margin


def topk_score_margin(routing_logits: torch.Tensor, routing_bias: Optional[torch.Tensor], top_k: int,
                      routing_method_type, n_group: Optional[int] = None, topk_group: Optional[int] = None,
                      include_order: bool = False, relative: bool = False,
                      skip_identical_inputs: bool = False) -> torch.Tensor:
    """Per-token float32 ``[T]`` distance of the selection from a tie, on the ranked quantity.

    The margin is ``score(k-th selected) - score(best unselected candidate)`` (>= 0; 0 on an exact
    tie, which the smaller index wins; +inf when every candidate is selected). For grouped
    DeepSeekV3 it is the smaller of that gap among the experts of the chosen groups and the gap
    ``group_score(topk_group-th chosen) - group_score(best unchosen group)``. With
    ``include_order`` the gaps between consecutive selected scores count too (they decide the
    slot order). With ``relative`` each gap is divided by the larger magnitude of its two scores.
    With ``skip_identical_inputs`` a gap between two experts with bit-identical inputs (logit, and
    bias where the method adds one) counts as +inf: every implementation scores them equal, so
    the index decides the same way everywhere.
    """
    method = RoutingMethodType(int(routing_method_type))
    _check_routing_inputs(routing_logits, routing_bias, top_k, method, n_group, topk_group)
    logits = routing_logits.float()
    sel = _selection(logits, routing_bias, method, n_group, topk_group)
    inputs = sel.inputs if skip_identical_inputs else None
    margin = _ranking_margin(sel.scores, top_k, sel.candidates, include_order, relative, inputs)
    if sel.group_scores is not None:
        group_margin = _ranking_margin(sel.group_scores, sel.topk_group, None, False, relative)
        margin = torch.minimum(margin, group_margin)
    return margin


def _ranking_margin(scores, k, candidates, include_order: bool, relative: bool,
                    inputs: Optional[torch.Tensor] = None) -> torch.Tensor:
    t, n = scores.shape
    inf = torch.full((t,), float("inf"), dtype=torch.float32, device=scores.device)
    if t == 0:
        return inf
    # Every token has the same number of candidates (topk_group whole groups, or all experts).
    ncand = n if candidates is None else int(candidates[0].sum())
    take = min(k + 1, ncand)
    ordered, idx = _topk_by_key(scores, take, candidates)
    pairs = [k - 1] if take > k else []
    if include_order:
        pairs += list(range(min(k, take) - 1))
    margin = inf
    for j in pairs:
        hi, lo = ordered[:, j], ordered[:, j + 1]
        gap = torch.nan_to_num(hi - lo, nan=0.0, posinf=float("inf"))
        if relative:
            gap = gap / torch.maximum(hi.abs(), lo.abs()).clamp(min=torch.finfo(torch.float32).tiny)
            gap = torch.nan_to_num(gap, nan=0.0, posinf=float("inf"))
        if inputs is not None:
            same = inputs.gather(-1, idx[:, j : j + 1]) == inputs.gather(-1, idx[:, j + 1 : j + 2])
            gap = gap.masked_fill(same.squeeze(-1), float("inf"))
        margin = torch.minimum(margin, gap)
    return margin


def ambiguous_tokens(routing_logits: torch.Tensor, routing_bias: Optional[torch.Tensor], top_k: int,
                     routing_method_type, n_group: Optional[int] = None, topk_group: Optional[int] = None,
                     include_order: bool = False, rtol: float = TIE_RTOL) -> torch.Tensor:
    """Bool ``[T]``: tokens whose selection may differ between two correct float32 implementations.

    A token is ambiguous when its relative ``topk_score_margin`` (gaps between experts with
    identical inputs skipped) is at most ``rtol``. Methods in ``EXACT_SELECTION_METHODS`` rank the
    input values themselves, so no token is ambiguous there.
    """
    method = RoutingMethodType(int(routing_method_type))
    t = routing_logits.shape[0]
    if method in EXACT_SELECTION_METHODS:
        _check_routing_inputs(routing_logits, routing_bias, top_k, method, n_group, topk_group)
        return torch.zeros(t, dtype=torch.bool, device=routing_logits.device)
    margin = topk_score_margin(routing_logits, routing_bias, top_k, method, n_group, topk_group,
                               include_order=include_order, relative=True, skip_identical_inputs=True)
    return margin <= rtol


# --------------------------------------------------------------------------- packed top-k format


def _f32_bits_to_bf16_bits(bits: torch.Tensor) -> torch.Tensor:
    """Round-to-nearest-even float32 -> bf16 on the bits; NaN keeps sign and payload, made quiet."""
    b = bits.long() & 0xFFFFFFFF
    rounded = ((b + (((b >> 16) & 1) + 0x7FFF)) >> 16) & 0xFFFF
    nan = (b & 0x7FFFFFFF) > 0x7F800000
    return torch.where(nan, ((b >> 16) | 0x40) & 0xFFFF, rounded)


def pack_topk_reference(topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """``packed = (expert_id << 16) | bf16_bits(weight)`` as int32 ``[T, K]`` (expert id global).

    bf16 weights are taken bit for bit; float32 weights are rounded to nearest even first.
    """
    if topk_ids.shape != topk_weights.shape:
        raise ValueError(f"topk_weights: expected shape {tuple(topk_ids.shape)}, got {tuple(topk_weights.shape)}")
    if topk_weights.dtype == torch.bfloat16:
        wbits = topk_weights.contiguous().view(torch.int16).long() & 0xFFFF
    elif topk_weights.dtype == torch.float32:
        wbits = _f32_bits_to_bf16_bits(topk_weights.contiguous().view(torch.int32))
    else:
        raise TypeError(f"topk_weights: expected dtype bfloat16 or float32, got {topk_weights.dtype}")
    packed = ((topk_ids.long() & 0xFFFF) << 16) | wbits
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_topk_reference(packed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """int32 ``[T, K]`` packed routing -> ``(ids int32 = packed >> 16, weights bf16 = low 16 bits)``."""
    if packed.dtype != torch.int32:
        raise TypeError(f"packed: expected dtype int32, got {packed.dtype}")
    ids = packed >> 16
    low = (packed.long() & 0xFFFF)
    low = torch.where(low >= 2**15, low - 2**16, low).to(torch.int16)
    return ids, low.view(torch.bfloat16)


__all__ = [
    "DEEPSEEK_GROUPED_LIMITS", "EXACT_SELECTION_METHODS", "ROUTING_LIMITS", "RoutingLimits", "SUM_EPSILON",
    "TIE_RTOL", "ambiguous_tokens", "check_routing_limits", "expert_weights_bf16", "is_grouped_deepseek",
    "pack_topk_reference", "route_reference", "sigmoid_accurate", "topk_score_margin",
    "unpack_topk_reference", "warp_sum",
]
