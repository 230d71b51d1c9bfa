"""Argument checks every public entry runs before any launch.

Each check raises TypeError (wrong type or dtype) or ValueError (wrong shape, device,
layout or value) with a message naming the argument, what was expected and what came.

Checks read tensor metadata only (dtype, shape, strides, device, data pointer), never tensor
values: they cost no device synchronisation and are safe inside CUDA-graph capture.

Device rule: every tensor lives on ``hidden_states.device``. With ``require_cuda=True`` (the
GPU entry points) that device must be a CUDA device; ``require_cuda=False`` keeps all other
checks, so the CPU reference reuses them.

Sizes (``T`` tokens, ``K = top_k``, ``E = num_experts``, ``L = local_num_experts``,
``H`` hidden size, ``I = intermediate_size``, ``M = 2I`` for Swiglu and ``I`` for Relu2):

* routing: ``1 <= K <= E``, ``1 <= L <= E``, ``local_expert_offset >= 0``,
  ``local_expert_offset + L <= E``; per-method limits in ``validate_routing_method``.
* bf16: ``H % 64 == 0`` and ``I % 64 == 0`` (128-byte K blocks of 64 bf16); mxint4: ``H % 256 == 0`` and ``I % 256 == 0`` (128-byte K blocks of 256 int4).
* prepared bf16 weights (BlockMajorK, rows shuffled): ``gemm1_weights [L, H/64, M, 64]``,
  ``gemm2_weights [L, I/64, H, 64]``.
* prepared mxint4 weights: ``gemm1_weights uint8 [L, H/256, 2I, 128]``,
  ``gemm2_weights uint8 [L, I/256, H, 128]`` (BlockMajorK bytes, two int4 per byte);
  ``gemm1_weights_scale bf16 [L, 2I*H/32]``, ``gemm2_weights_scale bf16 [L, H*I/32]`` (one
  interleaved scale buffer per expert; the 128-row x 4-column interleave adds no padding
  because 2I, H are multiples of 128 and H/32, I/32 multiples of 4).
* ``gemm1_alpha`` / ``gemm1_beta`` / ``gemm1_clamp_limit``: float32 ``[L]``, Swiglu only.
* ``gemm1_lora_delta``: bf16 ``[T, K, 2I]``, Swiglu only.
* ``routing_replay_out``: int16 ``[>= T, K]`` (may be larger, for CUDA-graph preallocation).
* ``output`` (when ``do_finalize``): bf16 ``[T, H]``.
* every tensor contiguous; tensors that kernels load or store with 16-byte vectors
  (hidden_states, weights, scales, LoRA delta, output) 16-byte aligned.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Sequence

import torch

from .enums import SUPPORTED_ACTIVATIONS, ActivationType, RoutingInputMode, RoutingMethodType, WeightLayout
from .layouts.block_major import BLOCK_K_BYTES
from .layouts.quantize import MXINT4_GROUP

ALIGNMENT_BYTES = 16  # one 128-bit vector load
# I must fill whole 64-value K blocks of FC2 and whole 32-row shuffle blocks of FC1; the grouped
# GEMM handles partial row tiles, so GPT-OSS (I = 2880) runs (FlashInfer itself asks I % 128).
INTERMEDIATE_MULTIPLE = 64
BF16_K_BLOCK = BLOCK_K_BYTES // 2  # bf16 values in one BlockMajorK block (64)
MXINT4_K_BLOCK = BLOCK_K_BYTES * 2  # int4 values in one BlockMajorK block (256)

# Routing kernel limits (FlashInfer's trtllm-gen routing, which callers already respect).
GROUPED_MAX_TOP_K = 22
GROUPED_MAX_TOPK_GROUP = 4
GROUPED_MAX_N_GROUP = 8
GROUPED_MAX_EXPERTS_PER_GROUP = 32  # one warp scores one group
GROUPED_EXPERTS_MULTIPLE = 4
UNGROUPED_MAX_TOP_K = 32
UNGROUPED_MAX_EXPERTS = 2048
LLAMA4_MAX_EXPERTS = 128

# Every routing method with a routing implementation (Unspecified has none).
ROUTING_METHODS = tuple(m for m in RoutingMethodType if m != RoutingMethodType.Unspecified)


def _fail_type(name: str, expected: str, got) -> None:
    raise TypeError(f"{name}: expected {expected}, got {got}")


def _fail_value(name: str, expected: str, got) -> None:
    raise ValueError(f"{name}: expected {expected}, got {got}")


def _dims(shape: Sequence) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_tensor(t, name: str, *, dtypes: Sequence[torch.dtype], ndim: int | None = None,
                 shape: Sequence[int | None] | None = None, device: torch.device | None = None,
                 contiguous: bool = True) -> None:
    """Type, dtype, rank, shape (None = any size), device and contiguity of one tensor."""
    if not isinstance(t, torch.Tensor):
        _fail_type(name, "a torch.Tensor", type(t).__name__)
    if t.dtype not in dtypes:
        _fail_type(name, "dtype " + " or ".join(str(d) for d in dtypes), t.dtype)
    if ndim is not None and t.dim() != ndim:
        _fail_value(name, f"a {ndim}-D tensor", f"shape {tuple(t.shape)}")
    if shape is not None:
        if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            _fail_value(name, f"shape {want}", f"shape {tuple(t.shape)}")
    if device is not None and t.device != torch.device(device):
        _fail_value(name, f"a tensor on {device}", f"a tensor on {t.device}")
    if contiguous and not t.is_contiguous():
        _fail_value(name, "a contiguous tensor", f"strides {t.stride()} for shape {tuple(t.shape)}")


def check_topk_pair(topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> None:
    """``(topk_ids int32 [T, k], topk_weights bf16|f32 [T, k])`` on one device."""
    check_tensor(topk_ids, "topk_ids", dtypes=(torch.int32,), ndim=2)
    check_tensor(topk_weights, "topk_weights", dtypes=(torch.bfloat16, torch.float32),
                 shape=tuple(topk_ids.shape), device=topk_ids.device)


def check_packed_topk(packed: torch.Tensor) -> None:
    """Packed routing ``(expert_id << 16) | bf16 bits``: int32 ``[T, k]``."""
    check_tensor(packed, "topk_ids", dtypes=(torch.int32,), ndim=2)


def check_aligned(t: torch.Tensor, name: str, alignment: int = ALIGNMENT_BYTES) -> None:
    """``data_ptr() % alignment == 0`` (empty tensors pass: nothing is loaded)."""
    if t.numel() == 0:
        return
    ptr = t.data_ptr()
    if ptr % alignment:
        _fail_value(name, f"a data pointer aligned to {alignment} bytes",
                    f"address {ptr:#x} ({ptr % alignment} bytes past alignment, "
                    f"storage_offset {t.storage_offset()})")


def check_shape(t: torch.Tensor, name: str, expected: Sequence[int], meaning: str) -> None:
    """Exact shape; ``meaning`` is the symbolic shape shown in the message, e.g. "[L, H/64, M, 64]"."""
    if tuple(t.shape) != tuple(expected):
        _fail_value(name, f"shape {meaning} = {_dims(expected)}", tuple(t.shape))


def _check_int(name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail_type(name, "an int", f"{type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        _fail_value(name, f"an int >= {minimum}", value)
    return value


def _check_optional_int(name: str, value) -> int:
    """None counts as 0, like FlashInfer's ``n_group.value_or(0)``."""
    return 0 if value is None else _check_int(name, value, minimum=0)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, numbers.Integral)):
        _fail_type(name, "a bool", f"{type(value).__name__} {value!r}")
    return bool(value)


