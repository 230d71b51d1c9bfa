"""Compile-time configuration of the grouped-GEMM kernel family (cute_moe.kernels.grouped_gemm).

A ``TileConfig`` fixes one CTA's work: ``bm`` weight rows (the MMA's M side) by ``bn`` permuted
token rows (the N side, equal to the plan's ``tile_rows``) over K blocks of ``BK = 64`` bf16
(one 128-byte BlockMajorK block), ``warps_m x warps_n`` warps and a ``stages``-deep cp.async ring.

A ``GemmConfig`` is what the selector returns and the host wrappers take: the variant and one
tile per GEMM. FC1 and FC2 share the plan, hence ``bn``; ``bm`` and stages may differ.

Variants (all one kernel template; cute_moe/kernels/grouped_gemm.py):

* ``micro``: decode tiles (``bn`` 8 or 16, ``bm`` 64, or 32 with two warps where 64-row CTAs would
  leave the SMs unevenly loaded: ``select.sparse_micro_tile``; deep ring), static 1-D grid of
  ``M/bm * max_tiles`` CTAs with the m-blocks of a tile fastest;
* ``static``: grid ``(max_tiles, M/bm)``, tiles fastest: CTAs that read the same weight block
  run together and share it in L2;
* ``dynamic``: persistent CTAs (``ctas_per_sm`` per SM) striding over the (tile, m-block) work
  list in the plan's raster groups (up to ``cute_moe.plan.RASTER_TILES`` tiles of one expert),
  all m-blocks of a group before the next group.

* ``wgmma`` (SM90, bf16 or MXINT4 weights): the persistent schedule of ``dynamic`` on the TMA + WGMMA
  warp-specialized instantiation (cute_moe/kernels/grouped_gemm_sm90.py), ``mma = "wgmma"`` tiles.

Every CTA reads ``num_tiles`` on the device and skips tiles past it.
"""

from __future__ import annotations

from dataclasses import dataclass

BK = 64  # bf16 K values per k-block: one 128-byte BlockMajorK block
# MXINT4 weights: a 128-byte BlockMajorK block holds 256 int4 values, so one bf16 k-block of 64
# values is a 32-byte quarter of it; one bf16 scale per 32 values along K (2 per k-block).
INT4_BLOCK_K = 256
INT4_ROW_BYTES = BK // 2  # packed bytes of one weight row per k-block
INT4_GROUP = 32
INT4_SCALES_PER_KB = BK // INT4_GROUP
# Decode tiles (bn <= INT4_WIDE_BN) load 2 k-blocks (64 of a row's 128 packed bytes) per ring
# stage, INT4_WIDE_STAGES deep, and dequantize one k-block at a time (into the MMA registers,
# or with two warps along N into two alternating bf16 slots); wider tiles stage one k-block
# (their token rows dominate). Ring depths, measured with the shared-memory dequantization on
# H100, Kimi-K2 shape (64 experts), FC1 + FC2 of the 64x8 micro tile at T = 1 / 8 / 64 (us, one
# word dequantized per thread step): 1 k-block x 8 stages 156 / 576 / 1283; x 12: 143 / 627 / 1379; 2 x 6: 128 / 580 /
# 1267; 4 x 4: 152 / 615 / 1358; 4 x 6: 168 / 751 / 1649. Every ring depth leaves the weights
# stream at 40-57% of the int4 byte floor: that kernel was issue-bound on dequantization (the
# register path streams Kimi-K2 T = 8 at 88%: docs/gemm_notes.md, MXINT4 v2).
# NVFP4 weights (b12x): e2m1 values, one ue4m3 scale per 16 values (4 per k-block, one word).
FP4_GROUP = 16
FP4_SCALES_PER_KB = BK // FP4_GROUP
FP4_SCALE_ALIGN = 4  # bytes: a row's 4 scales of one k-block are one 4-byte cp.async
WEIGHT_FORMATS = ("bf16", "mxint4", "nvfp4")
INT4_WIDE_BN = 16
INT4_DECODE_K_BLOCKS = 2
INT4_WIDE_STAGES = 6
INT4_SCALE_ALIGN = 8  # bytes: a row's 4 scales of one column group are one 8-byte cp.async
MMA_M, MMA_N, MMA_K = 16, 8, 16  # mma.sync.aligned.m16n8k16 bf16 -> f32
# WGMMA tiles (SM90, cute_moe.kernels.grouped_gemm_sm90): one producer warpgroup (TMA for the
# weights, cp.async for the token rows) and MMA warpgroups of 64 weight rows each.
MMA_KINDS = ("warp", "wgmma")
WGMMA_WEIGHT_KINDS = ("bf16", "mxint4")  # weight formats of the wgmma instantiation
WGMMA_M = 64  # weight rows of one warpgroup's wgmma.mma_async
WGMMA_EPILOGUE_ROWS = 128
WGMMA_TAIL_N = 64  # granularity of the narrower wgmma a tile's last token rows take (its ragged tail)
WGMMA_INT4_A_SLOTS = 2  # dequantized bf16 k-blocks of a wgmma tile with MXINT4 weights
# MXINT4 wgmma tiles up to this many token rows dequantize into the A registers of a register-fed
# wgmma: two half k-blocks of A fragments (16 registers each at 128 weight rows per warpgroup: one
# read by the wgmma group in flight, one being written) next to bn float32 accumulators. At 192
# ptxas (CUDA 13.0) spills and serializes the wgmmas (C7512) within the 232 registers of an MMA
# thread, also with quarter k-blocks (8 registers) and without the narrow tails, so wider tiles
# dequantize into shared memory.
WGMMA_INT4_REGISTER_BN = 128
PRODUCER_THREADS = 128
BARRIER_BYTES = 128  # the ring's mbarriers, after the operand and epilogue buffers
SHUFFLE_BLOCK = 32  # prepared rows are shuffled inside blocks of 32 (epilogue tile 128)
VARIANTS = ("micro", "static", "dynamic", "wgmma")
SCHEDULES = ("m_fastest", "tiles_fastest", "persistent")
SCHEDULE_OF_VARIANT = {"micro": "m_fastest", "static": "tiles_fastest", "dynamic": "persistent",
                       "wgmma": "persistent"}
