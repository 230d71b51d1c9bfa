"""Checkpoint tensors -> the prepared tensors each entry point takes, and back, bit-exactly.

Sizes: ``E`` experts, ``H`` hidden size, ``I`` intermediate size, ``M`` FC1 rows (``2I`` for a
gated activation, ``I`` otherwise). Canonical FC1 rows are ``[up (w3); gate (w1)]``
(:mod:`cute_moe.layouts.gated_rows`); checkpoints store ``[gate (w1); up (w3)]``.

Prepared layouts (one ``[M, K]`` matrix per expert; :mod:`cute_moe.layouts` has the formulas):

* ``trtllm_bf16_moe``: FC1 gated interleave (gated only), 32-row shuffle, BlockMajorK 128 bytes
  -> bf16 ``[E, H/64, M, 64]``; FC2 shuffle, BlockMajorK -> ``[E, I/64, H, 64]``;
* ``trtllm_mxint4_block_scale_moe``: the same on int4 bytes -> uint8 ``[E, H/256, 2I, 128]``,
  ``[E, I/256, H, 128]``; bf16 scales row-permuted like their weights, then 128x4-interleaved
  -> ``[E, 2I*H/32]``, ``[E, H*I/32]``;
* ``b12x_fused_moe`` (FP4): weights unchanged ``[E, M, H/2]``, ``[E, H, I/2]``; scales
  128x4-interleaved, as the 6-D view ``(32, 4, Rp/128, 4, Cp/4, E)``.

Every prepare function checks its inputs (dtype, rank, shape, divisibility, device) and raises
TypeError / ValueError naming the argument. None of them modifies its inputs.
"""

from __future__ import annotations

from typing import Dict, Iterable, Sequence, Tuple

import torch

from .enums import ActivationType
from .layouts import (
    SCALE_TILE_COLS,
    SCALE_TILE_ROWS,
    block_k_elements,
    block_scale_deinterleave,
    block_scale_interleave,
    fc1_destination_rows,
    fc1_source_rows,
    from_block_major_k,
    int4_to_uint4b8,
    pack_int4,
    padded_scale_shape,
    scale_mma_storage,
    scale_mma_view,
    shuffle_block_size,
    shuffle_destination_rows,
    shuffle_source_rows,
    to_block_major_k,
    uint4b8_to_int4,
)
from .layouts.block_major import BLOCK_K_BYTES
from .layouts.packing import INT4_PER_INT32
from .layouts.quantize import (  # re-exported: the test and benchmark quantizers
    MXFP4_BLOCK,
    MXINT4_GROUP,
    NVFP4_BLOCK,
    dequantize_mxfp4,
    dequantize_mxint4,
    dequantize_nvfp4,
    quantize_mxfp4,
    quantize_mxint4,
    quantize_nvfp4,
)
from .layouts.row_shuffle import DEFAULT_EPILOGUE_TILE_M

MXINT4_EPILOGUE_TILE_M = 128  # fixed by the MXINT4 kernels (and vLLM's helper)
MXINT4_K_MULTIPLE = 2 * BLOCK_K_BYTES  # int4 values in one 128-byte BlockMajorK block
MXINT4_CHECKPOINT_FORMATS = ("int32", "uint8")
B12X_QUANT_MODES = {"nvfp4": NVFP4_BLOCK, "mxfp4": MXFP4_BLOCK}

__all__ = [
    "prepare_bf16_moe_weights", "unprepare_bf16_moe_weights",
    "prepare_static_weights_for_trtllm_mxint4_moe", "unprepare_static_weights_for_trtllm_mxint4_moe",
    "prepare_mxint4_moe_weights", "unprepare_mxint4_moe_weights",
    "prepare_b12x_fp4_moe_weights", "unprepare_b12x_fp4_moe_weights",
    "quantize_mxint4", "dequantize_mxint4", "quantize_nvfp4", "dequantize_nvfp4",
    "quantize_mxfp4", "dequantize_mxfp4", "MXINT4_GROUP",
]


# ----------------------------------------------------------------------------------------------
# input checks


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return " or ".join(str(d) for d in dtypes)


