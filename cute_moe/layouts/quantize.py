"""Deterministic block quantizers for test and benchmark weights (pure torch, any device).

Blocks run along the last dim (K). Every quantizer's output decodes exactly (in float32) with
the matching ``dequantize_*``; none of them is needed at inference time.

* MXINT4: group of 32, bf16 scale ``s = bf16(max(max(w) / 7, -min(w) / 8))`` (FlashInfer's
  ``mxint4_quantize`` range, rounded to bf16 *before* use), ``q = clamp(rne(w / s), -8, 7)``
  (``q = 0`` where ``s = 0``); ``w ~ q * s``.
* NVFP4: block of 16, global encode scale ``g = 448 * 6 / max|w|`` (1 when ``w`` is all zero),
  ue4m3 block scale ``s = e4m3(g * max|w_blk| / 6)``, ``code = e2m1(w * g / s)`` (0 where
  ``s = 0``); ``w ~ e2m1(code) * s / g``. The b12x ``w*_alpha`` is ``1 / g``.
* MXFP4: block of 32, ue8m0 scale ``s = 2**ceil(log2(max|w_blk| / 6))`` (the exponent rounded
  up as FlashInfer's reference does), ``code = e2m1(w / s)``; ``w ~ e2m1(code) * s``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .packing import (
    E2M1_MAX,
    INT4_MAX,
    INT4_MIN,
    UE4M3_MAX,
    decode_e2m1,
    decode_ue4m3,
    decode_ue8m0,
    encode_e2m1,
    encode_ue4m3,
    encode_ue8m0,
    pack_int4,
    pack_nibbles,
    unpack_int4,
    unpack_nibbles,
)

MXINT4_GROUP = 32
NVFP4_BLOCK = 16
MXFP4_BLOCK = 32


def _blocks(w: torch.Tensor, block: int, name: str = "w") -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"{name}: expected a floating tensor, got {w.dtype}")
    if w.dim() < 1 or w.shape[-1] % block:
        raise ValueError(f"{name}: last dim must be a multiple of {block}, got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name}: values must be finite")
    return w.float().unflatten(-1, (-1, block))


def _check_group(group: int) -> None:
    if isinstance(group, bool) or not isinstance(group, int) or group <= 0 or group % 2:
        raise ValueError(f"group: expected a positive even int, got {group!r}")


def quantize_mxint4(w: torch.Tensor, group: int = MXINT4_GROUP) -> Tuple[torch.Tensor, torch.Tensor]:
    """``w [..., K]`` float -> ``(packed uint8 [..., K/2], scales bf16 [..., K/group])``.

    ``s = bf16(max(max(w_g) / 7, -min(w_g) / 8))``, ``q = clamp(round_half_even(w / s), -8, 7)``
    (0 where ``s = 0``), packed two per byte by :func:`~.packing.pack_int4`.
    """
    _check_group(group)
    g = _blocks(w, group)
    hi = g.amax(-1, keepdim=True)
    lo = g.amin(-1, keepdim=True)
    scale = torch.maximum(hi / INT4_MAX, lo / INT4_MIN).clamp(min=0).to(torch.bfloat16)
    s = scale.float()
    q = torch.where(s > 0, g / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(g))
    q = q.round().clamp(INT4_MIN, INT4_MAX).to(torch.int8).flatten(-2)
    return pack_int4(q), scale.squeeze(-1)


def dequantize_mxint4(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``(packed uint8 [..., K/2], scales [..., K/group])`` -> float32 ``[..., K]``, ``w = q * s``
    (the group is ``K / scales.shape[-1]``)."""
    q = unpack_int4(packed).float()
    _check_scales(scales, q, "scales")
    return (q.unflatten(-1, (scales.shape[-1], -1)) * scales.float().unsqueeze(-1)).flatten(-2)


def _check_scales(scales: torch.Tensor, values: torch.Tensor, name: str) -> None:
    if not isinstance(scales, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(scales).__name__}")
    k = values.shape[-1]
    if scales.shape[:-1] != values.shape[:-1] or scales.shape[-1] == 0 or k % scales.shape[-1]:
        raise ValueError(f"{name}: shape {tuple(scales.shape)} does not match {k} values per row "
                         f"over leading shape {tuple(values.shape[:-1])}")


def quantize_nvfp4(w: torch.Tensor, global_scale: Optional[float] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``w [..., K]`` -> ``(packed uint8 [..., K/2], scales float8_e4m3fn [..., K/16], g float32 [])``.

    ``g = global_scale`` or ``448 * 6 / max|w|``; ``s = e4m3(g * max|w_blk| / 6)``;
    ``code = e2m1(w * g / s)``; nibbles packed low-first.
    """
    blk = _blocks(w, NVFP4_BLOCK)
    if global_scale is None:
        amax = blk.abs().amax()
        g = torch.where(amax > 0, (UE4M3_MAX * E2M1_MAX) / torch.where(amax > 0, amax, 1.0), 1.0)
    else:
        g = torch.as_tensor(global_scale, dtype=torch.float32, device=blk.device)
        if g.numel() != 1 or not bool(torch.isfinite(g).all()) or not bool((g > 0).all()):
            raise ValueError(f"global_scale: expected one finite positive number, got {global_scale!r}")
        g = g.reshape(())
    scale = encode_ue4m3(g * blk.abs().amax(-1, keepdim=True) / E2M1_MAX)
    s = decode_ue4m3(scale)
    x = torch.where(s > 0, blk * g / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(blk))
    codes = encode_e2m1(x.flatten(-2))
    return pack_nibbles(codes), scale.squeeze(-1), g.to(torch.float32)


def dequantize_nvfp4(packed: torch.Tensor, scales: torch.Tensor, global_scale) -> torch.Tensor:
    """``(packed [..., K/2], scales e4m3 [..., K/16], g)`` -> float32 ``[..., K]``,
    ``w = e2m1(code) * s / g``."""
    vals = decode_e2m1(unpack_nibbles(packed))
    _check_scales(scales, vals, "scales")
    s = decode_ue4m3(scales)
    g = torch.as_tensor(global_scale, dtype=torch.float32, device=vals.device)
    return (vals.unflatten(-1, (scales.shape[-1], -1)) * s.unsqueeze(-1)).flatten(-2) / g


def quantize_mxfp4(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``w [..., K]`` -> ``(packed uint8 [..., K/2], scales ue8m0 uint8 [..., K/32])``,
    ``s = 2**ceil(log2(max|w_blk| / 6))``, ``code = e2m1(w / s)``."""
    blk = _blocks(w, MXFP4_BLOCK)
    scale = encode_ue8m0(blk.abs().amax(-1, keepdim=True) / E2M1_MAX)
    s = decode_ue8m0(scale)
    codes = encode_e2m1((blk / s).flatten(-2))
    return pack_nibbles(codes), scale.squeeze(-1)


def dequantize_mxfp4(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``(packed [..., K/2], scales ue8m0 [..., K/32])`` -> float32 ``[..., K]``, ``w = e2m1(code) * s``."""
    vals = decode_e2m1(unpack_nibbles(packed))
    _check_scales(scales, vals, "scales")
    return (vals.unflatten(-1, (scales.shape[-1], -1)) * decode_ue8m0(scales).unsqueeze(-1)).flatten(-2)
