"""Which half of a fused FC1 weight is gate, and the two row orders built from it.

This module is the home of the gate/up convention:

* checkpoints (HF, vLLM, compressed-tensors) store ``w13 = [gate (w1); up (w3)]``;
* canonical cute_moe FC1 is ``[up (w3); gate (w1)]`` -- row ``i < I`` is the *linear* (up)
  half, row ``I + i`` the *gate* half, ``act_i = silu(gate_i) * up_i``
  (FlashInfer ``tests/moe/trtllm_gen_fused_moe_utils.py::run_moe_dequant``: ``x0`` = first half
  is multiplied, ``x1`` = second half goes through the activation);
* after the gated-activation interleave, prepared row ``2i`` is up row ``i`` and ``2i+1`` is
  gate row ``i`` (before the epilogue row shuffle of :mod:`.row_shuffle`).

All functions act on the rows (dim -2) of ``[..., M, K]`` tensors and keep dtype and device.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

FC1_HALVES = ("up", "gate")  # canonical order of the two halves of a gated FC1 weight
CHECKPOINT_FC1_HALVES = ("gate", "up")  # w13 = [w1; w3] as checkpoints store it


def _require_rows(x: torch.Tensor, name: str = "x") -> int:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name}: expected [..., M, K] (at least 2 dimensions), got shape {tuple(x.shape)}")
    m = x.shape[-2]
    if m % 2:
        raise ValueError(f"{name}: rows (dim -2) must be even to hold two halves, got {m}")
    return m


def _check_num_rows(num_rows: int) -> None:
    if not isinstance(num_rows, int) or num_rows < 0 or num_rows % 2:
        raise ValueError(f"num_rows: expected an even non-negative int, got {num_rows!r}")


def gated_interleave_source_rows(num_rows: int, device=None) -> torch.Tensor:
    """int64 ``[M]``: interleaved row ``p`` reads input row ``src[p]``,
    ``src[2i] = i``, ``src[2i+1] = M/2 + i`` (top half on even rows, bottom half on odd rows)."""
    _check_num_rows(num_rows)
    half = num_rows // 2
    i = torch.arange(half, dtype=torch.int64, device=device)
    return torch.stack((i, i + half), dim=-1).flatten()


def gated_interleave_destination_rows(num_rows: int, device=None) -> torch.Tensor:
    """int64 ``[M]``: input row ``r`` moves to ``dst[r] = 2r`` for ``r < M/2``, else
    ``2(r - M/2) + 1``; the inverse permutation of :func:`gated_interleave_source_rows`."""
    _check_num_rows(num_rows)
    half = num_rows // 2
    r = torch.arange(num_rows, dtype=torch.int64, device=device)
    return torch.where(r < half, 2 * r, 2 * (r - half) + 1)


def interleave_gated_rows(x: torch.Tensor) -> torch.Tensor:
    """``[..., M, K]`` -> ``[..., M, K]`` with ``out[..., p, :] = x[..., src[p], :]``
    (:func:`gated_interleave_source_rows`): ``[top; bottom]`` becomes ``t0, b0, t1, b1, ...``."""
    m = _require_rows(x)
    return x.index_select(-2, gated_interleave_source_rows(m, x.device))


def deinterleave_gated_rows(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`interleave_gated_rows`: ``out[..., r, :] = x[..., dst[r], :]``."""
    m = _require_rows(x)
    return x.index_select(-2, gated_interleave_destination_rows(m, x.device))


def swap_halves(x: torch.Tensor, dim: int = -2) -> torch.Tensor:
    """``[A; B]`` along ``dim`` -> ``[B; A]`` (contiguous); its own inverse."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    size = x.size(dim)
    if size % 2:
        raise ValueError(f"x: size {size} of dim {dim} must be even to swap halves (shape {tuple(x.shape)})")
    half = size // 2
    return torch.cat((x.narrow(dim, half, half), x.narrow(dim, 0, half)), dim=dim).contiguous()


def reorder_w1w3_to_w3w1(weight: torch.Tensor, scale: Optional[torch.Tensor] = None,
                         dim: int = -2) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Checkpoint ``[w1 (gate); w3 (up)]`` -> canonical ``[w3 (up); w1 (gate)]`` along ``dim``,
    for a weight and (when given) its scales; vLLM's function of the same name.

    Swapping halves is an involution, so :func:`reorder_w3w1_to_w1w3` is the same map.
    """
    return swap_halves(weight, dim), None if scale is None else swap_halves(scale, dim)


def reorder_w3w1_to_w1w3(weight: torch.Tensor, scale: Optional[torch.Tensor] = None,
                         dim: int = -2) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Canonical ``[w3 (up); w1 (gate)]`` -> checkpoint ``[w1 (gate); w3 (up)]``; inverse of
    :func:`reorder_w1w3_to_w3w1` (the same half swap)."""
    return reorder_w1w3_to_w3w1(weight, scale, dim)