def _check_enum(name: str, value, enum_cls, allowed):
    v = _check_int(name, value)
    if v not in {int(a) for a in allowed}:
        valid = ", ".join(f"{a.name}={int(a)}" for a in allowed)
        known = {int(m): m.name for m in enum_cls}
        got = f"{known[v]}={v}" if v in known else v
        _fail_value(name, f"one of {valid}", got)
    return enum_cls(v)


def _check_on(t: torch.Tensor, name: str, device: torch.device | None) -> None:
    if device is not None and t.device != device:
        _fail_value(name, f"a tensor on {device}", f"a tensor on {t.device}")


def _vector_tensor(t, name: str, dtypes, device) -> None:
    """Contiguous, on ``device``, 16-byte aligned: a tensor kernels read with vector loads."""
    check_tensor(t, name, dtypes=dtypes)
    _check_on(t, name, device)
    check_aligned(t, name)


# ---------------------------------------------------------------------------------------------
# Pieces shared by every entry point
# ---------------------------------------------------------------------------------------------


def validate_hidden_states(hidden_states, *, require_cuda: bool = True,
                           name: str = "hidden_states") -> tuple[int, int, torch.device]:
    """bf16 ``[T, H]``, contiguous, 16-byte aligned, on a CUDA device when ``require_cuda``.

    Returns ``(T, H, device)``; every other tensor of the call must be on ``device``.
    """
    check_tensor(hidden_states, name, dtypes=(torch.bfloat16,), ndim=2)
    device = hidden_states.device
    if require_cuda and device.type != "cuda":
        _fail_value(name, "a tensor on a CUDA device", f"a tensor on {device}")
    check_aligned(hidden_states, name)
    return hidden_states.shape[0], hidden_states.shape[1], device


def validate_expert_range(num_experts, top_k, local_expert_offset, local_num_experts) -> None:
    """``1 <= top_k <= E``, ``1 <= L <= E``, ``offset >= 0``, ``offset + L <= E``."""
    e = _check_int("num_experts", num_experts, minimum=1)
    k = _check_int("top_k", top_k, minimum=1)
    if k > e:
        _fail_value("top_k", f"1 <= top_k <= num_experts = {e}", k)
    offset = _check_int("local_expert_offset", local_expert_offset, minimum=0)
    local = _check_int("local_num_experts", local_num_experts, minimum=1)
    if local > e:
        _fail_value("local_num_experts", f"1 <= local_num_experts <= num_experts = {e}", local)
    if offset + local > e:
        _fail_value("local_expert_offset",
                    f"local_expert_offset + local_num_experts <= num_experts = {e}",
                    f"{offset} + {local} = {offset + local}")


