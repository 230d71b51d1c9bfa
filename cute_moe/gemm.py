"""Host wrappers of the grouped GEMMs (bf16 or MXINT4 prepared weights): FC1 and FC2 of the MoE.

``grouped_gemm_fc1`` (``L`` local experts, ``M = 2I`` gated or ``I``, ``P`` = plan rows)::

    act[r, i] = bf16(act_fn(h)),  h = hidden_states[expanded(r) // top_k] @ W1_e^T (+ delta[expanded(r)])

for every permuted row ``r`` of a plan tile of local expert ``e`` (``r < first_row + num_rows``),
``W1_e`` the canonical ``[M, H]`` FC1 matrix of ``e`` (rows ``[up; gate]``) that
``gemm1_weights [L, H/64, M, 64]`` holds prepared (interleaved, shuffled, BlockMajorK), ``act_fn``
SwiGLU / GPT-OSS SwiGLU / Relu2 (cute_moe.kernels.gemm_epilogue) and ``delta`` the optional
``gemm1_lora_delta [T, top_k, 2I]`` viewed as ``[T * top_k, 2I]``.

With ``gemm1_weights_scale`` / ``gemm2_weights_scale`` given the weights are MXINT4, as
``trtllm_mxint4_block_scale_moe`` takes them (uint8 ``[L, K/256, M, 128]``, bf16 scales
``[L, M*K/32]``), and ``W_e`` is their dequantization ``bf16(q * s)`` (Swiglu only).

``grouped_gemm_fc2``::

    gemm2_output[r, :] = bf16(act[r] @ W2_e^T),  W2_e = canonical [H, I] behind gemm2_weights [L, I/64, H, 64]

Rows of the outputs that no tile stores (padding, rows past ``rows_in_use``) are left as they were.
Both launch on the current CUDA stream, never read device values on the host and allocate only
buffers sized by the plan's shape: CUDA-graph safe. Kernels are cached per (arch, kernel key); the
key holds the op, tile, schedule and epilogue options, never a token count.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Dict, Iterable, Optional, Tuple

import torch

from . import validate
from .enums import ActivationType
from .kernels import runtime
from .kernels.gemm_config import (INT4_SCALE_ALIGN, SCHEDULE_OF_VARIANT, WEIGHT_FORMATS, GemmConfig, TileConfig,
                                  wgmma_runs)
from .plan import MoePlan

__all__ = ["grouped_gemm_fc1", "grouped_gemm_fc2", "launch_gemm", "warmup", "fc1_kernel_key", "fc2_kernel_key"]


WEIGHT_KINDS = WEIGHT_FORMATS  # "bf16", "mxint4", "nvfp4" (b12x's FP4 experts)


def _weight_kind(kind: str) -> str:
    if kind not in WEIGHT_KINDS:
        raise ValueError(f"weight_kind: expected one of {WEIGHT_KINDS}, got {kind!r}")
    return kind


# How a GEMM reads its token rows: "gathered" (FC1: hidden_states rows through the permutation),
# "permuted" (rows in plan order: FC2, or FC1 on quantized rows), "fp4" (packed NVFP4 rows and
# scales in plan order, for SM120's block-scaled MMA: kernels/grouped_gemm_sm120.py)
TOKEN_ROWS = ("gathered", "permuted", "fp4")


BLOCK_SCALED_ARCH = "sm_120a"  # the arch whose block-scaled MMA multiplies NVFP4 x NVFP4


def token_rows_of(arch: str, quantized_inputs: bool) -> Tuple[str, str]:
    """(FC1, FC2) token rows of a fused call: the gathered bf16 rows and FC1's bf16 activation;
    with NVFP4-quantized inputs, plan-order rows holding the quantized values (bf16 ``q * sf``),
    packed for the block-scaled MMA on BLOCK_SCALED_ARCH."""
    if not quantized_inputs:
        return "gathered", "permuted"
    rows = "fp4" if arch == BLOCK_SCALED_ARCH else "permuted"
    return rows, rows


def _token_rows(rows: str) -> str:
    if rows not in TOKEN_ROWS:
        raise ValueError(f"token_rows: expected one of {TOKEN_ROWS}, got {rows!r}")
    return rows


def fc1_kernel_key(tile: TileConfig, variant: str, activation_type, has_lora: bool = False,
                   has_alpha: bool = False, has_beta: bool = False, has_clamp: bool = False,
                   weight_kind: str = "bf16", has_out_scale: bool = False, token_rows: str = "gathered") -> Tuple:
    return ("grouped_gemm", "fc1", tile, SCHEDULE_OF_VARIANT[variant], int(activation_type), bool(has_lora),
            bool(has_alpha), bool(has_beta), bool(has_clamp), bool(has_out_scale), _token_rows(token_rows),
            _weight_kind(weight_kind))


def fc2_kernel_key(tile: TileConfig, variant: str, weight_kind: str = "bf16", has_out_scale: bool = False,
                   token_rows: str = "permuted") -> Tuple:
    return ("grouped_gemm", "fc2", tile, SCHEDULE_OF_VARIANT[variant], int(ActivationType.Swiglu), False, False,
            False, False, bool(has_out_scale), _token_rows(token_rows), _weight_kind(weight_kind))


def _build(key: Tuple):
    from .kernels.grouped_gemm import GroupedGemm, example_args
    from .kernels.grouped_gemm_sm90 import WgmmaGroupedGemm

    _, op, tile, schedule, act, lora, alpha, beta, clamp, out_scale, rows, kind = key

    def build():
        if rows == "fp4":
            from .kernels.grouped_gemm_sm120 import BlockScaledGroupedGemm

            return (BlockScaledGroupedGemm(op, tile, schedule, activation=act, has_out_scale=out_scale),
                    example_args(kind, packed_tokens=True))
        template = WgmmaGroupedGemm if tile.mma == "wgmma" else GroupedGemm
        return (template(op, tile, schedule, activation=act, has_lora=lora, has_alpha=alpha, has_beta=beta,
                         has_clamp=clamp, weight_format=kind, has_out_scale=out_scale,
                         gather_rows=rows == "gathered"), example_args(kind))

    return build


def _check_weights(weights: torch.Tensor, scale: Optional[torch.Tensor], name: str, local: int, k: int, m: int,
                   device: torch.device) -> str:
    """The prepared operand (validate.validate_prepared_matrix); MXINT4 also needs whole 128-byte
    K blocks and whole 128-row scale tiles. Returns the weight kind."""
    kind = validate.validate_prepared_matrix(weights, scale, name, local_num_experts=local, k=k, m=m, device=device)
    if kind == "mxint4" and (k % 256 or m % 128):
        raise ValueError(f"{name}: MXINT4 needs K % 256 == 0 and M % 128 == 0, got K = {k}, M = {m}")
    return kind


@lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_ctas(config: GemmConfig, tile: TileConfig, device: torch.device, max_tiles: int, m: int) -> int:
    """Persistent grid: ``ctas_per_sm`` CTAs per SM, no more than there are work items."""
    if config.schedule != "persistent":
        return 1
    m_blocks = -(-m // tile.bm)
    return max(1, min(max_tiles * m_blocks, _sm_count(device.index or 0) * config.ctas_per_sm))


def _check_plan(plan: MoePlan, config: GemmConfig, top_k: int, num_tokens: int, device: torch.device) -> None:
    if not isinstance(plan, MoePlan):
        raise TypeError(f"plan: expected a cute_moe.plan.MoePlan, got {type(plan).__name__}")
    if not isinstance(config, GemmConfig):
        raise TypeError(f"config: expected a GemmConfig, got {type(config).__name__}")
    s = plan.shape
    if s.tile_rows != config.tile_rows:
        raise ValueError(f"plan: tile_rows = {s.tile_rows} must equal the GEMM token tile {config.tile_rows}")
    if s.top_k != top_k:
        raise ValueError(f"top_k: expected the plan's top_k = {s.top_k}, got {top_k}")
    if s.num_tokens != num_tokens:
        raise ValueError(f"plan: built for {s.num_tokens} tokens, the input has {num_tokens}")
    for name in ("permuted_idx_to_expanded_idx", "tile_info", "counters"):
        t = getattr(plan, name)
        if t.device != device or t.dtype != torch.int32 or not t.is_contiguous():
            raise ValueError(f"plan.{name}: expected a contiguous int32 tensor on {device}")


def _out(out: Optional[torch.Tensor], name: str, rows: int, cols: int, device: torch.device) -> torch.Tensor:
    if out is None:
        return torch.empty(rows, cols, dtype=torch.bfloat16, device=device)
    validate.check_tensor(out, name, dtypes=(torch.bfloat16,), shape=(rows, cols), device=device)
    validate.check_aligned(out, name)
    return out


def grouped_gemm_fc1(hidden_states: torch.Tensor, plan: MoePlan, gemm1_weights: torch.Tensor, *, top_k: int,
                     intermediate_size: int, activation_type, config: GemmConfig,
                     gemm1_weights_scale: Optional[torch.Tensor] = None,
                     gemm1_alpha: Optional[torch.Tensor] = None, gemm1_beta: Optional[torch.Tensor] = None,
                     gemm1_clamp_limit: Optional[torch.Tensor] = None,
                     gemm1_lora_delta: Optional[torch.Tensor] = None,
                     out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """FC1 + LoRA delta + activation -> ``act [P, I]`` bf16 in permuted row order (module docstring).

    ``hidden_states [T, H]`` bf16; ``gemm1_weights [L, H/64, M, 64]`` bf16 prepared, or MXINT4
    ``[L, H/256, 2I, 128]`` uint8 with ``gemm1_weights_scale [L, 2I*H/32]`` bf16;
    ``gemm1_alpha`` / ``gemm1_beta`` / ``gemm1_clamp_limit`` float32 ``[L]`` (Swiglu only, any
    subset); ``gemm1_lora_delta [T, top_k, 2I]`` bf16 (Swiglu only); ``out [P, I]`` bf16 or None.
    """
    t, h, device = validate.validate_hidden_states(hidden_states)
    _check_plan(plan, config, top_k, t, device)
    local = plan.shape.local_num_experts
    act = validate.validate_gemm1_activation(activation_type, gemm1_alpha, gemm1_beta, gemm1_clamp_limit, local,
                                             device=device)
    inter = int(intermediate_size)
    m = (2 if act.is_gated else 1) * inter
    if gemm1_weights_scale is not None and not act.is_gated:
        raise ValueError(f"activation_type: MXINT4 weights take Swiglu, got {act.name}")
    kind = _check_weights(gemm1_weights, gemm1_weights_scale, "gemm1_weights", local, h, m, device)
    if h % 64 or inter % 64:
        raise ValueError(f"hidden_size {h} and intermediate_size {inter} must be multiples of 64")
    validate.validate_gemm1_lora_delta(gemm1_lora_delta, num_tokens=t, top_k=top_k, intermediate_size=inter,
                                       activation_type=act, device=device)
    rows = plan.shape.max_padded_rows
    out = _out(out, "out", rows, inter, device)
    tile = config.fc1
    if m % 64:
        raise ValueError(f"FC1 rows M = {m} must be a multiple of 64")
    max_tiles = plan.shape.max_tiles
    if max_tiles == 0:
        return out
    key = fc1_kernel_key(tile, config.variant, act, gemm1_lora_delta is not None, gemm1_alpha is not None,
                         gemm1_beta is not None, gemm1_clamp_limit is not None, kind)
    p = runtime.ptr
    stand_in = p(out, align=4)  # never read when absent
    launch_gemm(gemm_kernel(key, runtime.arch_of_device(device)), p(gemm1_weights),
                p(gemm1_weights_scale, align=INT4_SCALE_ALIGN) if gemm1_weights_scale is not None else stand_in,
                p(hidden_states), p(plan.permuted_idx_to_expanded_idx, align=4), p(plan.tile_info, align=4),
                p(plan.counters, align=4), p(out),
                p(gemm1_lora_delta) if gemm1_lora_delta is not None else stand_in,
                *(p(x, align=4) if x is not None else stand_in for x in (gemm1_alpha, gemm1_beta, gemm1_clamp_limit)),
                stand_in, m, h, inter, int(top_k), local, max_tiles, _num_ctas(config, tile, device, max_tiles, m),
                config.pdl, runtime.current_stream())
    return out


def grouped_gemm_fc2(act: torch.Tensor, plan: MoePlan, gemm2_weights: torch.Tensor, *, hidden_size: int,
                     config: GemmConfig, gemm2_weights_scale: Optional[torch.Tensor] = None,
                     out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """FC2 -> ``gemm2_output [P, H]`` bf16 in permuted row order (module docstring).

    ``act [P, I]`` bf16 (FC1's output for the same plan); ``gemm2_weights [L, I/64, H, 64]`` bf16, or
    MXINT4 ``[L, I/256, H, 128]`` uint8 with ``gemm2_weights_scale [L, H*I/32]`` bf16.
    """
    validate.check_tensor(act, "act", dtypes=(torch.bfloat16,), ndim=2)
    device = act.device
    if device.type != "cuda":
        raise ValueError(f"act: expected a tensor on a CUDA device, got a tensor on {device}")
    validate.check_aligned(act, "act")
    rows, inter = act.shape
    _check_plan(plan, config, plan.shape.top_k, plan.shape.num_tokens, device)
    if rows != plan.shape.max_padded_rows:
        raise ValueError(f"act: expected {plan.shape.max_padded_rows} rows (the plan's), got {rows}")
    h = int(hidden_size)
    local = plan.shape.local_num_experts
    kind = _check_weights(gemm2_weights, gemm2_weights_scale, "gemm2_weights", local, inter, h, device)
    if h % 64 or inter % 64:
        raise ValueError(f"hidden_size {h} and intermediate_size {inter} must be multiples of 64")
    out = _out(out, "out", rows, h, device)
    max_tiles = plan.shape.max_tiles
    if max_tiles == 0:
        return out
    tile = config.fc2
    p = runtime.ptr
    stand_in = p(act)  # never read
    launch_gemm(gemm_kernel(fc2_kernel_key(tile, config.variant, kind), runtime.arch_of_device(device)),
                p(gemm2_weights),
                p(gemm2_weights_scale, align=INT4_SCALE_ALIGN) if gemm2_weights_scale is not None else stand_in,
                p(act), p(plan.permuted_idx_to_expanded_idx, align=4), p(plan.tile_info, align=4),
                p(plan.counters, align=4), p(out), stand_in, stand_in, stand_in, stand_in, stand_in, h, inter, h,
                plan.shape.top_k, local, max_tiles, _num_ctas(config, tile, device, max_tiles, h), config.pdl,
                runtime.current_stream())
    return out


def gemm_kernel(key: Tuple, arch: str):
    """The launcher of a grouped GEMM key, compiled or loaded on first use."""
    tile, rows, kind = key[2], key[-2], key[-1]
    if tile.mma == "wgmma" and not wgmma_runs(arch, kind):
        raise ValueError(f"the wgmma grouped GEMM runs bf16 or mxint4 weights on sm_90a, got {kind} weights on {arch}")
    if rows == "fp4" and (arch != BLOCK_SCALED_ARCH or kind != "nvfp4" or tile.mma != "warp"):
        raise ValueError(f"the block-scaled FP4 grouped GEMM runs NVFP4 weights on sm_120a, got {kind} weights on "
                         f"{arch}")
    return runtime.KERNELS.get(key, arch, _build(key))


def launch_gemm(kernel, weights: int, scale: int, x: int, p2e: int, tile_info: int, counters: int,
                out: int, lora: int, alpha: int, beta: int, clamp: int, out_scale: int, m: int, k: int, n_out: int,
                top_k: int, local_num_experts: int, max_tiles: int, num_ctas: int, pdl: bool, stream: int) -> None:
    """Launch a grouped GEMM (``gemm_kernel`` of an ``fc1_kernel_key`` / ``fc2_kernel_key``) on addresses:
    ``m`` weight rows, ``k`` the reduction, ``n_out`` the output row width (GroupedGemm.__call__);
    operands a kernel does not read take any aligned address."""
    kernel(weights, scale, x, p2e, tile_info, counters, out, lora, alpha, beta, clamp, out_scale, m, k, n_out, top_k,
           local_num_experts, max_tiles, num_ctas, int(pdl), stream)


def warmup(configs: Iterable[GemmConfig], activation_type=ActivationType.Swiglu, *, has_lora: bool = False,
           has_alpha: bool = False, has_beta: bool = False, has_clamp: bool = False,
           arch: Optional[str] = None, weight_kind: str = "bf16") -> Dict[Tuple, float]:
    """Compile the FC1 and FC2 kernels of ``configs`` ahead of time (``arch`` defaults to the current
    GPU's; any of sm_90a / sm_100a / sm_120a compiles on a CPU; ``weight_kind`` "bf16" or "mxint4").
    Returns compile seconds per kernel key (0.0 for kernels already cached)."""
    arch = arch or runtime.arch_of_device()
    seconds: Dict[Tuple, float] = {}
    for config in configs:
        keys = [fc1_kernel_key(config.fc1, config.variant, activation_type, has_lora, has_alpha, has_beta, has_clamp,
                               weight_kind),
                fc2_kernel_key(config.fc2, config.variant, weight_kind)]
        for key in keys:
            if key in seconds:
                continue
            t0 = time.perf_counter()
            gemm_kernel(key, arch)
            seconds[key] = time.perf_counter() - t0
    return seconds
