"""The MoE plan: which permuted rows and GEMM tiles each (token, slot) pair lands in.

Every buffer size is a function of (num_tokens, top_k, local_num_experts, tile_rows) only,
never of the routing itself, so one CUDA graph serves every routing of the same token count.

Bounds. Expert e with c_e routed pairs needs ceil(c_e / tile_rows) tiles; at most
min(L, T*K) experts are non-empty and sum(c_e) <= T*K, so

    tiles <= (T*K + min(L, T*K) * (tile_rows - 1)) // tile_rows = max_tiles
    rows  <= max_tiles * tile_rows = max_padded_rows
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TILE_INFO_FIELDS = 4  # (local_expert, first_row, num_rows, raster_group)
COUNTER_FIELDS = 4  # (num_tiles, rows_in_use, 0, 0)
# Persistent GEMM schedules walk (tile, m-block) items in raster groups: up to RASTER_TILES
# consecutive tiles of one expert, every m-block of a group before the next group (the group's
# tiles share each weight block, its m-blocks each token tile, while both are in L2). A tile's
# group is tile_info field 3: first_tile * RASTER_TILES + tiles - 1. Groups never span two
# experts: a group that did would read the weights of its first expert twice.
RASTER_TILES = 8


@dataclass(frozen=True)
class PlanShape:
    num_tokens: int
    top_k: int
    local_num_experts: int
    tile_rows: int

    def __post_init__(self):
        for name in ("num_tokens", "top_k", "local_num_experts", "tile_rows"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{name}: expected int, got {type(v).__name__}")
        if self.num_tokens < 0:
            raise ValueError(f"num_tokens: expected >= 0, got {self.num_tokens}")
        if self.top_k < 1 or self.local_num_experts < 1 or self.tile_rows < 1:
            raise ValueError(
                f"top_k, local_num_experts and tile_rows must be >= 1, got "
                f"{self.top_k}, {self.local_num_experts}, {self.tile_rows}"
            )

    @property
    def num_pairs(self) -> int:
        return self.num_tokens * self.top_k

    @property
    def max_tiles(self) -> int:
        pairs = self.num_pairs
        return (pairs + min(self.local_num_experts, pairs) * (self.tile_rows - 1)) // self.tile_rows

    @property
    def max_padded_rows(self) -> int:
        return self.max_tiles * self.tile_rows


@dataclass
class MoePlan:
    """Device tensors of one plan (int32; see docs/internals.md for each one's meaning)."""

    shape: PlanShape
    expert_counts: torch.Tensor  # [L]
    expert_offsets: torch.Tensor  # [L + 1]
    expanded_idx_to_permuted_idx: torch.Tensor  # [T * K]
    permuted_idx_to_expanded_idx: torch.Tensor  # [max_padded_rows]
    tile_info: torch.Tensor  # [max_tiles, 4]
    counters: torch.Tensor  # [4]

    @classmethod
    def empty(cls, shape: PlanShape, device) -> "MoePlan":
        """Uninitialized buffers (at least one element each, so every pointer is valid)."""

        def buf(*dims):
            dims = tuple(max(d, 1) if i == 0 else d for i, d in enumerate(dims))
            return torch.empty(dims, dtype=torch.int32, device=device)

        return cls(
            shape=shape,
            expert_counts=buf(shape.local_num_experts),
            expert_offsets=buf(shape.local_num_experts + 1),
            expanded_idx_to_permuted_idx=buf(shape.num_pairs),
            permuted_idx_to_expanded_idx=buf(shape.max_padded_rows),
            tile_info=buf(shape.max_tiles, TILE_INFO_FIELDS),
            counters=buf(COUNTER_FIELDS),
        )

    @property
    def num_tiles(self) -> torch.Tensor:
        """Device scalar view; reading it on the host synchronizes (tests only)."""
        return self.counters[0]

    @property
    def rows_in_use(self) -> torch.Tensor:
        return self.counters[1]
