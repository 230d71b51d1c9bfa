"""Row shuffle of prepared weights and scales for the trtllm-gen epilogue tile.

Rows are permuted inside blocks of ``B`` rows, ``B = 32`` when ``epilogue_tile_m % 128 == 0``
and ``B = 16`` otherwise (epilogue tile 64). With ``g = B // 8`` the in-block map is

    map_B[i] = 8 * (i % g) + i // g        (map_32 = 0, 8, 16, 24, 1, 9, ...; map_16 = 0, 8, 1, 9, ...)

and input row ``r`` moves to prepared row ``dst[r] = B * (r // B) + map_B[r % B]``. Read the other
way, prepared row ``p`` holds input row

    src[p] = B * (p // B) + g * (p % 8) + (p % B) // 8.

The FC1 weight of a gated activation is interleaved first (:mod:`.gated_rows`), so prepared FC1
row ``p`` holds canonical row ``fc1_source_rows(...)[p]``: with ``j = src[p]``, intermediate
index ``j // 2`` of the up half (``j`` even) or of the gate half (``j`` odd).
"""

from __future__ import annotations

from typing import Tuple

import torch

from .gated_rows import gated_interleave_source_rows

SHUFFLE_ROW_GROUP = 8  # rows of one block that stay 8 apart after the shuffle
DEFAULT_EPILOGUE_TILE_M = 128


def shuffle_block_size(epilogue_tile_m: int = DEFAULT_EPILOGUE_TILE_M) -> int:
    """``32`` when ``epilogue_tile_m % 128 == 0``, else ``16``."""
    if isinstance(epilogue_tile_m, bool) or not isinstance(epilogue_tile_m, int) or epilogue_tile_m <= 0:
        raise ValueError(f"epilogue_tile_m: expected a positive int (64 or 128), got {epilogue_tile_m!r}")
    return 32 if epilogue_tile_m % 128 == 0 else 16


def shuffle_row_map(block_size: int) -> Tuple[int, ...]:
    """In-block destination map ``map_B[i] = 8 * (i % (B/8)) + i // (B/8)`` for ``B`` in {16, 32}."""
    if block_size not in (16, 32):
        raise ValueError(f"block_size: expected 16 or 32, got {block_size!r}")
    g = block_size // SHUFFLE_ROW_GROUP
    return tuple(SHUFFLE_ROW_GROUP * (i % g) + i // g for i in range(block_size))


def _check_num_rows(num_rows: int, block: int, epilogue_tile_m: int) -> None:
    if not isinstance(num_rows, int) or num_rows < 0 or num_rows % block:
        raise ValueError(f"num_rows: expected a non-negative multiple of the shuffle block {block} "
                         f"(epilogue_tile_m={epilogue_tile_m}), got {num_rows!r}")


def shuffle_destination_rows(num_rows: int, epilogue_tile_m: int = DEFAULT_EPILOGUE_TILE_M,
                             device=None) -> torch.Tensor:
    """int64 ``[M]``: input row ``r`` goes to prepared row ``B * (r // B) + map_B[r % B]``."""
    block = shuffle_block_size(epilogue_tile_m)
    _check_num_rows(num_rows, block, epilogue_tile_m)
    in_block = torch.tensor(shuffle_row_map(block), dtype=torch.int64, device=device)
    r = torch.arange(num_rows, dtype=torch.int64, device=device)
    return (r // block) * block + in_block[r % block]


def shuffle_source_rows(num_rows: int, epilogue_tile_m: int = DEFAULT_EPILOGUE_TILE_M,
                        device=None) -> torch.Tensor:
    """int64 ``[M]``: prepared row ``p`` reads input row ``B * (p // B) + (B/8) * (p % 8) + (p % B) // 8``
    (FlashInfer's ``get_shuffle_matrix_a_row_indices``; the inverse of
    :func:`shuffle_destination_rows`)."""
    block = shuffle_block_size(epilogue_tile_m)
    _check_num_rows(num_rows, block, epilogue_tile_m)
    g = block // SHUFFLE_ROW_GROUP
    p = torch.arange(num_rows, dtype=torch.int64, device=device)
    return (p // block) * block + g * (p % SHUFFLE_ROW_GROUP) + (p % block) // SHUFFLE_ROW_GROUP


def _rows_of(x: torch.Tensor) -> int:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x: expected [..., M, K] (at least 2 dimensions), got shape {tuple(x.shape)}")
    return x.shape[-2]


def shuffle_rows(x: torch.Tensor, epilogue_tile_m: int = DEFAULT_EPILOGUE_TILE_M) -> torch.Tensor:
    """``[..., M, K]`` -> ``[..., M, K]``, ``out[..., p, :] = x[..., src[p], :]``
    (:func:`shuffle_source_rows`)."""
    m = _rows_of(x)
    return x.index_select(-2, shuffle_source_rows(m, epilogue_tile_m, x.device))


def unshuffle_rows(x: torch.Tensor, epilogue_tile_m: int = DEFAULT_EPILOGUE_TILE_M) -> torch.Tensor:
    """Inverse of :func:`shuffle_rows`: ``out[..., r, :] = x[..., dst[r], :]``."""
    m = _rows_of(x)
    return x.index_select(-2, shuffle_destination_rows(m, epilogue_tile_m, x.device))


def fc1_source_rows(num_rows: int, gated: bool, epilogue_tile_m: int = DEFAULT_EPILOGUE_TILE_M,
                    device=None) -> torch.Tensor:
    """int64 ``[M]``: prepared FC1 row ``p`` holds canonical row ``interleave_src[shuffle_src[p]]``
    (gated) or ``shuffle_src[p]`` (not gated); FlashInfer's ``permute0[permute1]``."""
    shuffle_src = shuffle_source_rows(num_rows, epilogue_tile_m, device)
    if not gated:
        return shuffle_src
    return gated_interleave_source_rows(num_rows, device)[shuffle_src]


def fc1_destination_rows(num_rows: int, gated: bool, epilogue_tile_m: int = DEFAULT_EPILOGUE_TILE_M,
                         device=None) -> torch.Tensor:
    """int64 ``[M]``: canonical FC1 row ``r`` lands on prepared row ``dst[r]``; the inverse
    permutation of :func:`fc1_source_rows`."""
    src = fc1_source_rows(num_rows, gated, epilogue_tile_m, device)
    dst = torch.empty_like(src)
    dst[src] = torch.arange(num_rows, dtype=torch.int64, device=src.device)
    return dst