SMEM_LIMIT = 227 * 1024  # opt-in shared memory per CTA on SM90 / SM100 (SM120: 99 KiB)
SMEM_LIMIT_SM120 = 99 * 1024
BM_CHOICES = (32, 64, 128, 256)
BN_CHOICES = (8, 16, 32, 64, 128, 192)
WGMMA_ONLY_BN = (192,)  # token tiles of the SM90 instantiation only


def c_row_stride(bm: int) -> int:
    """float32 stride between token rows of the epilogue tile ``sC[n, m]``: ``bm + 4`` makes the
    accumulator stores of a warp (8 m by 4 n-pairs) hit 32 distinct banks."""
    return bm + 4


def out_tile_stride(columns: int) -> int:
    """Bytes between token rows of the bf16 output tile the SM90 instantiation stages for its
    bulk row copies: 16 bytes of padding keep the 16-byte alignment of a row and make the
    accumulator stores of a gated FC1 (2 bytes, 8 columns by 4 tokens per warp) conflict-free."""
    return 2 * columns + 16


def wgmma_runs(arch: str, weight_kind: str) -> bool:
    """Whether the SM90 wgmma instantiation (variant ``wgmma``) takes ``weight_kind`` on ``arch``."""
    return arch == "sm_90a" and weight_kind in WGMMA_WEIGHT_KINDS


@dataclass(frozen=True)
class Int4Smem:
    """Shared-memory byte offsets of a tile with MXINT4 weights (TileConfig.int4_smem_layout)."""

    a_bf16: int
    b_ring: int
    raw_ring: int
    scale_ring: int
    total: int