def validate_routing_method(routing_method_type, num_experts: int, top_k: int, n_group, topk_group,
                            *, from_logits: bool = True) -> RoutingMethodType:
    """A known routing method and its limits; returns the method.

    All modes:
      * Llama4: ``top_k == 1``.
      * DeepSeekV3 with ``n_group > 1`` (grouped): ``n_group | E``,
        ``1 <= topk_group <= min(n_group, 4)``, ``top_k <= 22`` and
        ``top_k <= topk_group * E / n_group`` (enough experts in the selected groups).
        With ``n_group`` None, 0 or 1 DeepSeekV3 routes without groups and ``topk_group`` is unused;
        other methods ignore both.
    From logits only (routing kernel capacity):
      * grouped DeepSeekV3: ``n_group <= 8``, ``E / n_group <= 32`` (so ``E <= 256``), ``E % 4 == 0``;
      * Llama4: ``E <= 128``;
      * every other method: ``top_k <= 32``, ``E <= 2048``.
    """
    method = _check_enum("routing_method_type", routing_method_type, RoutingMethodType, ROUTING_METHODS)
    e = _check_int("num_experts", num_experts, minimum=1)
    k = _check_int("top_k", top_k, minimum=1)
    ng = _check_optional_int("n_group", n_group)
    tg = _check_optional_int("topk_group", topk_group)

    if method == RoutingMethodType.Llama4:
        if k != 1:
            _fail_value("top_k", "top_k == 1 for Llama4 routing", k)
        if from_logits and e > LLAMA4_MAX_EXPERTS:
            _fail_value("num_experts", f"num_experts <= {LLAMA4_MAX_EXPERTS} for Llama4 routing", e)
        return method

    if method == RoutingMethodType.DeepSeekV3 and ng > 1:
        if e % ng:
            _fail_value("n_group", f"a divisor of num_experts = {e} for DeepSeekV3 routing", ng)
        tg_max = min(ng, GROUPED_MAX_TOPK_GROUP)
        if not 1 <= tg <= tg_max:
            _fail_value("topk_group", f"1 <= topk_group <= min(n_group, {GROUPED_MAX_TOPK_GROUP}) = {tg_max} "
                        f"for DeepSeekV3 routing with n_group = {ng}", topk_group)
        if k > GROUPED_MAX_TOP_K:
            _fail_value("top_k", f"top_k <= {GROUPED_MAX_TOP_K} for grouped DeepSeekV3 routing", k)
        selectable = tg * (e // ng)
        if k > selectable:
            _fail_value("top_k", f"top_k <= topk_group * num_experts / n_group = {tg} * {e} / {ng} "
                        f"= {selectable}", k)
        if from_logits:
            if ng > GROUPED_MAX_N_GROUP:
                _fail_value("n_group", f"n_group <= {GROUPED_MAX_N_GROUP} for DeepSeekV3 routing", ng)
            if e // ng > GROUPED_MAX_EXPERTS_PER_GROUP:
                _fail_value("n_group", f"num_experts / n_group <= {GROUPED_MAX_EXPERTS_PER_GROUP} "
                            f"(n_group >= {math.ceil(e / GROUPED_MAX_EXPERTS_PER_GROUP)} for "
                            f"num_experts = {e}) for DeepSeekV3 routing", ng)
            if e % GROUPED_EXPERTS_MULTIPLE:
                _fail_value("num_experts", f"a multiple of {GROUPED_EXPERTS_MULTIPLE} for grouped "
                            "DeepSeekV3 routing", e)
        return method

    if from_logits:
        if k > UNGROUPED_MAX_TOP_K:
            _fail_value("top_k", f"top_k <= {UNGROUPED_MAX_TOP_K} for {method.name} routing", k)
        if e > UNGROUPED_MAX_EXPERTS:
            _fail_value("num_experts", f"num_experts <= {UNGROUPED_MAX_EXPERTS} for {method.name} routing", e)
    return method


def validate_routing_replay_out(routing_replay_out, num_tokens: int, top_k: int, *,
                                device: torch.device | None = None) -> None:
    """None, or int16 ``[>= T, top_k]`` contiguous; rows ``[0, T)`` receive the expert ids."""
    if routing_replay_out is None:
        return
    check_tensor(routing_replay_out, "routing_replay_out", dtypes=(torch.int16,), ndim=2)
    _check_on(routing_replay_out, "routing_replay_out", device)
    rows, cols = routing_replay_out.shape
    if cols != top_k or rows < num_tokens:
        _fail_value("routing_replay_out", f"shape [>= num_tokens, top_k] = [>= {num_tokens}, {top_k}]",
                    tuple(routing_replay_out.shape))


def _check_scaling_factor(routed_scaling_factor) -> None:
    if routed_scaling_factor is None:
        return
    if isinstance(routed_scaling_factor, bool) or not isinstance(routed_scaling_factor, numbers.Real):
        _fail_type("routed_scaling_factor", "None or a float",
                   f"{type(routed_scaling_factor).__name__} {routed_scaling_factor!r}")
    if not math.isfinite(routed_scaling_factor):
        _fail_value("routed_scaling_factor", "a finite float", routed_scaling_factor)


def validate_routing_args(routing_logits, routing_bias, num_experts, top_k, n_group, topk_group,
                          routing_method_type, routed_scaling_factor=None, routing_replay_out=None, *,
                          num_tokens: int | None = None, local_expert_offset=0, local_num_experts=None,
                          norm_topk_prob=True, device: torch.device | None = None) -> RoutingMethodType:
    """Routing from logits: expert range, method limits, ``routing_logits`` f32|bf16 ``[T, E]``,
    ``routing_bias`` None or f32|bf16 ``[E]``, ``routed_scaling_factor`` None or finite,
    ``routing_replay_out``. ``num_tokens`` and ``device`` default to those of ``routing_logits``;
    ``local_num_experts`` defaults to ``num_experts``.
    """
    validate_expert_range(num_experts, top_k, local_expert_offset,
                          num_experts if local_num_experts is None else local_num_experts)
    method = validate_routing_method(routing_method_type, num_experts, top_k, n_group, topk_group,
                                     from_logits=True)
    check_tensor(routing_logits, "routing_logits", dtypes=(torch.float32, torch.bfloat16), ndim=2)
    if device is None:
        device = routing_logits.device
    _check_on(routing_logits, "routing_logits", device)
    t = routing_logits.shape[0] if num_tokens is None else num_tokens
    check_shape(routing_logits, "routing_logits", (t, num_experts), "[num_tokens, num_experts]")
    if routing_bias is not None:
        check_tensor(routing_bias, "routing_bias", dtypes=(torch.float32, torch.bfloat16), ndim=1)
        _check_on(routing_bias, "routing_bias", device)
        check_shape(routing_bias, "routing_bias", (num_experts,), "[num_experts]")
    _check_scaling_factor(routed_scaling_factor)
    _check_bool("norm_topk_prob", norm_topk_prob)
    validate_routing_replay_out(routing_replay_out, t, top_k, device=device)
    return method


def validate_routed_topk(topk_ids, top_k, num_experts, *, num_tokens: int | None = None,
                         allow_pair: bool = True, device: torch.device | None = None) -> RoutingInputMode:
    """Precomputed routing: packed int32 ``[T, top_k]`` (``(expert_id << 16) | bf16 bits``) or, when
    ``allow_pair``, a tuple ``(ids int32 [T, top_k], weights bf16|f32 [T, top_k])``.

    Returns PackedPrecomputed or UnpackedPrecomputed. Expert id values are not inspected.
    """
    e = _check_int("num_experts", num_experts, minimum=1)
    k = _check_int("top_k", top_k, minimum=1)
    if k > e:
        _fail_value("top_k", f"1 <= top_k <= num_experts = {e}", k)
    if isinstance(topk_ids, tuple):
        if not allow_pair:
            _fail_type("topk_ids", "a packed int32 tensor (this entry point takes no (ids, weights) pair)",
                       "a tuple")
        if len(topk_ids) != 2:
            _fail_value("topk_ids", "a packed tensor or an (ids, weights) pair", f"a tuple of {len(topk_ids)}")
        ids, weights = topk_ids
        mode = RoutingInputMode.UnpackedPrecomputed
    else:
        ids, weights = topk_ids, None
        mode = RoutingInputMode.PackedPrecomputed
    check_tensor(ids, "topk_ids", dtypes=(torch.int32,), ndim=2)
    if device is None:
        device = ids.device
    _check_on(ids, "topk_ids", device)
    t = ids.shape[0] if num_tokens is None else num_tokens
    if tuple(ids.shape) != (t, k):
        _fail_value("topk_ids", f"shape [num_tokens, top_k] = [{t}, {k}] (top_k = {k})", tuple(ids.shape))
    if weights is not None:
        check_tensor(weights, "topk_weights", dtypes=(torch.bfloat16, torch.float32), ndim=2)
        _check_on(weights, "topk_weights", device)
        if tuple(weights.shape) != (t, k):
            _fail_value("topk_weights", f"shape [num_tokens, top_k] = [{t}, {k}] (top_k = {k})",
                        tuple(weights.shape))
    return mode


def validate_gemm1_activation(activation_type, gemm1_alpha, gemm1_beta, gemm1_clamp_limit,
                              local_num_experts: int, *, device: torch.device | None = None) -> ActivationType:
    """``activation_type`` one of SUPPORTED_ACTIVATIONS; ``gemm1_alpha`` / ``gemm1_beta`` /
    ``gemm1_clamp_limit`` each None or float32 ``[L]`` contiguous, and only with Swiglu
    (act = up' * gate' * sigmoid(alpha * gate'), up' = clamp(up, -c, c) + beta, gate' = min(gate, c)).
    """
    act = _check_enum("activation_type", activation_type, ActivationType, SUPPORTED_ACTIVATIONS)
    given = [(n, t) for n, t in (("gemm1_alpha", gemm1_alpha), ("gemm1_beta", gemm1_beta),
                                  ("gemm1_clamp_limit", gemm1_clamp_limit)) if t is not None]
    for name, t in given:
        if act != ActivationType.Swiglu:
            _fail_value(name, "None unless activation_type is Swiglu", f"a tensor with activation_type {act.name}")
        check_tensor(t, name, dtypes=(torch.float32,), ndim=1)
        _check_on(t, name, device)
        check_shape(t, name, (local_num_experts,), "[local_num_experts]")
    return act


def validate_gemm1_lora_delta(gemm1_lora_delta, *, num_tokens: int, top_k: int, intermediate_size: int,
                              activation_type=ActivationType.Swiglu, device: torch.device | None = None) -> None:
    """None, or bf16 ``[T, top_k, 2I]`` added to FC1 before a gated activation (Swiglu only)."""
    if gemm1_lora_delta is None:
        return
    act = _check_enum("activation_type", activation_type, ActivationType, SUPPORTED_ACTIVATIONS)
    if not act.is_gated:
        _fail_value("gemm1_lora_delta", "None unless the activation is gated (Swiglu)",
                    f"a tensor with activation_type {act.name}")
    check_tensor(gemm1_lora_delta, "gemm1_lora_delta", dtypes=(torch.bfloat16,), ndim=3)
    _check_on(gemm1_lora_delta, "gemm1_lora_delta", device)
    check_shape(gemm1_lora_delta, "gemm1_lora_delta", (num_tokens, top_k, 2 * intermediate_size),
                "[num_tokens, top_k, 2 * intermediate_size]")
    check_aligned(gemm1_lora_delta, "gemm1_lora_delta")


def validate_output(output, *, num_tokens: int, hidden_size: int, do_finalize: bool,
                    device: torch.device | None = None) -> None:
    """None, or (when ``do_finalize``) bf16 ``[T, H]`` contiguous and aligned. Without
    ``do_finalize`` the buffer is not written and not checked."""
    if output is None or not do_finalize:
        return
    check_tensor(output, "output", dtypes=(torch.bfloat16,), ndim=2)
    _check_on(output, "output", device)
    check_shape(output, "output", (num_tokens, hidden_size), "[num_tokens, hidden_size]")
    check_aligned(output, "output")


def _check_multiple(name: str, value: int, multiple: int, why: str) -> None:
    if value % multiple:
        _fail_value(name, f"a multiple of {multiple} ({why})", value)


def validate_bf16_layout_flags(use_shuffled_weight, weight_layout) -> None:
    """bf16 weights must be the shuffled BlockMajorK layout (the only prepared layout read)."""
    if not _check_bool("use_shuffled_weight", use_shuffled_weight):
        _fail_value("use_shuffled_weight", "True (weights prepared with the row shuffle)", use_shuffled_weight)
    _check_enum("weight_layout", weight_layout, WeightLayout, (WeightLayout.BlockMajorK,))


def validate_prepared_matrix(weights, scale, name: str, *, local_num_experts: int, k: int, m: int,
                             device: torch.device | None = None, k_name: str = "K", m_name: str = "M") -> str:
    """One prepared GEMM operand, BlockMajorK with 128-byte K blocks: bf16
    ``[L, K/64, M, 64]`` when ``scale`` is None, else MXINT4 uint8 ``[L, K/256, M, 128]`` with bf16
    scales ``{name}_scale [L, M*K/32]``; contiguous, aligned, on ``device``. ``k_name`` /
    ``m_name`` spell the sizes in messages. Returns the weight kind, "bf16" or "mxint4"."""
    if scale is None:
        _vector_tensor(weights, name, (torch.bfloat16,), device)
        check_shape(weights, name, (local_num_experts, k // BF16_K_BLOCK, m, BF16_K_BLOCK),
                    f"[L, {k_name}/{BF16_K_BLOCK}, {m_name}, {BF16_K_BLOCK}]")
        return "bf16"
    _vector_tensor(weights, name, (torch.uint8,), device)
    check_shape(weights, name, (local_num_experts, k // MXINT4_K_BLOCK, m, BLOCK_K_BYTES),
                f"[L, {k_name}/{MXINT4_K_BLOCK}, {m_name}, {BLOCK_K_BYTES}]")
    _vector_tensor(scale, f"{name}_scale", (torch.bfloat16,), device)
    check_shape(scale, f"{name}_scale", (local_num_experts, m * k // MXINT4_GROUP),
                f"[L, {m_name}*{k_name}/{MXINT4_GROUP}]")
    return "mxint4"


def validate_bf16_weights(gemm1_weights, gemm2_weights, *, hidden_size: int, intermediate_size: int,
                          local_num_experts: int, activation_type=ActivationType.Swiglu,
                          device: torch.device | None = None,
                          intermediate_multiple: int = INTERMEDIATE_MULTIPLE) -> None:
    """``I % intermediate_multiple == 0``, ``H % 64 == 0``, ``I % 64 == 0``;
    bf16 ``gemm1_weights [L, H/64, M, 64]``, ``gemm2_weights [L, I/64, H, 64]``
    with ``M = 2I`` (gated) or ``I``; contiguous, aligned, on ``device``."""
    h = _check_int("hidden_size", hidden_size, minimum=1)
    i = _check_int("intermediate_size", intermediate_size, minimum=1)
    _check_multiple("intermediate_size", i, intermediate_multiple, "64-value K block")
    _check_multiple("intermediate_size", i, BF16_K_BLOCK, f"FC2 K blocks of {BF16_K_BLOCK} bf16")
    _check_multiple("hidden_size", h, BF16_K_BLOCK, f"FC1 K blocks of {BF16_K_BLOCK} bf16")
    gated = _check_enum("activation_type", activation_type, ActivationType, SUPPORTED_ACTIVATIONS).is_gated
    m, m_name = (2 * i, "2I") if gated else (i, "I")
    validate_prepared_matrix(gemm1_weights, None, "gemm1_weights", local_num_experts=local_num_experts, k=h, m=m,
                             device=device, k_name="H", m_name=m_name)
    validate_prepared_matrix(gemm2_weights, None, "gemm2_weights", local_num_experts=local_num_experts, k=i, m=h,
                             device=device, k_name="I", m_name="H")


def validate_mxint4_weights(gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, *,
                            hidden_size: int, intermediate_size: int, local_num_experts: int,
                            device: torch.device | None = None,
                            intermediate_multiple: int = INTERMEDIATE_MULTIPLE) -> None:
    """``H % 256 == 0``, ``I % 256 == 0`` (256 int4 values = one 128-byte K block),
    ``I % intermediate_multiple == 0``;
    uint8 ``gemm1_weights [L, H/256, 2I, 128]``, ``gemm2_weights [L, I/256, H, 128]``;
    bf16 ``gemm1_weights_scale [L, 2I*H/32]``, ``gemm2_weights_scale [L, H*I/32]``."""
    h = _check_int("hidden_size", hidden_size, minimum=1)
    i = _check_int("intermediate_size", intermediate_size, minimum=1)
    _check_multiple("intermediate_size", i, intermediate_multiple, "64-value K block")
    _check_multiple("intermediate_size", i, MXINT4_K_BLOCK, f"FC2 K blocks of {MXINT4_K_BLOCK} int4")
    _check_multiple("hidden_size", h, MXINT4_K_BLOCK, f"FC1 K blocks of {MXINT4_K_BLOCK} int4")
    validate_prepared_matrix(gemm1_weights, gemm1_weights_scale, "gemm1_weights", local_num_experts=local_num_experts,
                             k=h, m=2 * i, device=device, k_name="H", m_name="2I")
    validate_prepared_matrix(gemm2_weights, gemm2_weights_scale, "gemm2_weights", local_num_experts=local_num_experts,
                             k=i, m=h, device=device, k_name="I", m_name="H")


# ---------------------------------------------------------------------------------------------
# One check per entry-point family
# ---------------------------------------------------------------------------------------------


def _validate_routing_input(*, routing_logits, routing_bias, topk_ids, allow_pair, num_tokens, device,
                            num_experts, top_k, n_group, topk_group, local_expert_offset,
                            local_num_experts, routed_scaling_factor, routing_method_type,
                            norm_topk_prob, routing_replay_out) -> RoutingInputMode:
    if routing_logits is not None and topk_ids is not None:
        _fail_value("topk_ids", "None when routing_logits is given (one routing source)", "both")
    if topk_ids is None:
        validate_routing_args(routing_logits, routing_bias, num_experts, top_k, n_group, topk_group,
                              routing_method_type, routed_scaling_factor, routing_replay_out,
                              num_tokens=num_tokens, local_expert_offset=local_expert_offset,
                              local_num_experts=local_num_experts, norm_topk_prob=norm_topk_prob,
                              device=device)
        return RoutingInputMode.FromLogits
    if routing_bias is not None:
        _fail_value("routing_bias", "None with precomputed topk_ids", "a tensor")
    validate_expert_range(num_experts, top_k, local_expert_offset, local_num_experts)
    validate_routing_method(routing_method_type, num_experts, top_k, n_group, topk_group, from_logits=False)
    _check_scaling_factor(routed_scaling_factor)
    mode = validate_routed_topk(topk_ids, top_k, num_experts, num_tokens=num_tokens,
                                allow_pair=allow_pair, device=device)
    validate_routing_replay_out(routing_replay_out, num_tokens, top_k, device=device)
    return mode


def validate_bf16_moe_args(*, hidden_states, gemm1_weights, gemm2_weights, num_experts, top_k, n_group,
                           topk_group, intermediate_size, local_expert_offset, local_num_experts,
                           routing_logits=None, routing_bias=None, topk_ids=None,
                           routed_scaling_factor=None, routing_method_type=0, use_shuffled_weight=True,
                           weight_layout=WeightLayout.BlockMajorK, do_finalize=True,
                           activation_type=ActivationType.Swiglu, norm_topk_prob=True,
                           routing_replay_out=None, gemm1_alpha=None, gemm1_beta=None,
                           gemm1_clamp_limit=None, gemm1_lora_delta=None, output=None,
                           require_cuda: bool = True, intermediate_multiple: int = INTERMEDIATE_MULTIPLE) -> RoutingInputMode:
    """All arguments of ``trtllm_bf16_moe`` (``routing_logits`` given) or ``trtllm_bf16_routed_moe``
    (``topk_ids`` given: packed tensor or ``(ids, weights)`` pair). Returns the routing input mode."""
    t, h, device = validate_hidden_states(hidden_states, require_cuda=require_cuda)
    mode = _validate_routing_input(
        routing_logits=routing_logits, routing_bias=routing_bias, topk_ids=topk_ids, allow_pair=True,
        num_tokens=t, device=device, num_experts=num_experts, top_k=top_k, n_group=n_group,
        topk_group=topk_group, local_expert_offset=local_expert_offset,
        local_num_experts=local_num_experts, routed_scaling_factor=routed_scaling_factor,
        routing_method_type=routing_method_type, norm_topk_prob=norm_topk_prob,
        routing_replay_out=routing_replay_out)
    act = validate_gemm1_activation(activation_type, gemm1_alpha, gemm1_beta, gemm1_clamp_limit,
                                    local_num_experts, device=device)
    validate_bf16_layout_flags(use_shuffled_weight, weight_layout)
    validate_bf16_weights(gemm1_weights, gemm2_weights, hidden_size=h, intermediate_size=intermediate_size,
                          local_num_experts=local_num_experts, activation_type=act, device=device,
                          intermediate_multiple=intermediate_multiple)
    validate_gemm1_lora_delta(gemm1_lora_delta, num_tokens=t, top_k=top_k, intermediate_size=intermediate_size,
                              activation_type=act, device=device)
    validate_output(output, num_tokens=t, hidden_size=h, do_finalize=_check_bool("do_finalize", do_finalize),
                    device=device)
    return mode


def validate_mxint4_moe_args(*, hidden_states, gemm1_weights, gemm1_weights_scale, gemm2_weights,
                             gemm2_weights_scale, num_experts, top_k, n_group, topk_group, intermediate_size,
                             local_expert_offset, local_num_experts, routing_logits=None, routing_bias=None,
                             topk_ids=None, gemm1_alpha=None, gemm1_beta=None, gemm1_clamp_limit=None,
                             routed_scaling_factor=None, routing_method_type=0, do_finalize=True,
                             norm_topk_prob=True, routing_replay_out=None, gemm1_lora_delta=None,
                             output=None, require_cuda: bool = True,
                             intermediate_multiple: int = INTERMEDIATE_MULTIPLE) -> RoutingInputMode:
    """All arguments of ``trtllm_mxint4_block_scale_moe`` (``routing_logits`` given) or
    ``trtllm_mxint4_block_scale_routed_moe`` (packed ``topk_ids`` given; no pair). The activation is
    always Swiglu. Returns the routing input mode."""
    t, h, device = validate_hidden_states(hidden_states, require_cuda=require_cuda)
    mode = _validate_routing_input(
        routing_logits=routing_logits, routing_bias=routing_bias, topk_ids=topk_ids, allow_pair=False,
        num_tokens=t, device=device, num_experts=num_experts, top_k=top_k, n_group=n_group,
        topk_group=topk_group, local_expert_offset=local_expert_offset,
        local_num_experts=local_num_experts, routed_scaling_factor=routed_scaling_factor,
        routing_method_type=routing_method_type, norm_topk_prob=norm_topk_prob,
        routing_replay_out=routing_replay_out)
    validate_gemm1_activation(ActivationType.Swiglu, gemm1_alpha, gemm1_beta, gemm1_clamp_limit,
                              local_num_experts, device=device)
    validate_mxint4_weights(gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale,
                            hidden_size=h, intermediate_size=intermediate_size,
                            local_num_experts=local_num_experts, device=device,
                            intermediate_multiple=intermediate_multiple)
    validate_gemm1_lora_delta(gemm1_lora_delta, num_tokens=t, top_k=top_k, intermediate_size=intermediate_size,
                              activation_type=ActivationType.Swiglu, device=device)
    validate_output(output, num_tokens=t, hidden_size=h, do_finalize=_check_bool("do_finalize", do_finalize),
                    device=device)
    return mode


def validate_moe_call(call, *, require_cuda: bool = True) -> RoutingInputMode:
    """``validate_bf16_moe_args`` or ``validate_mxint4_moe_args`` on the fields of a
    ``cute_moe.pipeline.MoeCall`` (``call.weights.kind`` picks which)."""
    mode = RoutingInputMode(int(call.mode))
    if mode == RoutingInputMode.FromLogits:
        routing = dict(routing_logits=call.routing_logits, routing_bias=call.routing_bias)
    elif mode == RoutingInputMode.PackedPrecomputed:
        if call.topk_weights is not None:
            _fail_value("topk_weights", "None with packed topk_ids", "a tensor")
        routing = dict(topk_ids=call.topk_ids)
    else:
        routing = dict(topk_ids=(call.topk_ids, call.topk_weights))
    common = dict(
        hidden_states=call.hidden_states, num_experts=call.num_experts, top_k=call.top_k,
        n_group=call.n_group, topk_group=call.topk_group, intermediate_size=call.intermediate_size,
        local_expert_offset=call.local_expert_offset, local_num_experts=call.local_num_experts,
        routed_scaling_factor=call.routed_scaling_factor, routing_method_type=call.routing_method_type,
        do_finalize=call.do_finalize, norm_topk_prob=call.norm_topk_prob,
        routing_replay_out=call.routing_replay_out, gemm1_alpha=call.gemm1_alpha, gemm1_beta=call.gemm1_beta,
        gemm1_clamp_limit=call.gemm1_clamp_limit, gemm1_lora_delta=call.gemm1_lora_delta,
        output=call.output, require_cuda=require_cuda, **routing)
    w = call.weights
    if w.kind == "bf16":
        return validate_bf16_moe_args(gemm1_weights=w.gemm1, gemm2_weights=w.gemm2,
                                      activation_type=call.activation_type, **common)
    if w.kind == "mxint4":
        if int(call.activation_type) != int(ActivationType.Swiglu):
            _fail_value("activation_type", "Swiglu for mxint4 weights", call.activation_type)
        return validate_mxint4_moe_args(gemm1_weights=w.gemm1, gemm1_weights_scale=w.gemm1_scale,
                                        gemm2_weights=w.gemm2, gemm2_weights_scale=w.gemm2_scale, **common)
    if w.kind == "nvfp4":
        return _validate_nvfp4_call(call, common)
    _fail_value("weights", 'kind "bf16", "mxint4" or "nvfp4"', repr(w.kind))


def _validate_nvfp4_call(call, common) -> RoutingInputMode:
    """A MoeCall with b12x's FP4 experts (what cute_moe.b12x builds after validate_b12x_args)."""
    t, h, device = validate_hidden_states(call.hidden_states, require_cuda=common["require_cuda"])
    mode = _validate_routing_input(
        routing_logits=None, routing_bias=None, topk_ids=common["topk_ids"], allow_pair=True, num_tokens=t,
        device=device, num_experts=call.num_experts, top_k=call.top_k, n_group=None, topk_group=None,
        local_expert_offset=call.local_expert_offset, local_num_experts=call.local_num_experts,
        routed_scaling_factor=None, routing_method_type=0, norm_topk_prob=True, routing_replay_out=None)
    act = ActivationType(int(call.activation_type))
    if act not in (ActivationType.Swiglu, ActivationType.Relu2):
        _fail_value("activation_type", "Swiglu or Relu2 for nvfp4 weights", act.name)
    w = call.weights
    inter = validate_b12x_weights(w1_weight=w.gemm1, w1_weight_sf=w.gemm1_scale, w2_weight=w.gemm2,
                                  w2_weight_sf=w.gemm2_scale, w1_alpha=w.gemm1_out_scale, w2_alpha=w.gemm2_out_scale,
                                  hidden_size=h, local_num_experts=call.local_num_experts,
                                  gated=act == ActivationType.Swiglu, device=device)
    if inter != call.intermediate_size:
        _fail_value("intermediate_size", f"{inter} (from w2_weight)", call.intermediate_size)
    _check_multiple("hidden_size", h, NVFP4_K_MULTIPLE, "the FP4 kernels stage 128 values of a row at a time")
    _check_multiple("intermediate_size", inter, NVFP4_K_MULTIPLE, "the FP4 kernels stage 128 values of a row at a time")
    if (w.gemm1_input_scale is None) != (w.gemm2_input_scale is None):
        _fail_value("weights", "both input scales or neither", "one")
    for name, v in (("gemm1_out_scale", w.gemm1_out_scale), ("gemm2_out_scale", w.gemm2_out_scale),
                    ("gemm1_input_scale", w.gemm1_input_scale), ("gemm2_input_scale", w.gemm2_input_scale)):
        if v is not None:
            check_tensor(v, name, dtypes=(torch.float32,), shape=(call.local_num_experts,))
            _check_on(v, name, device)
    if call.gemm1_lora_delta is not None or call.gemm1_alpha is not None or call.gemm1_beta is not None \
            or call.gemm1_clamp_limit is not None:
        _fail_value("gemm1_lora_delta / gemm1_alpha / gemm1_beta / gemm1_clamp_limit", "None for nvfp4 weights",
                    "a tensor")
    validate_output(call.output, num_tokens=t, hidden_size=h, do_finalize=_check_bool("do_finalize", call.do_finalize),
                    device=device)
    return mode


# ---------------------------------------------------------------------------------------------
# b12x_fused_moe (FP4 experts)
# ---------------------------------------------------------------------------------------------

B12X_QUANT_MODE_ALIASES = {"nvfp4": "nvfp4", "w4a4": "nvfp4", "fp4": "nvfp4", "w4a16": "w4a16", "bf16": "w4a16"}
B12X_ACTIVATION_PRECISIONS = {"fp4": "nvfp4", "bf16": "w4a16"}
B12X_ACTIVATIONS = {"silu": True, "relu2": False}  # name -> gated
B12X_SOURCE_FORMATS = ("modelopt", "compressed_tensors")
NVFP4_K_MULTIPLE = 128  # H and I: the FP4 kernels stage two 64-value k-blocks of a row per step


@dataclasses.dataclass(frozen=True)
class B12xCall:
    """What ``validate_b12x_args`` derived: normalized modes and the sizes."""

    quant_mode: str  # "nvfp4" or "w4a16"
    source_format: str
    gated: bool
    num_tokens: int
    hidden_size: int
    intermediate_size: int
    top_k: int
    num_experts: int
    local_num_experts: int
    local_expert_offset: int


def _check_b12x_scales(sf, name: str, experts: int, rows: int, cols: int, device) -> None:
    from .layouts.scale_interleave import padded_scale_shape

    check_tensor(sf, name, dtypes=(torch.float8_e4m3fn, torch.uint8), ndim=6, contiguous=False)
    rp, cp = padded_scale_shape(rows, cols)
    shape = (32, 4, rp // 128, 4, cp // 4, experts)
    check_shape(sf, name, shape, f"(32, 4, Rp/128, 4, Cp/4, E) for [{experts}, {rows}, {cols}] ue4m3 block scales")
    # the kernels read the interleaved storage behind the view: the strides must be the view's
    tile = 512
    strides = (16, 4, (cp // 4) * tile, 1, tile, (rp // 128) * (cp // 4) * tile)
    if any(n > 1 and st != want for n, st, want in zip(shape, sf.stride(), strides)):
        _fail_value(name, f"the strided view prepare_b12x_fp4_moe_weights returns (strides {strides})",
                    f"strides {tuple(sf.stride())}")
    _check_on(sf, name, device)


def _check_b12x_global_scale(v, name: str, experts: int, device, allow_one: bool) -> None:
    check_tensor(v, name, dtypes=(torch.float32,), ndim=1)
    if v.shape[0] != experts and not (allow_one and v.shape[0] == 1):
        _fail_value(name, f"[{experts}] (one per local expert){' or [1]' if allow_one else ''}", tuple(v.shape))
    _check_on(v, name, device)


def validate_b12x_weights(*, w1_weight, w1_weight_sf, w2_weight, w2_weight_sf, w1_alpha, w2_alpha,
                          hidden_size: int, local_num_experts: int, gated: bool, device) -> int:
    """The FP4 experts of ``b12x_fused_moe``: packed e2m1 ``w1_weight [L, M, H/2]`` (``M = 2I`` rows
    ``[up; gate]`` gated, ``I`` for relu2) and ``w2_weight [L, H, I/2]``, their ue4m3 scales as the
    6-D view of cute_moe.prepare.prepare_b12x_fp4_moe_weights, float32 ``w1_alpha`` / ``w2_alpha [L]``.
    Returns I."""
    h, local = hidden_size, local_num_experts
    check_tensor(w1_weight, "w1_weight", dtypes=(torch.uint8,), ndim=3)
    check_tensor(w2_weight, "w2_weight", dtypes=(torch.uint8,), ndim=3)
    _check_on(w1_weight, "w1_weight", device)
    _check_on(w2_weight, "w2_weight", device)
    e, m, h_half = w1_weight.shape
    if e != local:
        _fail_value("w1_weight", f"{local} experts (num_local_experts) in dim 0", tuple(w1_weight.shape))
    if 2 * h_half != h:
        _fail_value("w1_weight", f"[E, M, H/2] with H = {h} (the hidden size)", tuple(w1_weight.shape))
    if w2_weight.shape[0] != local or w2_weight.shape[1] != h:
        _fail_value("w2_weight", f"[{local}, {h}, I/2]", tuple(w2_weight.shape))
    inter = 2 * w2_weight.shape[2]
    want_m = 2 * inter if gated else inter
    if m != want_m:
        _fail_value("w1_weight", f"M = {want_m} rows ({'[up; gate], 2I, gated' if gated else 'I, relu2'}; "
                    f"I = {inter} from w2_weight)", tuple(w1_weight.shape))
    _check_multiple("hidden_size", h, 16, "one ue4m3 scale per 16 values")
    _check_multiple("intermediate_size", inter, 16, "one ue4m3 scale per 16 values")
    _check_b12x_scales(w1_weight_sf, "w1_weight_sf", local, m, h // 16, device)
    _check_b12x_scales(w2_weight_sf, "w2_weight_sf", local, h, inter // 16, device)
    _check_b12x_global_scale(w1_alpha, "w1_alpha", local, device, allow_one=False)
    _check_b12x_global_scale(w2_alpha, "w2_alpha", local, device, allow_one=False)
    return inter


def b12x_modes(*, activation, activation_precision, quant_mode, source_format, output_dtype):
    """The string arguments of ``b12x_fused_moe`` -> (quant mode "nvfp4" or "w4a16", gated); pure
    Python (no tensor is looked at), so a traced call can run it too."""
    if quant_mode is None:
        if activation_precision not in B12X_ACTIVATION_PRECISIONS:
            _fail_value("activation_precision", f"one of {tuple(B12X_ACTIVATION_PRECISIONS)}", repr(activation_precision))
        mode = B12X_ACTIVATION_PRECISIONS[activation_precision]
    else:
        if quant_mode == "mxfp4":
            _fail_value("quant_mode", "'nvfp4' or 'w4a16' (mxfp4 experts are not supported)", repr(quant_mode))
        if quant_mode not in B12X_QUANT_MODE_ALIASES:
            _fail_value("quant_mode", f"one of {tuple(B12X_QUANT_MODE_ALIASES)} or None", repr(quant_mode))
        mode = B12X_QUANT_MODE_ALIASES[quant_mode]
    if source_format not in B12X_SOURCE_FORMATS:
        _fail_value("source_format", f"one of {B12X_SOURCE_FORMATS}", repr(source_format))
    if source_format == "compressed_tensors" and mode != "w4a16":
        _fail_value("source_format", "'modelopt' with nvfp4 activations (compressed_tensors is a w4a16 format)",
                    repr(source_format))
    if activation not in B12X_ACTIVATIONS:
        _fail_value("activation", f"one of {tuple(B12X_ACTIVATIONS)}", repr(activation))
    gated = B12X_ACTIVATIONS[activation]
    if output_dtype != torch.bfloat16:
        _fail_value("output_dtype", "torch.bfloat16", output_dtype)
    return mode, gated


def validate_b12x_args(*, x, w1_weight, w1_weight_sf, w2_weight, w2_weight_sf, token_selected_experts,
                       token_final_scales, num_experts, top_k, w1_alpha, w2_alpha, fc2_input_scale,
                       input_global_scale, num_local_experts, local_expert_offset, output, output_dtype, activation,
                       activation_precision, quant_mode, source_format, require_cuda: bool = True) -> B12xCall:
    """Every argument of ``b12x_fused_moe`` (cute_moe.reference_b12x states the rules); raises
    ValueError / TypeError naming the argument. Device values (expert ids) are not read."""
    mode, gated = b12x_modes(activation=activation, activation_precision=activation_precision,
                             quant_mode=quant_mode, source_format=source_format, output_dtype=output_dtype)
    t, h, device = validate_hidden_states(x, require_cuda=require_cuda, name="x")
    num_experts = _check_int("num_experts", num_experts, minimum=1)
    top_k = _check_int("top_k", top_k, minimum=1)
    local = num_experts if num_local_experts is None else _check_int("num_local_experts", num_local_experts, 1)
    offset = _check_int("local_expert_offset", local_expert_offset, minimum=0)
    if offset + local > num_experts:
        _fail_value("num_local_experts", f"local_expert_offset + num_local_experts <= num_experts = {num_experts}",
                    f"{offset} + {local}")
    if top_k > num_experts:
        _fail_value("top_k", f"an int <= num_experts = {num_experts}", top_k)

    inter = validate_b12x_weights(w1_weight=w1_weight, w1_weight_sf=w1_weight_sf, w2_weight=w2_weight,
                                  w2_weight_sf=w2_weight_sf, w1_alpha=w1_alpha, w2_alpha=w2_alpha, hidden_size=h,
                                  local_num_experts=local, gated=gated, device=device)
    if mode == "nvfp4":
        if fc2_input_scale is None:
            _fail_value("fc2_input_scale", "a float32 tensor [1] or [E] (nvfp4 quantizes FC2's input with it)",
                        None)
        _check_b12x_global_scale(fc2_input_scale, "fc2_input_scale", local, device, allow_one=True)
    if input_global_scale is not None:
        if mode != "nvfp4":
            _fail_value("input_global_scale", "None with bf16 activations (w4a16 quantizes no activation)",
                        "a tensor")
        _check_b12x_global_scale(input_global_scale, "input_global_scale", local, device, allow_one=True)

    check_tensor(token_selected_experts, "token_selected_experts", dtypes=(torch.int32,), shape=(t, top_k))
    check_tensor(token_final_scales, "token_final_scales", dtypes=(torch.float32, torch.bfloat16), shape=(t, top_k))
    _check_on(token_selected_experts, "token_selected_experts", device)
    _check_on(token_final_scales, "token_final_scales", device)
    if output is not None:
        check_tensor(output, "output", dtypes=(torch.bfloat16,), shape=(t, h))
        _check_on(output, "output", device)
    return B12xCall(mode, source_format, gated, t, h, inter, top_k, num_experts, local, offset)
