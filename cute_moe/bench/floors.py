"""The two floors of one MoE call: bytes that must move, and FLOPs that must run.

byte floor = (weights of the distinct experts the routing activates
              + hidden_states in + output out) / measured copy bandwidth
FLOP floor = 2 * T * top_k * (FC1 rows * H + H * I) / measured dense bf16 rate

Weight bytes per expert: bf16 = 2 bytes per value; mxint4 = 0.5 byte per value plus one bf16
scale per 32 values; nvfp4 = 0.5 byte per value plus one ue4m3 byte per 16 values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .measure import Ceilings
from .presets import MoeShape


def weight_bytes_per_expert(shape: MoeShape) -> float:
    params = shape.weight_params_per_expert()
    if shape.weight_format == "mxint4":
        return params * 0.5 + params / 32 * 2
    if shape.weight_format == "nvfp4":
        return params * 0.5 + params / 16
    return params * 2.0


@dataclass(frozen=True)
class Floors:
    bytes_moved: float
    flops: float
    byte_floor_us: float
    flop_floor_us: float

    @property
    def floor_us(self) -> float:
        return max(self.byte_floor_us, self.flop_floor_us)


def floors_for(shape: MoeShape, topk_ids: torch.Tensor, num_tokens: int, ceilings: Ceilings) -> Floors:
    """Floors for one routing (``topk_ids`` [T, K], global expert ids)."""
    active = int(torch.unique(topk_ids).numel()) if num_tokens else 0
    bytes_moved = active * weight_bytes_per_expert(shape) + 2 * num_tokens * shape.hidden_size * 2
    flops = 2.0 * num_tokens * shape.top_k * shape.weight_params_per_expert()
    return Floors(
        bytes_moved=bytes_moved,
        flops=flops,
        byte_floor_us=bytes_moved / ceilings.copy_bytes_per_s * 1e6,
        flop_floor_us=flops / ceilings.bf16_flops_per_s * 1e6,
    )
