"""Weight layout transforms of FlashInfer's prepared MoE weights, each with its exact inverse.

Pure torch; every function keeps device and dtype. Formulas are in each module's docstring and
in ``docs/layouts.md``.

* :mod:`.gated_rows` -- gate/up convention, gated-activation row interleave, w1/w3 half swap;
* :mod:`.row_shuffle` -- epilogue-tile row shuffle (16- or 32-row blocks) and the combined
  prepared-row maps of FC1 / FC2;
* :mod:`.block_major` -- BlockMajorK ``[M, K] <-> [K/blockK, M, blockK]``;
* :mod:`.scale_interleave` -- 128x4 block-scale interleave and b12x's 6-D view of it;
* :mod:`.packing` -- int4 / uint4b8 / e2m1 packing, ue4m3 / ue8m0 scale encodings;
* :mod:`.quantize` -- deterministic MXINT4 / NVFP4 / MXFP4 quantizers for tests.
"""

from .block_major import BLOCK_K_BYTES, block_k_elements, from_block_major_k, to_block_major_k
from .gated_rows import (
    CHECKPOINT_FC1_HALVES,
    FC1_HALVES,
    deinterleave_gated_rows,
    gated_interleave_destination_rows,
    gated_interleave_source_rows,
    interleave_gated_rows,
    reorder_w1w3_to_w3w1,
    reorder_w3w1_to_w1w3,
    swap_halves,
)
from .packing import (
    E2M1_VALUES,
    decode_e2m1,
    decode_ue4m3,
    decode_ue8m0,
    encode_e2m1,
    encode_ue4m3,
    encode_ue8m0,
    int4_to_uint4b8,
    pack_int4,
    pack_nibbles,
    pack_uint4b8,
    uint4b8_to_int4,
    unpack_int4,
    unpack_nibbles,
    unpack_uint4b8,
)
from .quantize import (
    dequantize_mxfp4,
    dequantize_mxint4,
    dequantize_nvfp4,
    quantize_mxfp4,
    quantize_mxint4,
    quantize_nvfp4,
)
from .row_shuffle import (
    DEFAULT_EPILOGUE_TILE_M,
    fc1_destination_rows,
    fc1_source_rows,
    shuffle_block_size,
    shuffle_destination_rows,
    shuffle_row_map,
    shuffle_rows,
    shuffle_source_rows,
    unshuffle_rows,
)
from .scale_interleave import (
    SCALE_TILE_COLS,
    SCALE_TILE_ROWS,
    block_scale_deinterleave,
    block_scale_interleave,
    interleaved_scale_offsets,
    interleaved_scale_size,
    padded_scale_shape,
    scale_mma_storage,
    scale_mma_view,
)

__all__ = [
    "BLOCK_K_BYTES", "CHECKPOINT_FC1_HALVES", "DEFAULT_EPILOGUE_TILE_M", "E2M1_VALUES", "FC1_HALVES",
    "SCALE_TILE_COLS", "SCALE_TILE_ROWS",
    "block_k_elements", "block_scale_deinterleave", "block_scale_interleave", "decode_e2m1",
    "decode_ue4m3", "decode_ue8m0", "deinterleave_gated_rows", "dequantize_mxfp4", "dequantize_mxint4",
    "dequantize_nvfp4", "encode_e2m1", "encode_ue4m3", "encode_ue8m0", "fc1_destination_rows",
    "fc1_source_rows", "from_block_major_k", "gated_interleave_destination_rows",
    "gated_interleave_source_rows", "int4_to_uint4b8", "interleave_gated_rows",
    "interleaved_scale_offsets", "interleaved_scale_size", "pack_int4", "pack_nibbles", "pack_uint4b8",
    "padded_scale_shape", "quantize_mxfp4", "quantize_mxint4", "quantize_nvfp4", "reorder_w1w3_to_w3w1",
    "reorder_w3w1_to_w1w3", "scale_mma_storage", "scale_mma_view", "shuffle_block_size",
    "shuffle_destination_rows", "shuffle_row_map", "shuffle_rows", "shuffle_source_rows", "swap_halves",
    "to_block_major_k", "uint4b8_to_int4", "unpack_int4", "unpack_nibbles", "unpack_uint4b8",
    "unshuffle_rows",
]
