"""Top-k routing from router logits: one warp per token, every RoutingMethodType.

Lane ``l`` of the token's warp holds experts ``l, l + 32, l + 64, ...`` in registers. Each
score is turned into a signed integer key whose order is the IEEE total order of the float
(``-0.0 < +0.0``), so one ``redux.sync.max`` finds the best score and one ``redux.sync.min`` over
the lanes holding it finds the smallest expert index among equal scores: ties go to the lower
expert index, as in FlashInfer's packed (value, 65535 - index) keys. ``top_k`` such rounds give
the experts in descending order; lane ``j`` keeps slot ``j``.

Sums over the selected slots use the xor butterfly over lanes (lanes past ``top_k`` add 0),
and the softmax over all experts sums each lane's experts in order first, both as
``cute_moe.routing_ref`` specifies. ``sigmoid(x) = 0.5 * tanh(0.5 * x) + 0.5``.

Compile-time parameters: method, number of experts, top_k, logits / bias dtypes, the DeepSeekV3
grouping, ``norm_topk_prob`` and whether the int16 replay ids are written. Token count and
``routed_scaling_factor`` are runtime values.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

import cutlass
import cutlass.cute as cute
import cuda.bindings.driver as cuda
from cutlass import Float32, Int32
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import dsl_user_op

from ..enums import RoutingMethodType as M
from . import runtime

WARP = 32
WARPS_PER_CTA = 4
MAX_EXPERTS = 2048
MAX_TOP_K = 32
SUM_EPSILON = 1e-20

_KEY_MIN = -(2**31)  # below every float key: removed or non-candidate experts
_IDX_NONE = 2**31 - 1

# Methods whose selection key is the logit itself.
_RAW_KEY = (M.Renormalize, M.RenormalizeNaive, M.TopK, M.TopKSigmoid)
_SIGMOID_KEY = (M.SigmoidRenorm, M.Sigmoid)
_BIASED_SIGMOID_KEY = (M.MiniMax2, M.DeepSeekV3)


# --------------------------------------------------------------------------- scalar helpers


@dsl_user_op
def _f32_as_i32(x, *, loc=None, ip=None) -> Int32:
    return Int32(llvm.bitcast(Int32.mlir_type, Float32(x).ir_value(loc=loc, ip=ip), loc=loc, ip=ip))


@dsl_user_op
def _i32_as_f32(x, *, loc=None, ip=None) -> Float32:
    return Float32(llvm.bitcast(Float32.mlir_type, Int32(x).ir_value(loc=loc, ip=ip), loc=loc, ip=ip))


@cute.jit
def _order_key(x: Float32) -> Int32:
    """Signed int whose order is the float's total order (an involution on the bits)."""
    b = _f32_as_i32(x)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@cute.jit
def _key_value(k: Int32) -> Float32:
    return _i32_as_f32(k ^ ((k >> 31) & 0x7FFFFFFF))


@cute.jit
def _sigmoid(x: Float32) -> Float32:
    return Float32(0.5) * cute.math.tanh(Float32(0.5) * x) + Float32(0.5)


@cute.jit
def _warp_sum(x: Float32) -> Float32:
    """Butterfly sum: every lane ends with the same value, ``v[i] += v[i ^ m]``, m = 16 .. 1."""
    for m in cutlass.range_constexpr(5):
        x = x + cute.arch.shuffle_sync_bfly(x, offset=16 >> m)
    return x


@cute.jit
def _warp_max(x: Float32) -> Float32:
    for m in cutlass.range_constexpr(5):
        y = cute.arch.shuffle_sync_bfly(x, offset=16 >> m)
        x = y if y > x else x
    return x


# --------------------------------------------------------------------------- kernel