@dataclass(frozen=True)
class TileConfig:
    bm: int
    bn: int
    warps_m: int
    warps_n: int
    stages: int
    mma: str = "warp"  # "warp": mma.sync on every arch; "wgmma": SM90 warpgroup MMA

    def __post_init__(self):
        if self.mma not in MMA_KINDS:
            raise ValueError(f"mma: expected one of {MMA_KINDS}, got {self.mma!r}")
        if self.mma == "wgmma" and (self.warps_n != 1 or self.warps_m not in (4, 8) or self.bn < 16
                                    or self.bm // (self.warps_m // 4 * WGMMA_M) not in (1, 2)):
            raise ValueError(f"wgmma tile {self.bm}x{self.bn}: expected 4 or 8 x 1 warps (one or two warpgroups of "
                             f"{WGMMA_M} or {2 * WGMMA_M} weight rows) and bn >= 16, got {self.warps_m} x "
                             f"{self.warps_n}")
        if self.bm not in BM_CHOICES:
            raise ValueError(f"bm: expected one of {BM_CHOICES}, got {self.bm}")
        if self.bn not in BN_CHOICES:
            raise ValueError(f"bn: expected one of {BN_CHOICES}, got {self.bn}")
        if self.bn in WGMMA_ONLY_BN and self.mma != "wgmma":
            raise ValueError(f"bn = {self.bn}: wgmma tiles only, got a {self.mma} tile")
        if self.warps_m < 1 or self.warps_n < 1 or self.warps_m * self.warps_n not in (2, 4, 8):
            raise ValueError(f"warps: expected 2, 4 or 8 warps, got {self.warps_m} x {self.warps_n}")
        if self.bm % (self.warps_m * MMA_M) or self.bn % (self.warps_n * MMA_N):
            raise ValueError(f"tile {self.bm}x{self.bn} does not split over {self.warps_m}x{self.warps_n} warps "
                             f"of {MMA_M}x{MMA_N} MMAs")
        if not 2 <= self.stages <= 12:
            raise ValueError(f"stages: expected 2..12, got {self.stages}")
        if self.smem_bytes > SMEM_LIMIT:
            raise ValueError(f"tile {self} needs {self.smem_bytes} bytes of shared memory (> {SMEM_LIMIT})")

    @property
    def threads(self) -> int:
        """Threads that run the MMAs and the epilogue."""
        return 32 * self.warps_m * self.warps_n

    @property
    def cta_threads(self) -> int:
        """Threads of a CTA: the MMA threads, plus the producer warpgroup of a wgmma tile."""
        return self.threads + (PRODUCER_THREADS if self.mma == "wgmma" else 0)

    @property
    def warp_n(self) -> int:
        """Token columns of one warp."""
        return self.bn // self.warps_n

    @property
    def n_perm(self) -> int:
        """MMA atoms along N per warp step: 2 lets one ldmatrix.x4 load B for 16 columns."""
        return 2 if self.warp_n % (2 * MMA_N) == 0 else 1

    @property
    def stage_bytes(self) -> int:
        return (self.bm + self.bn) * BK * 2

    @property
    def int4_k_blocks_per_stage(self) -> int:
        return INT4_DECODE_K_BLOCKS if self.bn <= INT4_WIDE_BN else 1

    @property
    def int4_stages(self) -> int:
        return INT4_WIDE_STAGES if self.int4_k_blocks_per_stage > 1 else self.stages

    @property
    def dequant_in_registers(self) -> bool:
        """4-bit weights: with one warp along N each weight row is read by exactly one warp, which
        dequantizes it straight into its MMA A fragments (no bf16 slot in shared memory, one
        barrier per ring stage); a wider warp grid dequantizes each k-block once per CTA into
        shared memory, where every warp of the row reads it (docs/gemm_notes.md, MXINT4). wgmma
        tiles: :attr:`wgmma_int4_register_a`."""
        return self.warps_n == 1 and self.mma == "warp"

    @property
    def int4_a_slots(self) -> int:
        """Dequantized bf16 k-blocks in shared memory (two alternate when a stage holds several;
        none when the warps dequantize into registers)."""
        if self.dequant_in_registers:
            return 0
        return 2 if self.int4_k_blocks_per_stage > 1 else 1

    def int4_smem_layout(self) -> "Int4Smem":
        """Byte offsets with MXINT4 weights: the dequantized bf16 k-blocks (the MMA's A operand,
        if any) and the token ring first (both 1024-byte aligned for the swizzle), then the
        packed-weight ring (k-block major: one ``bm x 32``-byte block per k-block of a stage) and
        the scale ring."""
        kps, stages = self.int4_k_blocks_per_stage, self.int4_stages
        b = self.int4_a_slots * self.bm * BK * 2
        raw = b + stages * kps * self.bn * BK * 2
        scales = raw + stages * kps * self.bm * INT4_ROW_BYTES
        end = scales + stages * kps * self.bm * 2 * INT4_SCALES_PER_KB
        return Int4Smem(0, b, raw, scales, max(end, self.epilogue_bytes))

    @property
    def epilogue_rows(self) -> int:
        """Weight rows of the float32 epilogue tile. A wgmma tile keeps it next to the ring and
        stores its m-block in passes: 128 rows, or 64 where 128 would not fit (a 4-stage
        256x128 ring)."""
        if self.mma != "wgmma":
            return self.bm
        rows = min(self.bm, WGMMA_EPILOGUE_ROWS)
        ring = BARRIER_BYTES + self.stages * self.stage_bytes
        if ring + self.bn * c_row_stride(rows) * 4 > SMEM_LIMIT:
            rows = WGMMA_M
        return rows

    @property
    def epilogue_bytes(self) -> int:
        return self.bn * c_row_stride(self.epilogue_rows) * 4

    @property
    def smem_bytes(self) -> int:
        """The cp.async ring; the float32 epilogue tile reuses it (bf16 weights; MXINT4:
        :meth:`int4_smem_layout`). A wgmma tile keeps its epilogue tile apart: the producer
        fills the ring for the next work item while the MMA warpgroups store this one."""
        if self.mma == "wgmma":
            return BARRIER_BYTES + self.stages * self.stage_bytes + self.epilogue_bytes
        return max(self.stages * self.stage_bytes, self.epilogue_bytes)

    @property
    def wgmma_int4_register_a(self) -> bool:
        """A wgmma tile with MXINT4 weights: each MMA warpgroup dequantizes its rows straight into
        the A registers of a register-fed wgmma (``bn <= WGMMA_INT4_REGISTER_BN``), else into two
        bf16 A slots in shared memory."""
        return self.mma == "wgmma" and self.bn <= WGMMA_INT4_REGISTER_BN

    @property
    def wgmma_int4_smem_bytes(self) -> int:
        """A wgmma tile with MXINT4 weights: the packed-weight, scale and token rings, the two
        bf16 A slots the MMA warpgroups dequantize into where A is not fed from registers (one
        wgmma group stays in flight), the epilogue tile apart."""
        ring = self.stages * (self.bm * INT4_ROW_BYTES + self.bm * 2 * INT4_SCALES_PER_KB + self.bn * BK * 2)
        slots = 0 if self.wgmma_int4_register_a else WGMMA_INT4_A_SLOTS
        return BARRIER_BYTES + slots * self.bm * BK * 2 + ring + self.epilogue_bytes

    def fits(self, arch: str, int4: bool = False) -> bool:
        if self.mma == "wgmma":
            return arch == "sm_90a" and (self.wgmma_int4_smem_bytes if int4 else self.smem_bytes) <= SMEM_LIMIT
        limit = SMEM_LIMIT_SM120 if arch == "sm_120a" else SMEM_LIMIT
        return (self.int4_smem_layout().total if int4 else self.smem_bytes) <= limit

    @property
    def tag(self) -> str:
        kind = "_wgmma" if self.mma == "wgmma" else ""
        return f"{self.bm}x{self.bn}_w{self.warps_m}x{self.warps_n}_s{self.stages}{kind}"


@dataclass(frozen=True)
class GemmConfig:
    """One call's GEMM choice: variant, FC1 tile, FC2 tile (same ``bn``), persistent occupancy,
    programmatic dependent launch."""

    variant: str
    fc1: TileConfig
    fc2: TileConfig
    ctas_per_sm: int = 1
    pdl: bool = False  # launch FC1 and FC2 as programmatic dependents (FC2 must follow its FC1)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {self.variant!r}")
        if self.fc1.bn != self.fc2.bn:
            raise ValueError(f"FC1 and FC2 share the plan: bn must match, got {self.fc1.bn} and {self.fc2.bn}")
        if self.ctas_per_sm < 1:
            raise ValueError(f"ctas_per_sm: expected >= 1, got {self.ctas_per_sm}")
        wgmma = self.variant == "wgmma"
        if (self.fc1.mma == "wgmma") != wgmma or (self.fc2.mma == "wgmma") != wgmma:
            raise ValueError(f"variant {self.variant!r} takes {'wgmma' if wgmma else 'warp'} tiles, got "
                             f"{self.fc1.mma} / {self.fc2.mma}")

    @property
    def tile_rows(self) -> int:
        return self.fc1.bn

    @property
    def schedule(self) -> str:
        return SCHEDULE_OF_VARIANT[self.variant]