def _check_tensor(x, name: str, dtypes: Sequence[torch.dtype], ndim: int, shape_doc: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {shape_doc}, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype {_dtype_names(dtypes)}, got {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions {shape_doc}, got shape {tuple(x.shape)}")


def _check_shape(x: torch.Tensor, name: str, expected: Tuple[int, ...], shape_doc: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)} {shape_doc}, got {tuple(x.shape)}")


def _check_multiple(value: int, multiple: int, name: str, what: str, why: str) -> None:
    if value <= 0 or value % multiple:
        raise ValueError(f"{name}: {what} = {value} must be a positive multiple of {multiple} ({why})")


def _check_same_device(named: Dict[str, torch.Tensor]) -> None:
    devices = {n: t.device for n, t in named.items()}
    first = next(iter(devices.values()))
    for n, d in devices.items():
        if d != first:
            raise ValueError(f"{n}: expected device {first} like the other weights, got {d}")


def _activation(activation_type) -> ActivationType:
    try:
        act = ActivationType(int(activation_type))
    except (TypeError, ValueError):
        raise ValueError(f"activation_type: expected an ActivationType value, got {activation_type!r}") from None
    if act == ActivationType.InvalidType:
        raise ValueError("activation_type: ActivationType.InvalidType has no weight layout")
    return act


# ----------------------------------------------------------------------------------------------
# per-expert matrix transforms (one expert at a time bounds the extra memory to one matrix)


def _rows_then_block_major(x: torch.Tensor, source_rows: torch.Tensor) -> torch.Tensor:
    """``[E, M, K]`` -> ``[E, K/bk, M, bk]``: ``out[e] = to_block_major_k(x[e][source_rows])``."""
    e, m, k = x.shape
    bk = block_k_elements(x.dtype)
    out = torch.empty((e, k // bk, m, bk), dtype=x.dtype, device=x.device)
    for i in range(e):
        out[i] = to_block_major_k(x[i].index_select(0, source_rows))
    return out


def _block_major_then_rows(p: torch.Tensor, destination_rows: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rows_then_block_major`: ``out[e] = from_block_major_k(p[e])[destination_rows]``."""
    e, kb, m, bk = p.shape
    out = torch.empty((e, m, kb * bk), dtype=p.dtype, device=p.device)
    for i in range(e):
        out[i] = from_block_major_k(p[i]).index_select(0, destination_rows)
    return out


# ----------------------------------------------------------------------------------------------
# bf16 (trtllm_bf16_moe / trtllm_bf16_routed_moe)

_BF16 = (torch.bfloat16,)


def prepare_bf16_moe_weights(gemm1: torch.Tensor, gemm2: torch.Tensor,
                             activation_type=ActivationType.Swiglu,
                             epilogue_tile_m: int = DEFAULT_EPILOGUE_TILE_M) -> Tuple[torch.Tensor, torch.Tensor]:
    """Canonical bf16 ``gemm1 [E, M, H]`` (rows ``[up; gate]`` when gated, ``M = 2I``; ``M = I``
    otherwise) and ``gemm2 [E, H, I]`` -> ``(gemm1_weights [E, H/64, M, 64],
    gemm2_weights [E, I/64, H, 64])`` bf16, as ``trtllm_bf16_moe`` takes them.

    ``gemm1_weights[e, kb, p, j] = gemm1[e, fc1_source_rows(M, gated)[p], 64*kb + j]`` and
    ``gemm2_weights[e, kb, p, j] = gemm2[e, shuffle_source_rows(H)[p], 64*kb + j]``.
    """
    act = _activation(activation_type)
    block = shuffle_block_size(epilogue_tile_m)
    _check_tensor(gemm1, "gemm1", _BF16, 3, "[E, M, H]")
    _check_tensor(gemm2, "gemm2", _BF16, 3, "[E, H, I]")
    _check_same_device({"gemm1": gemm1, "gemm2": gemm2})
    e, m, h = gemm1.shape
    i = gemm2.shape[2]
    rows = 2 * i if act.is_gated else i
    _check_shape(gemm2, "gemm2", (e, h, i), f"[E, H, I] with E = {e}, H = {h} from gemm1")
    if m != rows:
        raise ValueError(f"gemm1: expected {rows} rows (M = {'2I' if act.is_gated else 'I'} for "
                         f"{act!r}, I = gemm2.shape[2] = {i}), got shape {tuple(gemm1.shape)}")
    bk = block_k_elements(torch.bfloat16)
    _check_multiple(m, block, "gemm1", "rows M", f"row shuffle in blocks of {block}, epilogue_tile_m={epilogue_tile_m}")
    _check_multiple(h, block, "gemm2", "rows H", f"row shuffle in blocks of {block}, epilogue_tile_m={epilogue_tile_m}")
    _check_multiple(h, bk, "gemm1", "K = H", f"BlockMajorK blocks of {BLOCK_K_BYTES} bytes = {bk} bf16")
    _check_multiple(i, bk, "gemm2", "K = I", f"BlockMajorK blocks of {BLOCK_K_BYTES} bytes = {bk} bf16")
    src1 = fc1_source_rows(m, act.is_gated, epilogue_tile_m, gemm1.device)
    src2 = shuffle_source_rows(h, epilogue_tile_m, gemm2.device)
    return _rows_then_block_major(gemm1, src1), _rows_then_block_major(gemm2, src2)


def unprepare_bf16_moe_weights(gemm1_weights: torch.Tensor, gemm2_weights: torch.Tensor,
                               activation_type=ActivationType.Swiglu,
                               epilogue_tile_m: int = DEFAULT_EPILOGUE_TILE_M) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`prepare_bf16_moe_weights`: ``(gemm1 [E, M, H], gemm2 [E, H, I])``, bit-exact."""
    act = _activation(activation_type)
    block = shuffle_block_size(epilogue_tile_m)
    bk = block_k_elements(torch.bfloat16)
    _check_tensor(gemm1_weights, "gemm1_weights", _BF16, 4, f"[E, H/{bk}, M, {bk}]")
    _check_tensor(gemm2_weights, "gemm2_weights", _BF16, 4, f"[E, I/{bk}, H, {bk}]")
    _check_same_device({"gemm1_weights": gemm1_weights, "gemm2_weights": gemm2_weights})
    e, hb, m, b1 = gemm1_weights.shape
    if b1 != bk:
        raise ValueError(f"gemm1_weights: expected last dim {bk} (BlockMajorK, {BLOCK_K_BYTES} bytes), "
                         f"got shape {tuple(gemm1_weights.shape)}")
    h = hb * bk
    i = m // 2 if act.is_gated else m
    why = f"row shuffle in blocks of {block}, epilogue_tile_m={epilogue_tile_m}"
    _check_multiple(m, block, "gemm1_weights", "rows M", why)
    _check_multiple(h, block, "gemm1_weights", "K = H (rows of FC2)", why)
    _check_multiple(i, bk, "gemm1_weights", f"I (from M for {act!r})", f"K of FC2 in blocks of {bk}")
    _check_shape(gemm2_weights, "gemm2_weights", (e, i // bk, h, bk),
                 f"[E, I/{bk}, H, {bk}] with E = {e}, H = {h}, I = {i} from gemm1_weights")
    dst1 = fc1_destination_rows(m, act.is_gated, epilogue_tile_m, gemm1_weights.device)
    dst2 = shuffle_destination_rows(h, epilogue_tile_m, gemm2_weights.device)
    return _block_major_then_rows(gemm1_weights, dst1), _block_major_then_rows(gemm2_weights, dst2)


# ----------------------------------------------------------------------------------------------
# MXINT4 (trtllm_mxint4_block_scale_moe / _routed_moe)

_PACKED_INT4 = (torch.int32, torch.uint8)


def _int4_bytes(w: torch.Tensor) -> torch.Tensor:
    """Checkpoint int32 uint4b8 words ``[E, N, K/8]`` (converted one expert at a time) or uint8
    signed-int4 bytes ``[E, N, K/2]`` (returned as is) -> uint8 signed-int4 bytes ``[E, N, K/2]``."""
    if w.dtype != torch.int32:
        return w.contiguous()
    out = torch.empty(w.shape[:-1] + (w.shape[-1] * INT4_PER_INT32 // 2,), dtype=torch.uint8, device=w.device)
    for i in range(w.shape[0]):
        out[i] = uint4b8_to_int4(w[i])
    return out


def _uint4b8_words(b: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_int4_bytes` for int32 output, one expert at a time."""
    out = torch.empty(b.shape[:-1] + (b.shape[-1] * 2 // INT4_PER_INT32,), dtype=torch.int32, device=b.device)
    for i in range(b.shape[0]):
        out[i] = int4_to_uint4b8(b[i])
    return out


def _values_per_row(w: torch.Tensor) -> int:
    return w.shape[-1] * (INT4_PER_INT32 if w.dtype == torch.int32 else 2)


def _check_mxint4_sizes(h: int, i: int, h_name: str, i_name: str) -> None:
    why = f"BlockMajorK blocks of {BLOCK_K_BYTES} bytes = {MXINT4_K_MULTIPLE} int4 values"
    _check_multiple(h, MXINT4_K_MULTIPLE, h_name, "hidden size H", why)
    _check_multiple(i, MXINT4_K_MULTIPLE, i_name, "intermediate size I", why)


def _check_mxint4_scales(s: torch.Tensor, name: str, shape: Tuple[int, int, int], doc: str) -> None:
    _check_tensor(s, name, _BF16, 3, doc)
    _check_shape(s, name, shape, doc)


def _checkpoint_rows(canonical_rows: torch.Tensor, m: int) -> torch.Tensor:
    """Canonical FC1 row ``r`` (``[up; gate]``) is checkpoint row ``(r + m/2) % m`` (``[gate; up]``)."""
    return (canonical_rows + m // 2) % m


def _prepare_mxint4(w1: torch.Tensor, s1: torch.Tensor, w2: torch.Tensor, s2: torch.Tensor,
                    checkpoint_order: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Signed-int4 bytes ``w1 [E, 2I, H/2]``, ``s1 [E, 2I, H/32]``, ``w2 [E, H, I/2]``,
    ``s2 [E, H, I/32]`` (checked) -> the four prepared tensors. FC1 rows are ``[gate; up]`` when
    ``checkpoint_order`` (the w1/w3 swap is folded into the row map), else ``[up; gate]``."""
    e, m, _ = w1.shape
    h = w2.shape[1]
    src1 = fc1_source_rows(m, True, MXINT4_EPILOGUE_TILE_M, w1.device)
    if checkpoint_order:
        src1 = _checkpoint_rows(src1, m)
    src2 = shuffle_source_rows(h, MXINT4_EPILOGUE_TILE_M, w2.device)
    g1 = _rows_then_block_major(w1, src1)
    g2 = _rows_then_block_major(w2, src2)
    g1s = block_scale_interleave(s1.index_select(1, src1)).view(e, -1)
    g2s = block_scale_interleave(s2.index_select(1, src2)).view(e, -1)
    return g1, g1s, g2, g2s


def _unprepare_mxint4(g1: torch.Tensor, g1s: torch.Tensor, g2: torch.Tensor, g2s: torch.Tensor,
                      checkpoint_order: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prepared MXINT4 tensors (checked here) -> ``(w1, s1, w2, s2)``: uint8 signed-int4 bytes
    ``[E, 2I, H/2]`` with rows ``[gate; up]`` when ``checkpoint_order`` else ``[up; gate]``, bf16
    ``[E, 2I, H/32]``, ``[E, H, I/2]``, ``[E, H, I/32]``."""
    half = MXINT4_K_MULTIPLE // 2
    _check_tensor(g1, "gemm1_weights", (torch.uint8,), 4, f"[E, H/{MXINT4_K_MULTIPLE}, 2I, {half}]")
    _check_tensor(g2, "gemm2_weights", (torch.uint8,), 4, f"[E, I/{MXINT4_K_MULTIPLE}, H, {half}]")
    e, hb, m, b1 = g1.shape
    if b1 != half or m % 2:
        raise ValueError(f"gemm1_weights: expected [E, H/{MXINT4_K_MULTIPLE}, 2I, {half}] with an even 2I, "
                         f"got shape {tuple(g1.shape)}")
    h, i = hb * MXINT4_K_MULTIPLE, m // 2
    _check_mxint4_sizes(h, i, "gemm1_weights", "gemm1_weights")
    _check_shape(g2, "gemm2_weights", (e, i // MXINT4_K_MULTIPLE, h, half),
                 f"[E, I/{MXINT4_K_MULTIPLE}, H, {half}] with E = {e}, H = {h}, I = {i} from gemm1_weights")
    for s, name, rows, cols in ((g1s, "gemm1_scales", m, h // MXINT4_GROUP),
                                (g2s, "gemm2_scales", h, i // MXINT4_GROUP)):
        if not isinstance(s, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(s).__name__}")
        if s.dtype != torch.bfloat16:
            raise TypeError(f"{name}: expected dtype torch.bfloat16, got {s.dtype}")
        n = e * rows * cols
        if s.dim() < 1 or s.shape[0] != e or s.numel() != n:
            raise ValueError(f"{name}: expected [E, {rows}*{cols}] = [{e}, {rows * cols}] interleaved scales, "
                             f"got shape {tuple(s.shape)}")
    _check_same_device({"gemm1_weights": g1, "gemm1_scales": g1s, "gemm2_weights": g2, "gemm2_scales": g2s})
    dst1 = fc1_destination_rows(m, True, MXINT4_EPILOGUE_TILE_M, g1.device)
    if checkpoint_order:  # checkpoint row r is canonical row (r + m/2) % m
        dst1 = dst1.index_select(0, _checkpoint_rows(torch.arange(m, device=g1.device), m))
    dst2 = shuffle_destination_rows(h, MXINT4_EPILOGUE_TILE_M, g2.device)
    w1 = _block_major_then_rows(g1, dst1)
    w2 = _block_major_then_rows(g2, dst2)
    s1 = block_scale_deinterleave(g1s.reshape(e, -1), m, h // MXINT4_GROUP).index_select(1, dst1)
    s2 = block_scale_deinterleave(g2s.reshape(e, -1), h, i // MXINT4_GROUP).index_select(1, dst2)
    return w1, s1, w2, s2


def _check_mxint4_pair(gemm1_weights, gemm1_scales, gemm2_weights, gemm2_scales, h: int, i: int) -> None:
    """FC1 ``[E, 2I, .]`` and FC2 ``[E, H, .]`` agree; sizes fill whole blocks; scales fit; one device."""
    e, m = gemm1_weights.shape[:2]
    if m != 2 * i:
        raise ValueError(f"gemm1_weights: expected 2I = {2 * i} rows (I from gemm2_weights), got shape "
                         f"{tuple(gemm1_weights.shape)}")
    if gemm2_weights.shape[:2] != (e, h):
        raise ValueError(f"gemm2_weights: expected [E, H, ...] = [{e}, {h}, ...] (from gemm1_weights), got shape "
                         f"{tuple(gemm2_weights.shape)}")
    _check_mxint4_sizes(h, i, "gemm1_weights", "gemm2_weights")
    _check_mxint4_scales(gemm1_scales, "gemm1_scales", (e, m, h // MXINT4_GROUP), "[E, 2I, H/32]")
    _check_mxint4_scales(gemm2_scales, "gemm2_scales", (e, h, i // MXINT4_GROUP), "[E, H, I/32]")
    _check_same_device({"gemm1_weights": gemm1_weights, "gemm1_scales": gemm1_scales,
                        "gemm2_weights": gemm2_weights, "gemm2_scales": gemm2_scales})


def prepare_static_weights_for_trtllm_mxint4_moe(gemm1_weights: torch.Tensor, gemm1_scales: torch.Tensor,
                                                 gemm2_weights: torch.Tensor, gemm2_scales: torch.Tensor
                                                 ) -> Dict[str, torch.Tensor]:
    """vLLM's helper of the same name: checkpoint MXINT4 experts -> ``trtllm_mxint4_block_scale_moe`` tensors.

    Input (checkpoint order, ``w13 = [gate (w1); up (w3)]``):

    * ``gemm1_weights``: int32 ``[E, 2I, H/8]`` uint4b8 words (compressed-tensors pack-quantized),
      or uint8 ``[E, 2I, H/2]`` packed signed int4 -- both weights in the same format;
    * ``gemm1_scales``: bf16 ``[E, 2I, H/32]``;
    * ``gemm2_weights``: int32 ``[E, H, I/8]`` or uint8 ``[E, H, I/2]``; ``gemm2_scales`` bf16 ``[E, H, I/32]``.

    Steps: uint4b8 -> signed int4 bytes; w1/w3 -> w3/w1 half swap of weights and scales; FC1 rows
    interleaved and shuffled, FC2 rows shuffled (epilogue tile 128); BlockMajorK 128 bytes;
    scales row-permuted like their weights, then 128x4-interleaved.

    Returns ``{"gemm1_weights": uint8 [E, H/256, 2I, 128], "gemm1_scales": bf16 [E, 2I*H/32],
    "gemm2_weights": uint8 [E, I/256, H, 128], "gemm2_scales": bf16 [E, H*I/32]}``. Unlike vLLM's
    helper the int32 inputs are not modified.
    """
    _check_tensor(gemm1_weights, "gemm1_weights", _PACKED_INT4, 3, "[E, 2I, H/8] int32 or [E, 2I, H/2] uint8")
    _check_tensor(gemm2_weights, "gemm2_weights", _PACKED_INT4, 3, "[E, H, I/8] int32 or [E, H, I/2] uint8")
    if gemm1_weights.dtype != gemm2_weights.dtype:
        raise TypeError(f"gemm2_weights: expected the dtype of gemm1_weights ({gemm1_weights.dtype}), "
                        f"got {gemm2_weights.dtype}")
    h, i = _values_per_row(gemm1_weights), _values_per_row(gemm2_weights)
    _check_mxint4_pair(gemm1_weights, gemm1_scales, gemm2_weights, gemm2_scales, h, i)
    g1, g1s, g2, g2s = _prepare_mxint4(_int4_bytes(gemm1_weights), gemm1_scales.contiguous(),
                                       _int4_bytes(gemm2_weights), gemm2_scales.contiguous(), checkpoint_order=True)
    return {"gemm1_weights": g1, "gemm1_scales": g1s, "gemm2_weights": g2, "gemm2_scales": g2s}


def unprepare_static_weights_for_trtllm_mxint4_moe(gemm1_weights: torch.Tensor, gemm1_scales: torch.Tensor,
                                                   gemm2_weights: torch.Tensor, gemm2_scales: torch.Tensor,
                                                   checkpoint_format: str = "int32") -> Dict[str, torch.Tensor]:
    """Inverse of :func:`prepare_static_weights_for_trtllm_mxint4_moe` (call it with ``**prepared``):
    the checkpoint tensors in ``checkpoint_format`` ``"int32"`` (uint4b8 words ``[E, 2I, H/8]``,
    ``[E, H, I/8]``) or ``"uint8"`` (signed-int4 bytes ``[E, 2I, H/2]``, ``[E, H, I/2]``), rows in
    checkpoint order ``[gate; up]``, bf16 scales ``[E, 2I, H/32]``, ``[E, H, I/32]``; bit-exact."""
    if checkpoint_format not in MXINT4_CHECKPOINT_FORMATS:
        raise ValueError(f"checkpoint_format: expected one of {MXINT4_CHECKPOINT_FORMATS}, got {checkpoint_format!r}")
    w1, s1, w2, s2 = _unprepare_mxint4(gemm1_weights, gemm1_scales, gemm2_weights, gemm2_scales,
                                       checkpoint_order=True)
    if checkpoint_format == "int32":
        w1, w2 = _uint4b8_words(w1), _uint4b8_words(w2)
    return {"gemm1_weights": w1, "gemm1_scales": s1, "gemm2_weights": w2, "gemm2_scales": s2}


def prepare_mxint4_moe_weights(gemm1_weights: torch.Tensor, gemm1_scales: torch.Tensor,
                               gemm2_weights: torch.Tensor, gemm2_scales: torch.Tensor
                               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Canonical MXINT4 experts -> ``(gemm1_weights, gemm1_weights_scale, gemm2_weights,
    gemm2_weights_scale)`` as :func:`prepare_static_weights_for_trtllm_mxint4_moe` returns them.

    Canonical input: FC1 rows ``[up (w3); gate (w1)]`` (no w1/w3 swap), signed int4 either packed
    (uint8 ``[E, 2I, H/2]``, :func:`~cute_moe.layouts.pack_int4` order, as :func:`quantize_mxint4`
    gives) or as values (int8 ``[E, 2I, H]`` in [-8, 7]); FC2 likewise ``[E, H, I/2]`` / ``[E, H, I]``;
    bf16 scales ``[E, 2I, H/32]`` and ``[E, H, I/32]``.
    """
    ints = (torch.uint8, torch.int8)
    _check_tensor(gemm1_weights, "gemm1_weights", ints, 3, "[E, 2I, H/2] uint8 or [E, 2I, H] int8")
    _check_tensor(gemm2_weights, "gemm2_weights", ints, 3, "[E, H, I/2] uint8 or [E, H, I] int8")
    if gemm1_weights.dtype != gemm2_weights.dtype:
        raise TypeError(f"gemm2_weights: expected the dtype of gemm1_weights ({gemm1_weights.dtype}), "
                        f"got {gemm2_weights.dtype}")
    per_byte = 2 if gemm1_weights.dtype == torch.uint8 else 1
    h, i = gemm1_weights.shape[2] * per_byte, gemm2_weights.shape[2] * per_byte
    _check_mxint4_pair(gemm1_weights, gemm1_scales, gemm2_weights, gemm2_scales, h, i)
    if per_byte == 1:
        gemm1_weights, gemm2_weights = pack_int4(gemm1_weights), pack_int4(gemm2_weights)
    return _prepare_mxint4(gemm1_weights.contiguous(), gemm1_scales.contiguous(),
                           gemm2_weights.contiguous(), gemm2_scales.contiguous(), checkpoint_order=False)


def unprepare_mxint4_moe_weights(gemm1_weights: torch.Tensor, gemm1_scales: torch.Tensor,
                                 gemm2_weights: torch.Tensor, gemm2_scales: torch.Tensor
                                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`prepare_mxint4_moe_weights`: canonical ``(w1 uint8 [E, 2I, H/2] ([up; gate]),
    s1 bf16 [E, 2I, H/32], w2 uint8 [E, H, I/2], s2 bf16 [E, H, I/32])``, weights packed; bit-exact."""
    return _unprepare_mxint4(gemm1_weights, gemm1_scales, gemm2_weights, gemm2_scales, checkpoint_order=False)


# ----------------------------------------------------------------------------------------------
# FP4 for b12x_fused_moe (SM120)


def _b12x_block(quant_mode: str) -> int:
    if quant_mode not in B12X_QUANT_MODES:
        raise ValueError(f"quant_mode: expected one of {tuple(B12X_QUANT_MODES)}, got {quant_mode!r}")
    return B12X_QUANT_MODES[quant_mode]


def _b12x_scale_dtypes(quant_mode: str) -> Tuple[torch.dtype, ...]:
    return (torch.float8_e4m3fn, torch.uint8) if quant_mode == "nvfp4" else (torch.uint8,)


def _check_b12x_weights(w1: torch.Tensor, w2: torch.Tensor, block: int) -> Tuple[int, int, int, int]:
    _check_tensor(w1, "w1_weight", (torch.uint8,), 3, "[E, M, H/2] packed e2m1")
    _check_tensor(w2, "w2_weight", (torch.uint8,), 3, "[E, H, I/2] packed e2m1")
    e, m, hh = w1.shape
    h, i = 2 * hh, 2 * w2.shape[2]
    if w2.shape[:2] != (e, h):
        raise ValueError(f"w2_weight: expected [E, H, I/2] = [{e}, {h}, ...] (from w1_weight), got shape "
                         f"{tuple(w2.shape)}")
    if m not in (i, 2 * i):
        raise ValueError(f"w1_weight: expected M = 2I = {2 * i} (gated) or I = {i} rows (I from w2_weight), "
                         f"got shape {tuple(w1.shape)}")
    _check_multiple(h, block, "w1_weight", "K = H", f"one scale per {block} values")
    _check_multiple(i, block, "w2_weight", "K = I", f"one scale per {block} values")
    return e, m, h, i


def prepare_b12x_fp4_moe_weights(w1_weight: torch.Tensor, w1_scales: torch.Tensor,
                                 w2_weight: torch.Tensor, w2_scales: torch.Tensor,
                                 quant_mode: str = "nvfp4") -> Dict[str, torch.Tensor]:
    """Canonical FP4 experts -> the ``b12x_fused_moe`` weight tensors.

    Input: packed e2m1 ``w1_weight`` uint8 ``[E, M, H/2]`` (rows ``[up; gate]``, ``M = 2I``, for a
    gated activation; ``M = I`` for relu2) and ``w2_weight`` ``[E, H, I/2]``; linear block scales
    ``w1_scales [E, M, H/B]``, ``w2_scales [E, H, I/B]`` -- ``B = 16`` ue4m3 (float8_e4m3fn or its
    uint8 bytes) for ``quant_mode="nvfp4"``, ``B = 32`` ue8m0 uint8 for ``"mxfp4"``.

    Returns ``{"w1_weight", "w1_weight_sf", "w2_weight", "w2_weight_sf"}``: the weights unchanged
    (contiguous; no copy when already contiguous), the scales 128x4-interleaved per expert
    (:func:`~cute_moe.layouts.block_scale_interleave`, rows padded to 128, columns to 4) and
    returned as the strided 6-D view ``(32, 4, Rp/128, 4, Cp/4, E)``
    (:func:`~cute_moe.layouts.scale_mma_view`), in the scales' dtype. ``w1_alpha`` / ``w2_alpha``
    (per-expert global decode scales) are the caller's, unchanged.
    """
    block = _b12x_block(quant_mode)
    e, m, h, i = _check_b12x_weights(w1_weight, w2_weight, block)
    dtypes = _b12x_scale_dtypes(quant_mode)
    _check_tensor(w1_scales, "w1_scales", dtypes, 3, f"[E, M, H/{block}]")
    _check_tensor(w2_scales, "w2_scales", dtypes, 3, f"[E, H, I/{block}]")
    _check_shape(w1_scales, "w1_scales", (e, m, h // block), f"[E, M, H/{block}]")
    _check_shape(w2_scales, "w2_scales", (e, h, i // block), f"[E, H, I/{block}]")
    _check_same_device({"w1_weight": w1_weight, "w1_scales": w1_scales,
                        "w2_weight": w2_weight, "w2_scales": w2_scales})
    sf1 = scale_mma_view(block_scale_interleave(w1_scales.contiguous()), m, h // block, e)
    sf2 = scale_mma_view(block_scale_interleave(w2_scales.contiguous()), h, i // block, e)
    return {"w1_weight": w1_weight.contiguous(), "w1_weight_sf": sf1,
            "w2_weight": w2_weight.contiguous(), "w2_weight_sf": sf2}


def unprepare_b12x_fp4_moe_weights(w1_weight: torch.Tensor, w1_weight_sf: torch.Tensor,
                                   w2_weight: torch.Tensor, w2_weight_sf: torch.Tensor,
                                   quant_mode: str = "nvfp4") -> Dict[str, torch.Tensor]:
    """Inverse of :func:`prepare_b12x_fp4_moe_weights`: ``{"w1_weight", "w1_scales", "w2_weight",
    "w2_scales"}`` with linear scales ``[E, M, H/B]``, ``[E, H, I/B]``; bit-exact."""
    block = _b12x_block(quant_mode)
    e, m, h, i = _check_b12x_weights(w1_weight, w2_weight, block)
    dtypes = _b12x_scale_dtypes(quant_mode)
    sfs = {}
    for name, sf, rows, cols in (("w1_weight_sf", w1_weight_sf, m, h // block),
                                 ("w2_weight_sf", w2_weight_sf, h, i // block)):
        _check_tensor(sf, name, dtypes, 6, "(32, 4, Rp/128, 4, Cp/4, E)")
        rp, cp = padded_scale_shape(rows, cols)
        expected = (32, 4, rp // SCALE_TILE_ROWS, 4, cp // SCALE_TILE_COLS, e)
        _check_shape(sf, name, expected, f"(32, 4, Rp/128, 4, Cp/4, E) for [{e}, {rows}, {cols}] scales")
        sfs[name] = block_scale_deinterleave(scale_mma_storage(sf), rows, cols)
    _check_same_device({"w1_weight": w1_weight, "w1_weight_sf": w1_weight_sf,
                        "w2_weight": w2_weight, "w2_weight_sf": w2_weight_sf})
    return {"w1_weight": w1_weight.contiguous(), "w1_scales": sfs["w1_weight_sf"],
            "w2_weight": w2_weight.contiguous(), "w2_scales": sfs["w2_weight_sf"]}