class RouteTopk:
    """``routing_logits [T, E]`` -> ``topk_ids [T, K]`` int32 (global ids), ``topk_weights`` bf16.

    Weights (``v`` = the ranked value of a selected expert, ``s`` = sigmoid, sums over the K
    selected, ``scale`` = routed_scaling_factor):
    Default / TopK / Sigmoid ``v``; TopKSigmoid and Llama4 ``s(v)``; Renormalize(Naive)
    ``exp(v - v_0) / sum exp(v - v_0)``; SigmoidRenorm ``v / max(sum v, 1e-20)``;
    MiniMax2 / DeepSeekV3 ``s(x) * scale / (sum s(x) + 1e-20)`` with ``x`` the selected logits.
    """

    def __init__(self, method: int, num_experts: int, top_k: int, logits_f32: bool,
                 bias_dtype: Optional[str], n_group: int = 0, topk_group: int = 0,
                 norm_topk_prob: bool = True, write_replay: bool = False):
        self.method = M(int(method))
        self.num_experts = num_experts
        self.top_k = top_k
        self.logits_f32 = logits_f32
        self.bias_dtype = bias_dtype  # None, "f32" or "bf16"
        self.grouped = self.method == M.DeepSeekV3 and n_group > 1
        self.n_group = n_group if self.grouped else 0
        self.topk_group = topk_group if self.grouped else 0
        self.norm_topk_prob = norm_topk_prob
        self.write_replay = write_replay
        self.per_lane = (num_experts + WARP - 1) // WARP
        if not 1 <= num_experts <= MAX_EXPERTS or not 1 <= top_k <= min(MAX_TOP_K, num_experts):
            raise ValueError(f"unsupported (num_experts, top_k) = ({num_experts}, {top_k})")
        if self.method == M.Llama4 and top_k != 1:
            raise ValueError("Llama4 routing selects exactly one expert")
        if self.grouped and (num_experts % n_group or num_experts // n_group > WARP
                             or not 1 <= topk_group <= n_group):
            raise ValueError(f"bad DeepSeekV3 grouping: E={num_experts}, n_group={n_group}, "
                             f"topk_group={topk_group}")

    @cute.jit
    def __call__(self, logits_ptr: cute.Pointer, bias_ptr: cute.Pointer, ids_ptr: cute.Pointer,
                 weights_ptr: cute.Pointer, replay_ptr: cute.Pointer, num_tokens: Int32,
                 routed_scaling_factor: Float32, stream: cuda.CUstream):
        self.kernel(*self.tensors(logits_ptr, bias_ptr, ids_ptr, weights_ptr, replay_ptr, num_tokens), num_tokens,
                    routed_scaling_factor).launch(
            grid=[(num_tokens + WARPS_PER_CTA - 1) // WARPS_PER_CTA, 1, 1],
            block=[WARPS_PER_CTA * WARP, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, logits: cute.Tensor, bias: cute.Tensor, ids: cute.Tensor, weights: cute.Tensor,
               replay: cute.Tensor, num_tokens: Int32, routed_scaling_factor: Float32):
        # the plan may launch now and wait for this grid at its start (programmatic launch)
        cute.arch.griddepcontrol_launch_dependents()
        tid = cute.arch.thread_idx()[0]
        lane = tid % WARP
        t = cute.arch.block_idx()[0] * WARPS_PER_CTA + tid // WARP
        if t < num_tokens:
            self.route_token(logits, bias, ids, weights, replay, t, lane, routed_scaling_factor)

    @cute.jit
    def route_token(self, logits: cute.Tensor, bias: cute.Tensor, ids: cute.Tensor, weights: cute.Tensor,
                    replay: cute.Tensor, t: Int32, lane: Int32, routed_scaling_factor: Float32) -> Int32:
        """Token ``t`` on one warp: lane ``j < top_k`` writes slot ``j`` (id, bf16 weight, replay
        id) and returns its expert id (the other lanes return -1). The fused route + plan kernel
        (kernels/plan.py) calls this too."""
        sel_idx, sel_val = self._select(logits, bias, t, lane)
        w = self._weight(sel_idx, sel_val, logits, t, lane, routed_scaling_factor)
        expert = Int32(-1)
        if lane < self.top_k:
            out = t * self.top_k + lane
            ids[out] = sel_idx
            weights[out] = w.to(cutlass.BFloat16)
            if cutlass.const_expr(self.write_replay):
                replay[out] = sel_idx.to(cutlass.Int16)
            expert = sel_idx
        return expert

    @cute.jit
    def selected_expert(self, logits: cute.Tensor, bias: cute.Tensor, t: Int32, lane: Int32) -> Int32:
        """Token ``t``'s expert of slot ``lane`` (-1 for lanes past ``top_k``), nothing written: the
        same selection as ``route_token`` for a kernel that only needs to know the experts."""
        sel_idx, _ = self._select(logits, bias, t, lane)
        return sel_idx if lane < self.top_k else Int32(-1)

    @cute.jit
    def _select(self, logits: cute.Tensor, bias: cute.Tensor, t: Int32, lane: Int32):
        """(expert, ranked value) of slot ``lane`` of token ``t`` (lanes past ``top_k``: unused)."""
        x = self._load_logits(logits, t, lane)
        if cutlass.const_expr(self.method == M.Llama4):
            sel_idx, sel_val = self._llama4_top1(x, lane)
        else:
            keys = self._selection_keys(x, bias, lane)
            sel_idx, sel_key = self._top_k(keys, lane)
            sel_val = _key_value(sel_key)
        return sel_idx, sel_val

    def tensors(self, logits_ptr: cute.Pointer, bias_ptr: cute.Pointer, ids_ptr: cute.Pointer,
                weights_ptr: cute.Pointer, replay_ptr: cute.Pointer, num_tokens: Int32):
        """(logits, bias, ids, weights, replay) tensors over the kernel's pointers."""
        e, k = self.num_experts, self.top_k
        pairs = cute.make_layout(num_tokens * k)
        return (cute.make_tensor(logits_ptr, cute.make_layout((num_tokens, e), stride=(e, 1))),
                cute.make_tensor(bias_ptr, cute.make_layout(e)), cute.make_tensor(ids_ptr, pairs),
                cute.make_tensor(weights_ptr, pairs), cute.make_tensor(replay_ptr, pairs))

    # ----------------------------------------------------------------------- pieces

    @cute.jit
    def _load_logits(self, logits: cute.Tensor, t: Int32, lane: Int32):
        """This lane's logits as float32 (experts past E read as -inf)."""
        x = []
        for i in cutlass.range_constexpr(self.per_lane):
            v = Float32(-math.inf)
            if cutlass.const_expr(WARP * (i + 1) <= self.num_experts):
                v = logits[t, lane + WARP * i].to(Float32)
            else:
                if lane + WARP * i < self.num_experts:
                    v = logits[t, lane + WARP * i].to(Float32)
            x.append(v)
        return x

    @cute.jit
    def _valid(self, i: int, lane: Int32):
        return lane + WARP * i < self.num_experts

    @cute.jit
    def _selection_keys(self, x, bias: cute.Tensor, lane: Int32):
        """Order keys of the ranked score of each of this lane's experts (_KEY_MIN: not a candidate)."""
        method = self.method
        scores = []
        if cutlass.const_expr(method == M.Default):
            mx = Float32(-math.inf)
            for i in cutlass.range_constexpr(self.per_lane):
                mx = x[i] if x[i] > mx else mx
            mx = _warp_max(mx)
            ex = []
            total = Float32(0.0)
            for i in cutlass.range_constexpr(self.per_lane):
                v = cute.math.exp(x[i] - mx)
                if cutlass.const_expr(WARP * (i + 1) > self.num_experts):
                    v = v if self._valid(i, lane) else Float32(0.0)
                ex.append(v)
                total = total + v
            total = _warp_sum(total)
            for i in cutlass.range_constexpr(self.per_lane):
                scores.append(ex[i] / total)
        elif cutlass.const_expr(method in _SIGMOID_KEY):
            for i in cutlass.range_constexpr(self.per_lane):
                scores.append(_sigmoid(x[i]))
        elif cutlass.const_expr(method in _BIASED_SIGMOID_KEY):
            for i in cutlass.range_constexpr(self.per_lane):
                b = Float32(0.0)
                if cutlass.const_expr(self.bias_dtype is not None):
                    expert = lane + WARP * i
                    if cutlass.const_expr(WARP * (i + 1) > self.num_experts):
                        expert = expert if self._valid(i, lane) else 0
                    b = bias[expert].to(Float32)
                    if cutlass.const_expr(self.grouped and self.bias_dtype == "f32"):
                        b = b.to(cutlass.BFloat16).to(Float32)
                scores.append(_sigmoid(x[i]) + b)
        else:
            scores = x
        keys = []
        for i in cutlass.range_constexpr(self.per_lane):
            kk = _order_key(scores[i])
            if cutlass.const_expr(WARP * (i + 1) > self.num_experts):
                kk = kk if self._valid(i, lane) else Int32(_KEY_MIN)
            keys.append(kk)
        if cutlass.const_expr(self.grouped):
            keys = self._restrict_to_top_groups(keys, lane)
        return keys

    @cute.jit
    def _restrict_to_top_groups(self, keys, lane: Int32):
        """DeepSeekV3 groups: score = sum of the group's two best keys' values; keep the experts
        of the ``topk_group`` best groups (ties: lower group index)."""
        size = self.num_experts // self.n_group
        # When the group size divides 32, register i of a lane holds an expert of group
        # i * per + lane // size: each group lives in one register, at most one expert per lane.
        per = WARP // size if WARP % size == 0 else 0
        neg_inf_key = _order_key(Float32(-math.inf))
        group_keys = []
        for g in cutlass.range_constexpr(self.n_group):
            b1 = neg_inf_key
            b2 = neg_inf_key
            if cutlass.const_expr(per == 1):
                b1 = keys[g]
            elif cutlass.const_expr(per > 1):
                b1 = keys[g // per] if lane // size == g % per else neg_inf_key
            else:
                for i in cutlass.range_constexpr(self.per_lane):
                    in_group = (lane + WARP * i) // size == g
                    kk = keys[i] if in_group else neg_inf_key
                    lo = kk if kk < b1 else b1
                    b2 = lo if lo > b2 else b2
                    b1 = kk if kk > b1 else b1
            m1 = cute.arch.warp_redux_sync(b1, "max")
            holders = cute.arch.popc(cute.arch.vote_ballot_sync(b1 == m1))
            runner_up = cute.arch.warp_redux_sync(b2 if b1 == m1 else b1, "max")
            m2 = m1 if holders > 1 else runner_up
            group_keys.append(_order_key(_key_value(m1) + _key_value(m2)))
        chosen = Int32(0)
        for r in cutlass.range_constexpr(self.topk_group):
            best = Int32(_KEY_MIN)
            best_g = Int32(0)
            for g in cutlass.range_constexpr(self.n_group):
                free = ((chosen >> g) & 1) == 0
                better = free & (group_keys[g] > best)
                best = group_keys[g] if better else best
                best_g = Int32(g) if better else best_g
            chosen = chosen | (Int32(1) << best_g)
        out = []
        for i in cutlass.range_constexpr(self.per_lane):
            g = (lane + WARP * i) // size
            kept = ((chosen >> g) & 1) != 0
            out.append(keys[i] if kept else Int32(_KEY_MIN))
        return out

    @cute.jit
    def _top_k(self, keys, lane: Int32):
        """K rounds of warp arg-max; lane j returns (expert, key) of slot j."""
        sel_idx = Int32(0)
        sel_key = Int32(_KEY_MIN)
        for j in cutlass.range_constexpr(self.top_k):
            best = Int32(_KEY_MIN)
            best_idx = Int32(_IDX_NONE)
            for i in cutlass.range_constexpr(self.per_lane):
                better = keys[i] > best
                best = keys[i] if better else best
                best_idx = lane + WARP * i if better else best_idx
            top = cute.arch.warp_redux_sync(best, "max")
            winner = cute.arch.warp_redux_sync(best_idx if best == top else Int32(_IDX_NONE), "min")
            if cutlass.const_expr(j + 1 < self.top_k):
                for i in cutlass.range_constexpr(self.per_lane):
                    keys[i] = Int32(_KEY_MIN) if lane + WARP * i == winner else keys[i]
            sel_idx = winner if lane == j else sel_idx
            sel_key = top if lane == j else sel_key
        return sel_idx, sel_key

    @cute.jit
    def _llama4_top1(self, x, lane: Int32):
        """Each lane keeps its first strictly largest logit (index 0 if none); lanes then compare
        by key, ties to the lower index."""
        best = Float32(-math.inf)
        best_idx = Int32(0)
        for i in cutlass.range_constexpr(self.per_lane):
            better = x[i] > best
            best = x[i] if better else best
            best_idx = lane + WARP * i if better else best_idx
        key = _order_key(best)
        top = cute.arch.warp_redux_sync(key, "max")
        winner = cute.arch.warp_redux_sync(best_idx if key == top else Int32(_IDX_NONE), "min")
        return winner, _key_value(top)

    @cute.jit
    def _weight(self, sel_idx: Int32, sel_val: Float32, logits: cute.Tensor, t: Int32, lane: Int32,
                routed_scaling_factor: Float32) -> Float32:
        method = self.method
        active = lane < self.top_k
        w = sel_val
        if cutlass.const_expr(method in (M.TopKSigmoid, M.Llama4)):
            w = _sigmoid(sel_val)
        elif cutlass.const_expr(method in (M.Renormalize, M.RenormalizeNaive)):
            top = cute.arch.shuffle_sync(sel_val, 0)
            ex = cute.math.exp(sel_val - top)
            ex = ex if active else Float32(0.0)
            w = ex / _warp_sum(ex)
        elif cutlass.const_expr(method == M.SigmoidRenorm and self.norm_topk_prob):
            total = _warp_sum(sel_val if active else Float32(0.0))
            floor = Float32(SUM_EPSILON)
            w = sel_val / (total if total > floor else floor)
        elif cutlass.const_expr(method in _BIASED_SIGMOID_KEY):
            s = Float32(0.0)
            if active:
                s = _sigmoid(logits[t, sel_idx].to(Float32))
            w = (s * routed_scaling_factor) / (_warp_sum(s) + Float32(SUM_EPSILON))
        return w


# --------------------------------------------------------------------------- compile-time examples


def route_example_args(logits_f32: bool = True, bias_dtype: Optional[str] = None):
    """Arguments that compile ``RouteTopk`` without a GPU (bias / replay pointers always present,
    unused unless the kernel was built to read / write them)."""
    logits_t = torch.float32 if logits_f32 else torch.bfloat16
    bias_t = torch.bfloat16 if bias_dtype == "bf16" else torch.float32
    return (runtime.fake_ptr(logits_t, logits_t.itemsize), runtime.fake_ptr(bias_t, bias_t.itemsize),
            runtime.fake_ptr(torch.int32, 4), runtime.fake_ptr(torch.bfloat16, 2),
            runtime.fake_ptr(torch.int16, 2), 1, 1.0, runtime.fake_stream())
