"""BlockMajorK: a ``[M, K]`` matrix stored as ``[K / blockK, M, blockK]``.

``blockK`` counts *bytes*: 128 bytes is 64 bf16 values, or 128 bytes of packed int4 / e2m1
(256 values). For an element type of ``s`` bytes, ``bk = block_bytes / s`` elements and

    out[..., kb, m, j] = x[..., m, kb * bk + j]          (kb < K / bk, j < bk)

so one block of ``bk`` consecutive K elements of every row is contiguous, rows of a block are
``bk`` elements apart and blocks ``M * bk`` apart.
"""

from __future__ import annotations

import torch

BLOCK_K_BYTES = 128


def block_k_elements(dtype: torch.dtype, block_bytes: int = BLOCK_K_BYTES) -> int:
    """Elements of ``dtype`` in one ``block_bytes`` block (64 for bf16, 128 for uint8)."""
    size = torch.empty(0, dtype=dtype).element_size()
    if not isinstance(block_bytes, int) or block_bytes <= 0 or block_bytes % size:
        raise ValueError(f"block_bytes: expected a positive multiple of {size} ({dtype}), got {block_bytes!r}")
    return block_bytes // size


def to_block_major_k(x: torch.Tensor, block_bytes: int = BLOCK_K_BYTES) -> torch.Tensor:
    """``[..., M, K]`` -> contiguous ``[..., K / bk, M, bk]`` (FlashInfer's ``convert_to_block_layout``
    applied to the bytes of each matrix)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x: expected [..., M, K] (at least 2 dimensions), got shape {tuple(x.shape)}")
    bk = block_k_elements(x.dtype, block_bytes)
    m, k = x.shape[-2:]
    if k % bk:
        raise ValueError(f"x: K = {k} (last dim) must be a multiple of {bk} {x.dtype} elements "
                         f"({block_bytes} bytes)")
    return x.unflatten(-1, (k // bk, bk)).transpose(-3, -2).contiguous()


def from_block_major_k(x: torch.Tensor) -> torch.Tensor:
    """``[..., K / bk, M, bk]`` -> contiguous ``[..., M, K]``; inverse of :func:`to_block_major_k`
    (``bk`` is read from the last dim)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 3:
        raise ValueError(f"x: expected [..., K/blockK, M, blockK] (at least 3 dimensions), got shape {tuple(x.shape)}")
    return x.transpose(-3, -2).flatten(-2).contiguous()
