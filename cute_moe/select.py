"""Backend selector of the grouped GEMMs: variant and tiles from shapes, one data table per arch.

The choice depends on shapes only (``T * top_k`` routed rows, ``L`` local experts, ``H``, ``I``,
the arch), never on the routing, so a CUDA graph captured for one ``T`` stays valid. It is
made from the expected routed rows per local expert, ``rows = T * top_k / L``:

* the variant: the first entry of ``VARIANT_BY_ROWS[arch]`` whose bound is ``>= rows``;
* the token tile ``bn`` (= the plan's ``tile_rows``): the first entry of ``BN_BY_ROWS[variant]``
  (MXINT4: ``INT4_BN_BY_ROWS`` where it has the variant) whose bound is ``>= rows``: padding each
  expert to a multiple of ``bn`` wastes little;
* the FC1 / FC2 tiles: ``TILES[arch][(variant, bn)]``; a micro FC1 whose grid would leave most
  SMs with one CTA and the rest with two takes 32 weight rows instead of 64 (``sparse_micro_tile``).

``CUTE_MOE_GEMM_VARIANT=micro|static|dynamic|wgmma`` or the ``variant`` argument forces the variant
(``wgmma``: sm_90a, bf16 or MXINT4 weights).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Dict, Optional, Tuple

import torch

from .enums import ActivationType
from .kernels.gemm_config import VARIANTS, GemmConfig, TileConfig, wgmma_runs
from .plan import PlanShape

ENV_VARIANT = "CUTE_MOE_GEMM_VARIANT"
DEFAULT_ARCH = "sm_90a"

# Thresholds on routed rows per local expert (T * top_k / L), from H100 measurements of FC1 + FC2
# (tools/bench_gemm.py; docs/gemm_notes.md has the full tables). Times in us, all experts local:
#
#   rows/expert  shape           micro 64x8 +pdl  static           dynamic           torch
#   0.06 (T=1)   qwen3-30b-a3b   32.9             33.1 (64x8)      33.4 (64x8)       61.3
#   0.5 (T=8)    qwen3-30b-a3b   152.8            159.6 (64x8)     160.8 (64x8)      206.4
#   4 (T=64)     qwen3-30b-a3b   389.7            406.1 (64x8)     404.0 (64x8)      468.7
#   2 (T=64)     deepseek-v3     6234.9           6626.8 (64x8)    6363.9 (64x8)     6874.1
#   16 (T=512)   deepseek-v3     9177.4 (64x16)   8391.8 (128x32)  7706.7 (128x32)   8145.9
#   32 (T=512)   qwen3-30b-a3b   544.7 (64x16)    471.2 (128x32)   465.1 (128x32)    503.8
#   128 (T=4096) deepseek-v3     44406 (64x16)    18396 (128x64)   12124 (256x128)   12323
#   256 (T=4096) qwen3-30b-a3b   3237 (64x16)     1299 (128x64)    1093 (256x128)    949.7
#
# On SM90 the wgmma instantiation takes over above 4 rows per expert. End to end on one H100
# (us, cute-moe-bench --variants, preset routing):
#
#   rows/expert  shape            micro    dynamic  wgmma
#   4 (T=128)    deepseek-v3      5248     4648     4275
#   4 (T=128)    gpt-oss-120b     2053     2085     2047
#   4 (T=64)     qwen3-30b-a3b    403      416      413
#   6 (T=192)    deepseek-v3      6443     4861     4671
#   6 (T=96)     qwen3-30b-a3b    412      435      419
#   8 (T=256)    deepseek-v3      7600     5283     5015
#   8 (T=256)    gpt-oss-120b     2327     2141     2086
#   8 (T=128)    qwen3-30b-a3b    417      439      423
#   16 (T=512)   deepseek-v3      8572     5967     5284
#
# From 4 rows on wgmma beats the persistent warp-MMA grid on every measured shape (its narrow
# tails keep the padding of 64-row tiles small); micro stays up to 4 rows, where it wins on
# qwen3-30b-a3b's short experts (2%) and loses on deepseek-v3 (23%).
#
_SM90_VARIANT_BY_ROWS: Tuple[Tuple[float, str], ...] = (
    (4.0, "micro"),
    (float("inf"), "wgmma"),
)
# Arches without the warpgroup MMA use the warp-MMA family at every size (4-bit weights: their
# own tables below, on every arch; NVFP4 never takes the wgmma instantiation).
_WARP_VARIANT_BY_ROWS: Tuple[Tuple[float, str], ...] = (
    (4.0, "micro"),
    (float("inf"), "dynamic"),
)
# MXINT4 experts dequantized into the MMA registers (one warp along N), H100, end to end (us,
# graph replay, cute-moe-bench --variants):
#
#   rows/expert  shape                   micro    static   dynamic
#   0.5 (T=8)    qwen3-30b-a3b mxint4    78.7     83.6     102.7
#   1 (T=8)      kimi-k2, 64 experts     345.2    354.5    456.4
#   4 (T=64)     qwen3-30b-a3b mxint4    152.9    155.2    207.9
#   8 (T=64)     kimi-k2, 64 experts     733.3    755.5    892.1
#   32 (T=512)   qwen3-30b-a3b mxint4    360.9    366.1    377.8
#   64 (T=512)   kimi-k2, 64 experts     2735.1   2196.2   2604.2
#
# The persistent grid loses at every decode point (its CTAs interleave weight blocks that the
# tiles-fastest grids stream together); micro holds up to 8 rows, static's 128x64 tile at 64.
_INT4_VARIANT_BY_ROWS: Tuple[Tuple[float, str], ...] = (
    (8.0, "micro"),
    (64.0, "static"),
    (float("inf"), "dynamic"),
)
# SM90: the wgmma instantiation with MXINT4 dequantized into shared memory for its warpgroup MMA
# (grouped_gemm_sm90.py; before the register feed below). Same H100 session, forced variants (us):
#
#   rows/expert  shape                   micro    static   wgmma    dynamic
#   8 (T=128)    qwen3-30b-a3b mxint4    192.7    232.1    319.0    -
#   8 (T=64)     kimi-k2, 64 experts     775.8    759.1    1042.8   -
#   16 (T=256)   qwen3-30b-a3b mxint4    228.9    225.2    312.1    -
#   16 (T=128)   kimi-k2, 64 experts     910.7    895.7    1145.7   -
#   32 (T=512)   qwen3-30b-a3b mxint4    -        366.0    300.9    378.9
#   32 (T=256)   kimi-k2, 64 experts     1471.6   1602.4   1217.6   -
#   64 (T=512)   kimi-k2, 64 experts     -        2157.7   1745.9   2606.7
#   256 (T=4096) qwen3-30b-a3b mxint4    -        1528.8   953.6    1414.5
#   512 (T=4096) kimi-k2, 64 experts     -        12904.9  6964.2   10155.1
#
# With A fed from registers (128-row and narrower tiles), same H100 session (us):
#
#   rows/expert  shape                   micro    static   wgmma (before)
#   8 (T=128)    qwen3-30b-a3b mxint4    186.5    223.3    214.2 (258.6)
#   16 (T=256)   qwen3-30b-a3b mxint4    220.5    213.3    225.4 (265.1)
#   16 (T=128)   kimi-k2, 64 experts     922.6    827.8    815.7 (1010.0)
#   32 (T=256)   kimi-k2, 64 experts     1534.0   1619.4   1056.0 (1254.5)
#
# At 16 rows wgmma and static now tie (-1.5% and +5.7%); the bounds stay.
_SM90_INT4_VARIANT_BY_ROWS: Tuple[Tuple[float, str], ...] = (
    (8.0, "micro"),
    (16.0, "static"),
    (float("inf"), "wgmma"),
)
INT4_VARIANT_BY_ROWS: Dict[str, Tuple[Tuple[float, str], ...]] = {
    "sm_90a": _SM90_INT4_VARIANT_BY_ROWS, "sm_100a": _INT4_VARIANT_BY_ROWS, "sm_120a": _INT4_VARIANT_BY_ROWS}
# NVFP4 experts (b12x, W4A16 dequantizing in the kernel), H100, end to end (us, graph replay):
#
#   rows/expert  shape                    micro 64x8/16  static 128x32  dynamic 128x32
#   0.5 (T=8)    qwen3-30b-a3b            100.5          103.6          147.3
#   4 (T=64)     qwen3-30b-a3b            218.7          218.5          325.6
#   1 (T=8)      deepseek-v3, 64 experts  504.5          508.6          756.2
#   8 (T=64)     deepseek-v3, 64 experts  1255.2         933.5          1216.9
#
# The tiles-fastest grid keeps the CTAs that dequantize one weight block together; the
# persistent grid (2 CTAs per SM) loses at every measured decode point. 16 is the bound of
# static's 32-row tile.
_FP4_VARIANT_BY_ROWS: Tuple[Tuple[float, str], ...] = (
    (4.0, "micro"),
    (16.0, "static"),
    (float("inf"), "dynamic"),
)

# bn per variant, persistent FC1 + FC2 (us):
#
#   rows/expert  shape          128x32   128x64   256x128
#   8 (T=256)    deepseek-v3    7543     7782     8002
#   8 (T=256)    qwen3-30b-a3b  429      469      578
#   16 (T=512)   deepseek-v3    7707     8214     8225
#   32 (T=512)   qwen3-30b-a3b  465      467      538
#   32 (T=1024)  deepseek-v3    10308    8234     8315
#   64 (T=1024)  qwen3-30b-a3b  523      545      522
#   64 (T=2048)  deepseek-v3    15833    11634    8630
#   128 (T=2048) qwen3-30b-a3b  853      743      687
#   128 (T=4096) deepseek-v3    -        19010    12037
#   256 (T=4096) qwen3-30b-a3b  -        -        1076
#
# Every bound below sits on measured points (at 32 rows the 128x64 tile loses 0.4% on qwen3 and
# wins 20% on deepseek-v3).
BN_BY_ROWS: Dict[str, Tuple[Tuple[float, int], ...]] = {
    "micro": ((8.0, 8), (float("inf"), 16)),
    "static": ((4.0, 8), (16.0, 32), (float("inf"), 64)),
    "dynamic": ((4.0, 8), (16.0, 32), (32.0, 64), (float("inf"), 128)),
}
# wgmma: 256x64 up to 64 rows (H200: it wins at 32 rows, ties 256x128 at 128), and above that
# 192-row token tiles (256x192: 22% less operand traffic per FLOP than 256x128). An expert's
# last tile runs the narrowest wgmma (64, 128 or 192 token rows) that covers its rows
# (grouped_gemm_sm90.py), so a wide tile no longer pays for its padding: at
# the preset routing of cute-moe-bench (uneven: deepseek-v3 T=4096 has experts of 0 to 1544
# rows), FC1 + FC2 on one H100 (us, tools/bench_gemm.py --routing preset; 256x128 s4/s3 against
# 256x192 s3/s3, both with the narrow tails):
#
#   rows/expert  shape                    256x128   256x192
#   32 (T=512)     qwen3-30b-a3b          430       446
#   128 (T=512)    mixtral-8x7b           1147      996
#   128 (T=4096)   deepseek-v3            8278      8131
#   128 (T=4096)   gpt-oss-120b           2565      2415
#   256 (T=4096)   qwen3-30b-a3b          699       745
#   256 (T=4096)   qwen3-235b-a22b        2770      3011
#   512 (T=16384)  deepseek-v3            22103     21184
#   512 (T=16384)  gpt-oss-120b           6844      6207
#   1024 (T=4096)  mixtral-8x7b           5396      4977
#   1024 (T=16384) qwen3-235b-a22b        8868      8615
#   4096 (T=16384) mixtral-8x7b           19485     18506
#
# At about 256 rows two tiles of 128 fit an expert as well as 192 + a 64-row tail, and win; end
# to end (cute-moe-bench, same session) 192 against 128 above 384 rows: qwen3-30b-a3b T=16384
# 2550 vs 2557 us, qwen3-235b-a22b 8788 vs 9018, mixtral-8x7b T=4096 4668 vs 4977, T=16384 17929
# vs 19104. MXINT4 took the same tiles (its 3-stage 256x192 ring fits: 214 KiB), where the
# dequantization of a weight k-block now serves 192 token rows instead of 128: end to end, one
# H100, Kimi-K2 (64 experts) T=4096 (512 rows) 6389 -> 5676 us, T=16384 24488 -> 21242,
# qwen3-30b-a3b mxint4 T=16384 (1024 rows) 3074 -> 2787.
BN_BY_ROWS["wgmma"] = ((64.0, 64), (192.0, 192), (384.0, 128), (float("inf"), 192))
# MXINT4 on wgmma: tiles up to 128 token rows feed the dequantized weights to the wgmma from
# registers (grouped_gemm_sm90.py), 192-row tiles through shared memory. End to end on one H100
# (us, cute-moe-bench --weights mxint4; columns from one session each, rows 128 and 192 from a
# third):
#
#   rows/expert    shape                   64 shared  64 regs  128 shared  128 regs  192 shared
#   32 (T=512)     qwen3-30b-a3b mxint4    276.8      236.5
#   64 (T=512)     kimi-k2, 64 experts     1714.5     1472.1
#   48 (T=768)     qwen3-30b-a3b mxint4               242.1 / 242.4       263.9 / 265.9
#   48 (T=384)     kimi-k2, 64 experts                1213.3 / 1259.0     1129.5 / 1168.1
#   64 (T=1024)    qwen3-30b-a3b mxint4               328.3 / 327.5       297.0 / 294.5
#   64 (T=512)     kimi-k2, 64 experts                1459.4 / 1485.8     1331.1 / 1310.0
#   128 (T=2048)   qwen3-30b-a3b mxint4                                    442.8     449.2
#   128 (T=1024)   kimi-k2, 64 experts                                     1929.5    1965.4
#   192 (T=1536)   kimi-k2, 64 experts                                     2732.2    2612.7
#   256 (T=4096)   qwen3-30b-a3b mxint4                        825.5       731.4
#   512 (T=4096)   kimi-k2, 64 experts                         6339.1      5778.4    5637.6
#   1024 (T=16384) qwen3-30b-a3b mxint4                        3025.5      2801.4    2739.6
#   2048 (T=16384) kimi-k2, 64 experts                         23902.1     21813.6   21097.7
#
# (the 48- and 64-row lines: two runs each, another session). The register feed gains 8-15% at
# equal width. As with the micro tiles below, a tile that holds an expert's rows at once wins
# where a smaller one spills into a second tile (converting the weights again): 128 rows at 64
# per expert (-10%), at 48 one shape each way; 192 rows through shared memory by 2-4% at 192
# rows and on the largest experts (its dequantized k-block serves 1.5x the token rows).
# MXINT4 micro tiles: dequantization dominates, so an expert whose rows spill into a second 8-row
# tile converts its weights twice; 16-row tiles above 4 rows per expert. One H100, two runs each
# (us, cute-moe-bench --weights mxint4 --reps 30):
#
#   rows/expert  shape                   8-row tile     16-row tile
#   8 (T=64)     kimi-k2, 64 experts     762.3 / 742.4  667.6 / 649.5
#   8 (T=128)    qwen3-30b-a3b mxint4    186.8 / 186.6  174.5 / 174.9
INT4_BN_BY_ROWS: Dict[str, Tuple[Tuple[float, int], ...]] = {
    "micro": ((4.0, 8), (float("inf"), 16)),
    "wgmma": ((48.0, 64), (128.0, 128), (192.0, 192), (384.0, 128), (float("inf"), 192)),
}


def _t(bm, bn, wm, wn, stages, mma="warp") -> TileConfig:
    return TileConfig(bm, bn, wm, wn, stages, mma)


# (variant, bn) -> (FC1 tile, FC2 tile, persistent CTAs per SM, programmatic launch)
_SM90_TILES: Dict[Tuple[str, int], Tuple[TileConfig, TileConfig, int, bool]] = {
    ("micro", 8): (_t(64, 8, 4, 1, 8), _t(64, 8, 4, 1, 8), 1, True),
    ("micro", 16): (_t(64, 16, 4, 1, 8), _t(64, 16, 4, 1, 8), 1, True),
    ("static", 8): (_t(64, 8, 4, 1, 8), _t(64, 8, 4, 1, 8), 1, False),
    ("static", 16): (_t(64, 16, 4, 1, 8), _t(64, 16, 4, 1, 8), 1, False),
    ("static", 32): (_t(128, 32, 4, 1, 4), _t(128, 32, 4, 1, 4), 1, False),
    ("static", 64): (_t(128, 64, 2, 2, 4), _t(128, 64, 2, 2, 4), 1, False),
    ("dynamic", 8): (_t(64, 8, 4, 1, 8), _t(64, 8, 4, 1, 8), 2, False),
    ("dynamic", 16): (_t(64, 16, 4, 1, 8), _t(64, 16, 4, 1, 8), 2, False),
    ("dynamic", 32): (_t(128, 32, 4, 1, 4), _t(128, 32, 4, 1, 4), 2, False),
    ("dynamic", 64): (_t(128, 64, 2, 2, 4), _t(128, 64, 2, 2, 4), 2, False),
    # 64x64 warp tiles: 256x128 (8 warps, 144 KiB, one CTA per SM) beat 128x128 with 4 warps
    # (2 per SM) on both shapes at T=4096 (qwen3 FC1 695 vs 805 us); 4 stages: no gain (713 us)
    ("dynamic", 128): (_t(256, 128, 4, 2, 3), _t(256, 128, 4, 2, 3), 1, False),
}
# SM90 only (cute_moe/kernels/grouped_gemm_sm90.py): two MMA warpgroups of 128 weight rows and a
# producer warpgroup (TMA + cp.async). FC1 + FC2 on one H200 (us, tools/bench_gemm.py):
#
#   shape          T      128x128 s4  256x128 s3  256x128 s4  256x64 s4  64x128 (2/SM)  dynamic
#   qwen3-30b-a3b  512    584         464         430         317        925            376 (128x64)
#   qwen3-30b-a3b  4096   941         824         820         840        1358           1072 (256x128)
#   qwen3-30b-a3b  16384  2848        2735        2832        3004       3922           3676
#   deepseek-v3    512    8140        6642        6356        5334       12718          5288 (128x32)
#   deepseek-v3    4096   10782       9588        9279        9317       14822          12120
#   deepseek-v3    16384  29193       24613       25206       25418      41401          33886
#
# 256-row m-blocks halve the token-row traffic per FLOP against 128; ring depth 3..5 changes
# little (not latency-bound); two 64-row CTAs per SM lose everywhere. FC2 of 256x128 runs 3
# stages: its bf16 output tile for the bulk epilogue (66 KiB) fits next to 3 stages, not 4.
_SM90_WGMMA_TILES = {
    ("wgmma", 64): (_t(256, 64, 8, 1, 4, "wgmma"), _t(256, 64, 8, 1, 4, "wgmma"), 1, False),
    ("wgmma", 128): (_t(256, 128, 8, 1, 4, "wgmma"), _t(256, 128, 8, 1, 3, "wgmma"), 1, False),
    # FC2's bf16 output tile leaves in two passes of 128 columns
    ("wgmma", 192): (_t(256, 192, 8, 1, 3, "wgmma"), _t(256, 192, 8, 1, 3, "wgmma"), 1, False),
}

# SM120 has 99 KiB of shared memory per CTA: the 128-row tile of 128x128 with 4 warps replaces
# 256x128 there. SM100 and SM120 run the same mma.sync kernels but have not been measured: they
# take the H100 thresholds.
_SM120_TILES = dict(_SM90_TILES)
_SM120_TILES[("dynamic", 128)] = (_t(128, 128, 2, 2, 3), _t(128, 128, 2, 2, 3), 1, False)

# NVFP4 experts on SM120: the block-scaled FP4 MMA keeps a warp's accumulators, A fragments and
# addresses in registers; 64x64 per warp spills (255 registers + 48 bytes of stack), so the
# 128x128 tile takes 8 warps of 32x64 (compile-checked only: no SM120 GPU has run it).
_SM120_FP4_TILES = dict(_SM120_TILES)
_SM120_FP4_TILES[("dynamic", 128)] = (_t(128, 128, 4, 2, 3), _t(128, 128, 4, 2, 3), 1, False)

VARIANT_BY_ROWS: Dict[str, Tuple[Tuple[float, str], ...]] = {
    "sm_90a": _SM90_VARIANT_BY_ROWS, "sm_100a": _WARP_VARIANT_BY_ROWS, "sm_120a": _WARP_VARIANT_BY_ROWS}
TILES: Dict[str, Dict[Tuple[str, int], Tuple[TileConfig, TileConfig, int, bool]]] = {
    "sm_90a": {**_SM90_TILES, **_SM90_WGMMA_TILES}, "sm_100a": _SM90_TILES, "sm_120a": _SM120_TILES}


def _first(table, value):
    for bound, choice in table:
        if value <= bound:
            return choice
    return table[-1][1]


def _arch(device, arch: Optional[str]) -> str:
    if arch is not None:
        if arch not in TILES:
            raise ValueError(f"arch: expected one of {tuple(TILES)}, got {arch!r}")
        return arch
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        from .kernels.runtime import arch_of_device

        return arch_of_device(torch.device(device))
    return DEFAULT_ARCH


def forced_variant(variant: Optional[str] = None) -> Optional[str]:
    """The variant forced by the argument, else by ``CUTE_MOE_GEMM_VARIANT``, else None."""
    v = variant if variant is not None else (os.environ.get(ENV_VARIANT) or None)
    if v is not None and v not in VARIANTS:
        source = "variant" if variant is not None else ENV_VARIANT
        raise ValueError(f"{source}: expected one of {VARIANTS}, got {v!r}")
    return v


# A micro grid has ceil(M / bm) x max_tiles CTAs, all resident at once at decode. With 64 weight
# rows per CTA and at most SPARSE_MICRO_CTAS of them (1.5 per SM of an H100 / H200), some SMs
# run two CTAs and the rest one, so the grid lasts as long as the doubled SMs; 32-row CTAs (two
# warps, each warp's chain unchanged) spread the same rows as 2-3 per SM. One H100, two runs
# (64 rows against FC1 at 32, then against both at 32; the 64-row times of the two runs agree
# within 0.4 us), each tree twice in alternating order (cute-moe-bench --sets 2 --reps 20, bf16
# through trtllm_bf16_routed_moe, MXINT4 from logits; us; FC1 / FC2 ends from --timeline):
#
#   point                        64-row grids (FC1 / FC2)  64 rows   FC1 at 32   both at 32
#   qwen3-30b-a3b bf16 T=1       192 / 256                 33.0      32.2        32.2 (FC1 ends 1.3 us sooner)
#   qwen3-30b-a3b mxint4 T=1     192 / 256                 24.1      23.1        23.0 (FC1 ends 0.7 us sooner)
#   qwen3-30b-a3b mxint4 T=8     1536 / 2048               68.0      69.6        69.3
#   kimi-k2 (64 experts) T=1     512 / 896                 95.3      95.0        93.7
#   gpt-oss-120b bf16 T=1        360 / 180                 86.3      89.7        89.9 (FC1 ends 4.8 us later)
#   qwen3-235b-a22b bf16 T=1     384 / 512                 121.8     126.7       128.4
#
# Where the 64-row grid already fills the SMs, 32-row CTAs lose (more token-row loads and ring
# prologues for the same weights). FC2 keeps 64 rows: its time after FC1's end did not move with
# 32-row CTAs (qwen3-30b-a3b 4.8 -> 4.9 us bf16, 3.9 -> 3.8 mxint4) or grew (gpt-oss-120b, 180
# CTAs: 20.9 -> 21.6); Kimi-K2 T=1 gained 2% from 32-row FC2 CTAs, but its 64-row grid (896 CTAs,
# 1.36 waves) is not a sparse one and no other point backs a rule for it.
SPARSE_MICRO_CTAS = 198


def sparse_micro_tile(tile: TileConfig, m: int, max_tiles: int) -> TileConfig:
    """``tile`` (a 64-row micro tile) with 32 weight rows and two warps where its grid over ``m``
    weight rows and ``max_tiles`` token tiles has at most SPARSE_MICRO_CTAS CTAs."""
    if tile.bm == 64 and tile.mma == "warp" and -(-m // tile.bm) * max_tiles <= SPARSE_MICRO_CTAS:
        return replace(tile, bm=32, warps_m=tile.warps_m // 2)
    return tile


def select_config(*, num_tokens: int, top_k: int, hidden_size: int, intermediate_size: int,
                  local_num_experts: int, weight_kind: str = "bf16", device=None, arch: Optional[str] = None,
                  variant: Optional[str] = None, activation_type: int = ActivationType.Swiglu) -> GemmConfig:
    """GemmConfig for one call's shapes (module docstring); ``variant`` forces the variant;
    ``activation_type``: FC1's (``sparse_micro_tile`` applies to SwiGLU FC1s, 2 * I weight rows)."""
    arch = _arch(device, arch)
    tokens, local = max(int(num_tokens), 1), max(int(local_num_experts), 1)
    rows = tokens * int(top_k) / local
    table = {"bf16": VARIANT_BY_ROWS[arch], "mxint4": INT4_VARIANT_BY_ROWS[arch],
             "nvfp4": _FP4_VARIANT_BY_ROWS}.get(weight_kind, _WARP_VARIANT_BY_ROWS)
    chosen = forced_variant(variant) or _first(table, rows)
    if chosen == "wgmma" and not wgmma_runs(arch, weight_kind):
        raise ValueError(f"variant 'wgmma' runs bf16 or mxint4 weights on sm_90a, got {weight_kind} weights on {arch}")
    bands = INT4_BN_BY_ROWS if weight_kind == "mxint4" else {}
    bn = _first(bands.get(chosen, BN_BY_ROWS[chosen]), rows)
    tiles = _SM120_FP4_TILES if (arch, weight_kind) == ("sm_120a", "nvfp4") else TILES[arch]
    fc1, fc2, ctas, pdl = tiles[(chosen, bn)]
    swiglu = ActivationType(int(activation_type)) == ActivationType.Swiglu
    if chosen == "micro" and swiglu and weight_kind in ("bf16", "mxint4"):  # as measured
        max_tiles = PlanShape(tokens, int(top_k), local, bn).max_tiles
        fc1 = sparse_micro_tile(fc1, 2 * int(intermediate_size), max_tiles)
    return GemmConfig(chosen, fc1, fc2, ctas, pdl)
