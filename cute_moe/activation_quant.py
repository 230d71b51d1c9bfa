"""Host side of the NVFP4 activation quantization (cute_moe.kernels.fp4_quantize): the cached
kernel and its launch on plain addresses."""

from __future__ import annotations

from .kernels import runtime


def quantize_kernel(arch: str, gather: bool, packed: bool = False):
    """The launcher of ``QuantizeRows(gather, packed)`` for ``arch``, compiled or loaded on first use."""
    from .kernels.fp4_quantize import QuantizeRows, quantize_example_args

    return runtime.KERNELS.get(("nvfp4_quantize_rows", bool(gather), bool(packed)), arch,
                               lambda: (QuantizeRows(bool(gather), bool(packed)), quantize_example_args(bool(packed))))


def launch_quantize(kernel, src: int, dst: int, global_scale: int, p2e: int, tile_info: int, counters: int,
                    k: int, top_k: int, local_num_experts: int, max_tiles: int, tile_rows: int, stream: int) -> None:
    """Quantize the plan's rows of ``k`` values (a multiple of 16; 32-byte aligned rows) with the
    float32 per-expert ``global_scale``; ``max_tiles > 0``."""
    kernel(src, dst, global_scale, p2e, tile_info, counters, k, top_k, local_num_experts, max_tiles, tile_rows,
           stream)
