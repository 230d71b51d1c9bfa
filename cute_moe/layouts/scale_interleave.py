"""The 128x4 block-scale interleave (FlashInfer's ``block_scale_interleave``, SWIZZLED_128x4).

A scale matrix ``sf [R, C]`` (one row per weight row, one column per K block) is zero-padded to
``Rp = ceil(R / 128) * 128`` rows and ``Cp = ceil(C / 4) * 4`` columns and stored flat, element
``(r, c)`` at

    offset(r, c) = (r // 128) * 128 * Cp + (c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4

i.e. tiles of 128 rows x 4 columns (512 elements), tiles row-major over ``(r // 128, c // 4)``;
inside a tile the 128 rows are split as ``r = 32 * r1 + r0`` and stored ``[r0 (32), r1 (4), c (4)]``.
Several experts ``[E, R, C]`` are stored one after another, ``Rp * Cp`` elements each.

The same bytes seen as a 6-D tensor ``(32, 4, Rp/128, 4, Cp/4, E)`` (dims ``r0, r1, row tile,
c % 4, column tile, expert``) are what the b12x kernels take as ``w*_weight_sf``
(:func:`scale_mma_view`).
"""

from __future__ import annotations

from typing import Tuple

import torch

SCALE_TILE_ROWS = 128
SCALE_TILE_COLS = 4
_ROW_SUBTILE = 32  # r0 range inside a 128-row tile
_ROW_SUBTILES = SCALE_TILE_ROWS // _ROW_SUBTILE  # r1 range


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _check_dims(rows: int, cols: int) -> None:
    for name, v in (("rows", rows), ("cols", cols)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")


def padded_scale_shape(rows: int, cols: int) -> Tuple[int, int]:
    """``(ceil(rows / 128) * 128, ceil(cols / 4) * 4)``."""
    _check_dims(rows, cols)
    return _round_up(rows, SCALE_TILE_ROWS), _round_up(cols, SCALE_TILE_COLS)


def interleaved_scale_size(rows: int, cols: int) -> int:
    """Elements of one interleaved ``[rows, cols]`` scale matrix: ``Rp * Cp``."""
    rp, cp = padded_scale_shape(rows, cols)
    return rp * cp


def interleaved_scale_offsets(rows: int, cols: int, device=None) -> torch.Tensor:
    """int64 ``[rows, cols]``: flat position ``offset(r, c)`` of each scale (module docstring)."""
    _, cp = padded_scale_shape(rows, cols)
    r = torch.arange(rows, dtype=torch.int64, device=device).unsqueeze(1)
    c = torch.arange(cols, dtype=torch.int64, device=device).unsqueeze(0)
    return ((r // SCALE_TILE_ROWS) * SCALE_TILE_ROWS * cp
            + (c // SCALE_TILE_COLS) * (SCALE_TILE_ROWS * SCALE_TILE_COLS)
            + (r % _ROW_SUBTILE) * (_ROW_SUBTILES * SCALE_TILE_COLS)
            + ((r % SCALE_TILE_ROWS) // _ROW_SUBTILE) * SCALE_TILE_COLS
            + c % SCALE_TILE_COLS)


def _as_batched(sf: torch.Tensor) -> torch.Tensor:
    if not isinstance(sf, torch.Tensor):
        raise TypeError(f"sf: expected a torch.Tensor, got {type(sf).__name__}")
    if sf.dim() not in (2, 3):
        raise ValueError(f"sf: expected [rows, cols] or [experts, rows, cols], got shape {tuple(sf.shape)}")
    _check_dims(sf.shape[-2], sf.shape[-1])
    return sf if sf.dim() == 3 else sf.unsqueeze(0)


def _tiles(padded: torch.Tensor) -> torch.Tensor:
    """``[E, Rp, Cp]`` -> ``[E, Rp/128, Cp/4, 32 (r0), 4 (r1), 4 (c)]`` (a permuted view)."""
    e, rp, cp = padded.shape
    v = padded.view(e, rp // SCALE_TILE_ROWS, _ROW_SUBTILES, _ROW_SUBTILE, cp // SCALE_TILE_COLS, SCALE_TILE_COLS)
    return v.permute(0, 1, 4, 3, 2, 5)


def block_scale_interleave(sf: torch.Tensor) -> torch.Tensor:
    """``[R, C]`` or ``[E, R, C]`` -> 1-D ``[E * Rp * Cp]`` (``E = 1`` for 2-D input), element
    ``(e, r, c)`` at ``e * Rp * Cp + offset(r, c)``, padding zero; dtype and device kept."""
    x = _as_batched(sf)
    e, rows, cols = x.shape
    rp, cp = padded_scale_shape(rows, cols)
    padded = x.new_zeros((e, rp, cp))
    padded[:, :rows, :cols] = x
    return _tiles(padded).contiguous().flatten()


def block_scale_deinterleave(swizzled: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`block_scale_interleave` given the original ``rows, cols``.

    ``swizzled`` is 1-D with ``E * Rp * Cp`` elements (-> ``[rows, cols]`` when ``E = 1``, else
    ``[E, rows, cols]``), or ``[..., Rp * Cp]`` (-> ``[..., rows, cols]``). Padding is dropped.
    """
    if not isinstance(swizzled, torch.Tensor):
        raise TypeError(f"swizzled: expected a torch.Tensor, got {type(swizzled).__name__}")
    rp, cp = padded_scale_shape(rows, cols)
    size = rp * cp
    if swizzled.dim() == 1:
        n = swizzled.numel()
        if n == 0 or n % size:
            raise ValueError(f"swizzled: {n} elements is not a whole number of {rows}x{cols} scale "
                             f"matrices ({size} elements each after padding to {rp}x{cp})")
        lead: Tuple[int, ...] = () if n == size else (n // size,)
    else:
        if swizzled.shape[-1] != size:
            raise ValueError(f"swizzled: last dim must be {size} (= {rp}x{cp}, one padded {rows}x{cols} "
                             f"scale matrix), got shape {tuple(swizzled.shape)}")
        lead = tuple(swizzled.shape[:-1])
    tiles = swizzled.contiguous().view(-1, rp // SCALE_TILE_ROWS, cp // SCALE_TILE_COLS,
                                       _ROW_SUBTILE, _ROW_SUBTILES, SCALE_TILE_COLS)
    # [E, mt, kt, r0, r1, c] -> [E, mt, r1, r0, kt, c] = [E, Rp, Cp]
    padded = tiles.permute(0, 1, 4, 3, 2, 5).reshape(-1, rp, cp)
    return padded[:, :rows, :cols].reshape(lead + (rows, cols)).contiguous()


def scale_mma_view(swizzled: torch.Tensor, rows: int, cols: int, num_experts: int) -> torch.Tensor:
    """Interleaved scales of ``num_experts`` ``[rows, cols]`` matrices (any shape, contiguous,
    ``E * Rp * Cp`` elements) -> the strided 6-D view ``(32, 4, Rp/128, 4, Cp/4, E)`` that b12x
    takes: element ``(r0, r1, mt, c0, kt, e)`` is scale ``(e, 128*mt + 32*r1 + r0, 4*kt + c0)``."""
    if not isinstance(swizzled, torch.Tensor):
        raise TypeError(f"swizzled: expected a torch.Tensor, got {type(swizzled).__name__}")
    if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts <= 0:
        raise ValueError(f"num_experts: expected a positive int, got {num_experts!r}")
    rp, cp = padded_scale_shape(rows, cols)
    if swizzled.numel() != num_experts * rp * cp:
        raise ValueError(f"swizzled: expected {num_experts} x {rp} x {cp} = {num_experts * rp * cp} elements, "
                         f"got {swizzled.numel()} (shape {tuple(swizzled.shape)})")
    if not swizzled.is_contiguous():
        raise ValueError("swizzled: expected a contiguous tensor")
    storage = swizzled.view(num_experts, rp // SCALE_TILE_ROWS, cp // SCALE_TILE_COLS,
                            _ROW_SUBTILE, _ROW_SUBTILES, SCALE_TILE_COLS)
    return storage.permute(3, 4, 1, 5, 2, 0)


def scale_mma_storage(mma_view: torch.Tensor) -> torch.Tensor:
    """6-D ``(32, 4, Rp/128, 4, Cp/4, E)`` view -> contiguous ``[E, Rp * Cp]`` interleaved scales;
    inverse of :func:`scale_mma_view` (reshape by :func:`block_scale_deinterleave`)."""
    if not isinstance(mma_view, torch.Tensor):
        raise TypeError(f"mma_view: expected a torch.Tensor, got {type(mma_view).__name__}")
    if mma_view.dim() != 6 or tuple(mma_view.shape[:2]) != (_ROW_SUBTILE, _ROW_SUBTILES) \
            or mma_view.shape[3] != SCALE_TILE_COLS:
        raise ValueError(f"mma_view: expected shape (32, 4, Rp/128, 4, Cp/4, E), got {tuple(mma_view.shape)}")
    e = mma_view.shape[5]
    return mma_view.permute(5, 2, 4, 0, 1, 3).contiguous().view(e, -1)
