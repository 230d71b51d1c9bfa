"""Grouped GEMM of the MoE experts: FC1 (+ LoRA delta, + activation) and FC2, bf16 or MXINT4 weights.

One kernel template, ``GroupedGemm``; FC1/FC2, the weight format, the epilogue options, the tile
and the schedule (micro / static / dynamic, cute_moe.kernels.gemm_config) are compile-time
parameters.

Per work item (plan tile ``t``, m-block ``mb``), with ``(e, row0, nrows) = tile_info[t]``:

    C[m, n] = sum_k W_e[mb*bm + m, k] * X[row(n), k]        m < bm, n < bn, float32

* ``W_e`` is the prepared weight of local expert ``e``, read in place: BlockMajorK
  ``[L, K/64, M, 64]``, so the ``bm x 64`` block of k-block ``kb`` is one contiguous
  ``bm * 128``-byte chunk at element ``((e * K/64 + kb) * M + mb*bm) * 64``.
* ``X`` rows: FC1 gathers ``hidden_states[permuted_idx_to_expanded_idx[row0 + n] // top_k]``
  (padding rows, ``n >= nrows``, are neither loaded nor stored); FC2, and FC1 without
  ``gather_rows`` (inputs already permuted, e.g. quantized per expert), read ``X[row0 + n]``.
* MXINT4 weights (``weight_format="mxint4"``): ``W_e`` is uint8 ``[L, K/256, M, 128]`` (two signed int4
  per byte, low nibble first) with bf16 scales ``S_e [M, K/32]`` 128x4-interleaved
  (cute_moe.layouts.scale_interleave; rows in the weights' prepared order), flat per expert.
  k-block ``kb`` of a row is the 32-byte quarter ``kb % 4`` of its 128-byte block ``kb // 4``;
  its two scales are adjacent (columns ``2kb, 2kb+1`` of one 4-column group). Packed bytes and
  scales ride the cp.async ring, one k-block or (decode tiles) two per stage
  (TileConfig.int4_k_blocks_per_stage); each weight is dequantized once, ``w = bf16(q * s)``
  (cute_moe.kernels.int4_convert). With one warp along N (TileConfig.dequant_in_registers) the
  warp that owns a row dequantizes it straight into its MMA A registers, in a k order that B's
  16-byte loads follow (``mma_stage_registers``); otherwise the k-block goes to a swizzled bf16
  slot that every warp ldmatrix-es (two slots alternate when a stage holds several k-blocks).
* NVFP4 weights (b12x's layout): ``W_e`` is packed e2m1 uint8 ``[L, M, K/2]`` (row-major, low
  nibble first, rows in the checkpoint's order: ``[up; gate]`` for a gated FC1) with ue4m3
  scales, one per 16 values along K, 128x4-interleaved like the MXINT4 scales (bytes; rows padded
  to a multiple of 128). k-block ``kb`` of a row is its 32 bytes at ``32 * kb``, its four scales
  one 32-bit word. The packed ring, the scale ring and the dequantization into the bf16 slot are
  the MXINT4 ones with another conversion, ``w = e2m1 * ue4m3`` exactly
  (cute_moe.kernels.fp4_convert). Each CTA row ``p`` reads checkpoint row ``src(p)``: the
  permutation of the prepared bf16 layout (gated interleave, 32-row shuffle), so that the
  epilogue sees the order it un-shuffles.
* Weights are the MMA's A operand (M side), tokens the B operand (N side), both K-major:
  ``mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`` on fragments loaded by ``ldmatrix``
  from 128-byte-swizzled shared memory, filled by 16-byte ``cp.async`` in a ``stages``-deep ring.
* Epilogue: accumulators -> shared memory ``sC[n, p]`` -> un-shuffle (cute_moe.kernels.gemm_epilogue)
  -> (``has_out_scale``: times the per-expert ``out_scale[e]``) -> FC1: ``+
  gemm1_lora_delta[expanded(row0 + n)]``, activation, bf16 ``act[row0 + n, i]``; FC2: bf16
  ``gemm2_output[row0 + n, h]``. Only ``n < nrows`` (and ``h < M``) are stored, 16 bytes
  per store.

Sizes are runtime values (one compile per shape class); the tile count is read on the device
(``counters[0]``): nothing depends on the host knowing the routing, so launches are CUDA-graph safe.
"""

from __future__ import annotations

import torch

import cutlass
import cutlass.cute as cute
import cutlass.memory
import cuda.bindings.driver as cuda
from cutlass import BFloat16, Float32, Int32, Int64, Uint8
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T

from ..enums import ActivationType
from ..plan import RASTER_TILES
from . import gemm_epilogue as epi
from . import fp4_convert, int4_convert, runtime
from .gemm_config import (BK, FP4_GROUP, FP4_SCALE_ALIGN, FP4_SCALES_PER_KB, INT4_BLOCK_K, INT4_GROUP,
                          INT4_ROW_BYTES, INT4_SCALE_ALIGN, INT4_SCALES_PER_KB, MMA_K, MMA_M, MMA_N,
                          SCHEDULES, WEIGHT_FORMATS, TileConfig, c_row_stride)

CHUNK = 8  # bf16 per 16-byte cp.async / store
CHUNKS_PER_ROW = BK // CHUNK  # 16-byte chunks of one 128-byte K-block row
SMEM_ALIGN = 1024  # the 128-byte swizzle reads address bits [7, 10)
INT4_CHUNKS = INT4_ROW_BYTES // 16  # 16-byte cp.async chunks of one packed row per k-block
INT4_PER_WORD = 8  # int4 values per 32-bit word: one dequantized 16-byte bf16 chunk
INT4_BLOCK_BYTES = INT4_BLOCK_K // 2
SCALE_TILE = 128  # rows of one 128x4 scale tile


def raster(w, tile_info, m_blocks):
    """Work item ``w`` of a persistent schedule -> (plan tile, m-block) through the plan's raster
    groups (cute_moe.plan.RASTER_TILES): group ``[first, first + tiles)`` owns items
    ``[first * m_blocks, (first + tiles) * m_blocks)``, tiles fastest inside it. Plain arithmetic:
    traced inside kernels, evaluated on a torch ``tile_info`` by the CPU tests."""
    group = tile_info[w // m_blocks, 3]
    first = group // RASTER_TILES
    r = w - first * m_blocks
    tiles = group % RASTER_TILES + 1
    return first + r % tiles, r // tiles


def _swizzle():
    # 16-byte chunk c of 128-byte row r lands at chunk c ^ (r % 8): ldmatrix reads of 8 rows at
    # one chunk column hit 8 distinct bank groups.
    return cute.make_swizzle(3, 4, 3)


MMA_BF16_PTX = ("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};")


def mma_bf16(a: list, b: list, c: list) -> list:
    """One m16n8k16 bf16 MMA on registers: ``a`` 4 bf16x2 words (rows g / g+8, k 2t / 2t+8),
    ``b`` 2 words (k 2t / 2t+8 of token g), ``c`` 4 float32 (rows g / g+8, tokens 2t, 2t+1)."""
    operands = [Int32(v).ir_value() for v in a + b] + [Float32(v).ir_value() for v in c]
    res = llvm.inline_asm(llvm.StructType.get_literal([T.f32()] * 4), operands, MMA_BF16_PTX,
                          "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", has_side_effects=False, is_align_stack=False)
    return [Float32(llvm.extractvalue(T.f32(), res, [i])) for i in range(4)]


# Register dequantization (GroupedGemm.mma_stage_registers): lane ``4g + t`` holds 8 bf16 pairs
# ``Q`` of its weight rows ``g``, ``g + 8`` and of token row ``g``. Plain arithmetic, used by the
# kernel and checked by tests/test_grouped_gemm.py against the DSL's layouts of the instruction.


def register_pair_k(t, q):
    """First k (in the 64-value k-block) of pair ``q`` of lane ``4g + t``: 16 consecutive k per lane."""
    return 16 * t + 2 * q


def register_a_pair(kk, reg):
    """A register ``reg`` (0..3) of MMA step ``kk`` -> (row half ``h``: row ``g + 8h``, pair ``q``)."""
    return reg % 2, 2 * kk + reg // 2


def register_b_pair(kk, reg):
    """B register ``reg`` (0..1) of MMA step ``kk`` -> pair ``q`` of the lane's token row."""
    return 2 * kk + reg


class GroupedGemm:
    """``op``: "fc1" or "fc2"; ``schedule``: one of gemm_config.SCHEDULES; FC1 epilogue options:
    ``activation`` (Swiglu, Relu2), ``has_lora``, ``has_alpha``, ``has_beta``, ``has_clamp``;
    ``weight_format``: one of gemm_config.WEIGHT_FORMATS (module docstring); ``has_out_scale``:
    scale the accumulators by a per-expert float32; ``gather_rows`` (FC1): gather the token rows
    through the permutation (else read them in permuted order)."""

    def __init__(self, op: str, tile: TileConfig, schedule: str, activation: int = int(ActivationType.Swiglu),
                 has_lora: bool = False, has_alpha: bool = False, has_beta: bool = False, has_clamp: bool = False,
                 weight_format: str = "bf16", has_out_scale: bool = False, gather_rows: bool = True):
        if op not in ("fc1", "fc2"):
            raise ValueError(f"op: expected 'fc1' or 'fc2', got {op!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
        act = ActivationType(int(activation))
        if op == "fc1" and act not in (ActivationType.Swiglu, ActivationType.Relu2):
            raise ValueError(f"activation: expected Swiglu or Relu2, got {act.name}")
        self.is_fc1 = op == "fc1"
        self.gated = self.is_fc1 and act == ActivationType.Swiglu
        self.relu2 = self.is_fc1 and act == ActivationType.Relu2
        if (has_lora or has_alpha or has_beta or has_clamp) and not self.gated:
            raise ValueError("LoRA delta and alpha / beta / clamp apply to a gated FC1 only")
        self.has_lora = has_lora
        self.has_alpha, self.has_beta, self.has_clamp = has_alpha, has_beta, has_clamp
        self.oss = has_alpha or has_beta or has_clamp
        self.tile = tile
        self.schedule = schedule
        self.bm, self.bn, self.stages = tile.bm, tile.bn, tile.stages
        self.threads = tile.threads
        # cp.async work per thread and stage: rows tid//8 + i * (threads/8), chunk tid % 8
        self.row_step = self.threads // CHUNKS_PER_ROW
        self.a_loads = self.bm * CHUNKS_PER_ROW // self.threads
        self.b_loads = max(1, self.bn * CHUNKS_PER_ROW // self.threads)
        # epilogue vectors: 8 output columns of one token row
        self.rows_per_vec = epi.GATED_ROWS if self.gated else epi.PLAIN_ROWS
        self.set_epilogue_rows(self.bm)
        if weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight_format: expected one of {WEIGHT_FORMATS}, got {weight_format!r}")
        if has_lora and has_out_scale:
            raise ValueError("has_out_scale: not with a LoRA delta (no entry point takes both)")
        self.weight_format = weight_format
        self.packed = weight_format != "bf16"  # 4-bit weights dequantized in shared memory
        self.fp4 = weight_format == "nvfp4"
        self.has_out_scale = has_out_scale
        self.gather = self.is_fc1 and gather_rows
        # k-blocks per ring stage and ring depth (bf16: one k-block per stage)
        self.kps = tile.int4_k_blocks_per_stage if self.packed else 1
        self.ring = tile.int4_stages if self.packed else self.stages
        if self.packed:
            # scales per row and k-block (one 32-bit word: 2 bf16 or 4 ue4m3) and their type
            self.scales_per_kb = FP4_SCALES_PER_KB if self.fp4 else INT4_SCALES_PER_KB
            self.scale_dtype = Uint8 if self.fp4 else BFloat16
            # per thread and stage: packed 16-byte chunks (row-major over rows x 2*kps chunks),
            # scale pieces (up to 4 adjacent scales of one row), dequantized words per k-block
            self.row_chunks = INT4_CHUNKS * self.kps
            self.reg_dequant = tile.dequant_in_registers
            self.piece_scales = min(4, self.scales_per_kb * self.kps)  # one 4-column group at most
            self.row_pieces = self.scales_per_kb * self.kps // self.piece_scales
            self.set_loader_threads(self.threads)
            # shared-memory dequantization unit: one row's 32-value scale group of a k-block (16
            # packed bytes)
            if not self.reg_dequant and (self.bm * INT4_SCALES_PER_KB) % self.threads:
                raise ValueError(f"int4 weights: {self.bm} rows x {INT4_SCALES_PER_KB} groups do not split over "
                                 f"{self.threads} threads")
            self.dequant_units = self.bm * INT4_SCALES_PER_KB // self.threads
            self.a_slots = tile.int4_a_slots
            self.smem = tile.int4_smem_layout()

    def set_loader_threads(self, threads: int):
        """4-bit weights: ``threads`` threads (numbered from 0) cp.async the packed rows and scales
        (the MMA threads here; the producer warpgroup of the SM90 instantiation)."""
        if (self.bm * self.row_chunks) % threads or threads % self.row_chunks:
            raise ValueError(f"int4 weights: {self.bm} rows x {self.row_chunks} chunks do not split over "
                             f"{threads} threads")
        self.loader_threads = threads
        self.packed_loads = self.bm * self.row_chunks // threads
        self.scale_loads = (self.bm * self.row_pieces + threads - 1) // threads

    def set_epilogue_rows(self, rows: int):
        """The epilogue tile ``sC`` holds ``rows`` weight rows (all ``bm`` here; the SM90
        instantiation stores a 256-row m-block in two passes of 128)."""
        self.epi_bm = rows
        self.vecs_per_row = rows // self.rows_per_vec
        self.c_stride = c_row_stride(rows)

    def smem_total(self) -> int:
        """Shared-memory bytes of one CTA (the float32 epilogue tile reuses the rings)."""
        return self.smem.total if self.packed else self.tile.smem_bytes

    def smem_pointers(self, raw: cute.Pointer):
        """(bf16 A slots, token-row ring, packed-weight ring, scale ring) in shared memory; the
        last two only with 4-bit weights (else any pointers, never used)."""
        if cutlass.const_expr(self.packed):
            return (cute.recast_ptr(raw + self.smem.a_bf16, dtype=BFloat16),
                    cute.recast_ptr(raw + self.smem.b_ring, dtype=BFloat16),
                    cute.recast_ptr(raw + self.smem.raw_ring, dtype=Uint8),
                    cute.recast_ptr(raw + self.smem.scale_ring, dtype=self.scale_dtype))
        sa_ptr = cute.recast_ptr(raw, dtype=BFloat16)
        return (sa_ptr, cute.recast_ptr(raw + self.stages * self.bm * BK * 2, dtype=BFloat16),
                cute.recast_ptr(raw, dtype=Uint8), sa_ptr)

    # ------------------------------------------------------------------ host side (jit)

    def plan_views(self, tile_info_ptr: cute.Pointer, counters_ptr: cute.Pointer, p2e_ptr: cute.Pointer,
                   alpha_ptr: cute.Pointer, beta_ptr: cute.Pointer, clamp_ptr: cute.Pointer,
                   out_scale_ptr: cute.Pointer, max_tiles: Int32, num_experts: Int32):
        """Tensors over the plan (tile list, counters, permutation) and the per-expert SwiGLU
        parameters and output scales, as every instantiation's kernel reads them."""
        per_expert = cute.make_layout(num_experts)
        return (cute.make_tensor(tile_info_ptr, cute.make_layout((max_tiles, 4), stride=(4, 1))),
                cute.make_tensor(counters_ptr, cute.make_layout(4)),
                cute.make_tensor(p2e_ptr, cute.make_layout(max_tiles * self.bn)),
                cute.make_tensor(alpha_ptr, per_expert), cute.make_tensor(beta_ptr, per_expert),
                cute.make_tensor(clamp_ptr, per_expert), cute.make_tensor(out_scale_ptr, per_expert))

    @cute.jit
    def __call__(self, w_ptr: cute.Pointer, scale_ptr: cute.Pointer, x_ptr: cute.Pointer, p2e_ptr: cute.Pointer,
                 tile_info_ptr: cute.Pointer,
                 counters_ptr: cute.Pointer, out_ptr: cute.Pointer, lora_ptr: cute.Pointer, alpha_ptr: cute.Pointer,
                 beta_ptr: cute.Pointer, clamp_ptr: cute.Pointer, out_scale_ptr: cute.Pointer, m: Int32, k: Int32,
                 n_out: Int32, top_k: Int32, num_experts: Int32, max_tiles: Int32, num_ctas: Int32, use_pdl: Int32,
                 stream: cuda.CUstream):
        """``scale_ptr``: the block scales of 4-bit weights (bf16 weights: any pointer of the
        scales' type, never read); ``out_scale_ptr``: float32 per expert (read with ``has_out_scale``);
        ``m``: weight rows (FC1: M = 2I or I, FC2: H); ``k``: reduction size (FC1: H, FC2: I);
        ``n_out``: output row width (FC1: I, FC2: H); ``max_tiles``: the plan's tile bound;
        ``num_ctas``: persistent grid size (other schedules ignore it); ``use_pdl``: launch as a
        programmatic dependent of the previous kernel in the stream (see ``kernel``)."""
        op = cute.nvgpu.warp.MmaF16BF16Op(BFloat16, Float32, (MMA_M, MMA_N, MMA_K))
        tiled_mma = cute.make_tiled_mma(
            op, cute.make_layout((self.tile.warps_m, self.tile.warps_n, 1)),
            permutation_mnk=(self.tile.warps_m * MMA_M, self.tile.warps_n * MMA_N * self.tile.n_perm, MMA_K))
        tile_info, counters, p2e, alpha, beta, clamp, out_scale = self.plan_views(
            tile_info_ptr, counters_ptr, p2e_ptr, alpha_ptr, beta_ptr, clamp_ptr, out_scale_ptr, max_tiles,
            num_experts)
        m_blocks = (m + self.bm - 1) // self.bm
        grid = [max_tiles, m_blocks, 1]
        if cutlass.const_expr(self.schedule == "m_fastest"):
            grid = [m_blocks * max_tiles, 1, 1]  # 1-D: max_tiles may exceed the 65535 limit of grid y
        if cutlass.const_expr(self.schedule == "persistent"):
            grid = [num_ctas, 1, 1]
        self.kernel(tiled_mma, w_ptr, scale_ptr, x_ptr, out_ptr, lora_ptr, p2e, tile_info, counters, alpha, beta,
                    clamp, out_scale, m, k, n_out, top_k).launch(grid=grid, block=[self.threads, 1, 1], stream=stream,
                                               use_pdl=use_pdl)

    # ------------------------------------------------------------------ device side

    @cute.kernel
    def kernel(self, tiled_mma: cute.TiledMma, w_ptr: cute.Pointer, scale_ptr: cute.Pointer, x_ptr: cute.Pointer,
               out_ptr: cute.Pointer,
               lora_ptr: cute.Pointer, p2e: cute.Tensor, tile_info: cute.Tensor, counters: cute.Tensor,
               alpha: cute.Tensor, beta: cute.Tensor, clamp: cute.Tensor, out_scale: cute.Tensor, m: Int32,
               k: Int32, n_out: Int32, top_k: Int32):
        # Programmatic dependent launch: FC1 reads nothing before the previous kernel (the plan)
        # has completed; FC2 reads the plan (older than FC1) and streams its first weight blocks
        # before waiting for FC1's act. Both let the next kernel launch once all CTAs are running.
        # Without a programmatic launch both calls return at once.
        if cutlass.const_expr(self.is_fc1):
            cute.arch.griddepcontrol_wait()
        cute.arch.griddepcontrol_launch_dependents()
        tidx, _, _ = cute.arch.thread_idx()
        bx, by, _ = cute.arch.block_idx()
        num_tiles = counters[0]
        m_blocks = (m + self.bm - 1) // self.bm

        raw = cutlass.memory.SmemAllocator().allocate(self.smem_total(), byte_alignment=SMEM_ALIGN)
        sa_ptr, sb_ptr, sq_ptr, ss_ptr = self.smem_pointers(raw)
        sc_ptr = cute.recast_ptr(raw, dtype=Float32)

        if cutlass.const_expr(self.schedule == "tiles_fastest"):
            if bx < num_tiles:
                self.work(tiled_mma, bx, by, tidx, sa_ptr, sb_ptr, sc_ptr, sq_ptr, ss_ptr, w_ptr, scale_ptr, x_ptr,
                          out_ptr, lora_ptr, p2e, tile_info, alpha, beta, clamp, out_scale, m, k, n_out, top_k)
        elif cutlass.const_expr(self.schedule == "m_fastest"):
            if bx // m_blocks < num_tiles:
                self.work(tiled_mma, bx // m_blocks, bx % m_blocks, tidx, sa_ptr, sb_ptr, sc_ptr, sq_ptr, ss_ptr, w_ptr,
                          scale_ptr, x_ptr, out_ptr, lora_ptr, p2e, tile_info, alpha, beta, clamp, out_scale, m, k,
                          n_out, top_k)
        else:
            num_ctas, _, _ = cute.arch.grid_dim()
            for w in cutlass.range(bx, num_tiles * m_blocks, num_ctas):
                tile, mb = raster(w, tile_info, m_blocks)
                self.work(tiled_mma, tile, mb, tidx, sa_ptr, sb_ptr, sc_ptr, sq_ptr, ss_ptr, w_ptr,
                          scale_ptr, x_ptr, out_ptr, lora_ptr, p2e, tile_info, alpha, beta, clamp, out_scale, m, k,
                          n_out, top_k)
                cute.arch.sync_threads()  # the next item's loads reuse the epilogue's shared memory

    @cute.jit
    def work(self, tiled_mma: cute.TiledMma, tile: Int32, mb: Int32, tidx: Int32, sa_ptr: cute.Pointer,
             sb_ptr: cute.Pointer, sc_ptr: cute.Pointer, sq_ptr: cute.Pointer, ss_ptr: cute.Pointer,
             w_ptr: cute.Pointer, scale_ptr: cute.Pointer, x_ptr: cute.Pointer,
             out_ptr: cute.Pointer, lora_ptr: cute.Pointer, p2e: cute.Tensor, tile_info: cute.Tensor,
             alpha: cute.Tensor, beta: cute.Tensor, clamp: cute.Tensor, out_scale: cute.Tensor, m: Int32, k: Int32,
             n_out: Int32, top_k: Int32):
        """One (tile, m-block) work item: mainloop, then the epilogue."""
        bm, bn, stages = self.bm, self.bn, self.stages
        expert = tile_info[tile, 0]
        row0 = tile_info[tile, 1]
        nrows = tile_info[tile, 2]
        k_blocks = k // BK
        k_stages = k_blocks // self.kps
        ring = self.ring
        chunk = tidx % CHUNKS_PER_ROW
        row_in = tidx // CHUNKS_PER_ROW

        # ---- per-thread source pointers (k-block 0) and smem destinations of the weights
        if cutlass.const_expr(self.packed):
            a_src, a_dst, a_ok = self.packed_weight_sources(tidx, expert, mb, w_ptr, m, k)
            s_src, s_dst, s_ok = self.packed_scale_sources(tidx, expert, mb, scale_ptr, m, k)
        else:
            a_block = (Int64(expert) * Int64(k_blocks) * Int64(m) + Int64(mb * bm)) * BK
            a_src = []
            a_dst = []
            a_ok = []
            for i in cutlass.range_constexpr(self.a_loads):
                r = row_in + i * self.row_step
                a_src.append(w_ptr + cute.assume(a_block + Int64(r * BK + chunk * CHUNK), divby=CHUNK))
                a_dst.append(cute.assume(r * BK + (chunk ^ (r % 8)) * CHUNK, divby=CHUNK))
                a_ok.append(mb * bm + r < m)
            s_src, s_dst, s_ok = a_src, a_dst, a_ok  # unused
        # distance between k-blocks (bf16: elements) or 128-byte int4 blocks (bytes) of one row
        kb_stride = Int64(m) * (INT4_BLOCK_BYTES if cutlass.const_expr(self.packed) else BK)
        b_src, b_dst, b_ok = self.token_row_loads(tidx, self.threads, row0, nrows, p2e, x_ptr, k, top_k)

        g2s = cute.make_copy_atom(cute.nvgpu.cpasync.CopyG2SOp(cache_mode=cute.nvgpu.cpasync.LoadCacheMode.GLOBAL),
                                  BFloat16, num_bits_per_copy=128)
        vec = cute.make_layout(CHUNK)

        # ---- MMA partitions over the swizzled ring (int4: over the one dequantized block)
        swz = _swizzle()
        a_slots = max(self.a_slots, 1) if cutlass.const_expr(self.packed) else stages  # (register dequant: unread)
        sA = cute.make_tensor(cute.recast_ptr(sa_ptr, swz, dtype=BFloat16),
                              cute.make_layout((bm, BK, a_slots), stride=(BK, 1, bm * BK)))
        sB = cute.make_tensor(cute.recast_ptr(sb_ptr, swz, dtype=BFloat16),
                              cute.make_layout((bn, BK, ring * self.kps), stride=(BK, 1, bn * BK)))
        thr_mma = tiled_mma.get_slice(tidx)
        tCsA = thr_mma.partition_A(sA)
        tCsB = thr_mma.partition_B(sB)
        tCrA = tiled_mma.make_fragment_A(tCsA[None, None, None, 0])
        tCrB = tiled_mma.make_fragment_B(tCsB[None, None, None, 0])
        acc = cute.make_rmem_tensor(thr_mma.partition_shape_C((bm, bn)), Float32)
        acc.fill(0.0)
        s2r_a = cute.make_tiled_copy_A(cute.make_copy_atom(cute.nvgpu.warp.LdMatrix8x8x16bOp(False, 4), BFloat16),
                                       tiled_mma)
        s2r_b = cute.make_tiled_copy_B(
            cute.make_copy_atom(cute.nvgpu.warp.LdMatrix8x8x16bOp(False, 2 * self.tile.n_perm), BFloat16), tiled_mma)
        thr_s2r_a = s2r_a.get_slice(tidx)
        thr_s2r_b = s2r_b.get_slice(tidx)
        tXsA = thr_s2r_a.partition_S(sA)
        tXrA = thr_s2r_a.retile(tCrA)
        tXsB = thr_s2r_b.partition_S(sB)
        tXrB = thr_s2r_b.retile(tCrB)
        k_steps = cute.size(tCrA, mode=[2])

        weights = (kb_stride, a_src, a_dst, a_ok, s_src, s_dst, s_ok, sa_ptr, sq_ptr, ss_ptr)
        tokens = (g2s, vec, b_src, b_dst, b_ok, sb_ptr)
        mma = (tidx, tiled_mma, acc, s2r_a, s2r_b, tXsA, tXrA, tXsB, tXrB, tCrA, tCrB, k_steps, sq_ptr, ss_ptr, sa_ptr,
               sb_ptr)
        self.k_loop(k_stages, weights, tokens, mma)

        # ---- accumulators -> sC[n, p] (float32, token-row major)
        sC = cute.make_tensor(sc_ptr, cute.make_layout((bm, bn), stride=(1, self.c_stride)))
        tCsC = thr_mma.partition_C(sC)
        for i in cutlass.range(cute.size(acc), unroll_full=True):
            tCsC[i] = acc[i]
        cute.arch.sync_threads()

        self.store_tile(tidx, sc_ptr, expert, row0, nrows, mb, out_ptr, lora_ptr, p2e, alpha, beta, clamp, out_scale,
                        m, n_out)

    def token_row_loads(self, tidx: Int32, threads: int, row0: Int32, nrows: Int32, p2e: cute.Tensor,
                        x_ptr: cute.Pointer, k: Int32, top_k: Int32):
        """The token rows ``threads`` loader threads cp.async (``load_tokens``, ``b_loads`` each):
        thread ``tid`` copies 16-byte chunk ``tid % 8`` of rows ``tid // 8 + i * threads / 8`` (only the
        first ``bn * 8`` threads where that is fewer). Returns per load its source at k-block 0, its
        swizzled destination and whether it is issued: padding rows (``n >= nrows``) are not loaded.
        Their accumulator columns are never stored, and at decode, where most rows of a tile are
        padding, their loads would all read one hot row (FC1: token 0) next to the streamed weights."""
        chunk = tidx % CHUNKS_PER_ROW
        row_in = tidx // CHUNKS_PER_ROW
        partial = self.bn * CHUNKS_PER_ROW < threads
        src, dst, ok = [], [], []
        for i in range(self.b_loads):
            r = row_in + i * (threads // CHUNKS_PER_ROW)
            if partial:
                r = cutlass.min(r, self.bn - 1)
            src_row = row0 + r
            if self.gather:
                src_row = cutlass.max(p2e[row0 + r], Int32(0)) // top_k
            src.append(x_ptr + cute.assume(src_row * k + chunk * CHUNK, divby=CHUNK))
            dst.append(cute.assume(r * BK + (chunk ^ (r % 8)) * CHUNK, divby=CHUNK))
            ok.append(((tidx < self.bn * CHUNKS_PER_ROW) & (r < nrows)) if partial else (r < nrows))
        return src, dst, ok

    @cute.jit
    def k_loop(self, k_stages: Int32, weights: tuple, tokens: tuple, mma: tuple):
        """The cp.async ring over the item's ``k_stages`` stages: stage ``ks`` (k-blocks ``ks *
        kps ..``) goes to slot ``ks % ring``, ``ring - 1`` stages ahead of the MMAs. Weights are
        issued first (they do not depend on the previous kernel; group ``s`` then holds the token
        rows of stage ``s`` and every weight copy issued before it, so waiting for group ``s``
        still covers stage ``s``). The instantiation's ``load_tokens`` and ``mma_stage`` fill in
        the token rows and the MMAs; ``weights``, ``tokens``, ``mma`` are their arguments."""
        ring = self.ring
        for s in cutlass.range_constexpr(ring - 1):
            if s < k_stages:
                self.load_weights(s, s, *weights)
        if cutlass.const_expr(not self.is_fc1):
            cute.arch.griddepcontrol_wait()
        for s in cutlass.range_constexpr(ring - 1):
            if s < k_stages:
                self.load_tokens(s, s, *tokens)
            cute.arch.cp_async_commit_group()
        read_stage = Int32(0)
        write_stage = Int32(ring - 1)
        for ks in cutlass.range(k_stages, unroll=1):
            cute.arch.cp_async_wait_group(ring - 2)
            cute.arch.sync_threads()
            nxt = ks + ring - 1
            if nxt < k_stages:
                self.load_weights(nxt, write_stage, *weights)
                self.load_tokens(nxt, write_stage, *tokens)
            cute.arch.cp_async_commit_group()
            self.mma_stage(read_stage, *mma)
            write_stage = read_stage
            read_stage = read_stage + 1
            if read_stage == ring:
                read_stage = Int32(0)
        cute.arch.cp_async_wait_group(0)
        cute.arch.sync_threads()

    @cute.jit
    def mma_stage(self, stage: Int32, tidx: Int32, tiled_mma: cute.TiledMma, acc: cute.Tensor, s2r_a: cute.TiledCopy,
                  s2r_b: cute.TiledCopy, tXsA: cute.Tensor, tXrA: cute.Tensor, tXsB: cute.Tensor, tXrB: cute.Tensor,
                  tCrA: cute.Tensor, tCrB: cute.Tensor, k_steps: cutlass.Constexpr, sq_ptr: cute.Pointer,
                  ss_ptr: cute.Pointer, sa_ptr: cute.Pointer, sb_ptr: cute.Pointer):
        """The MMAs of ring slot ``stage``: ldmatrix fragments, mma.sync, k-block by k-block (4-bit
        weights with ``reg_dequant``: :meth:`mma_stage_registers`)."""
        if cutlass.const_expr(self.packed and self.reg_dequant):
            self.mma_stage_registers(stage, tidx, acc, sq_ptr, ss_ptr, sb_ptr)
        else:
            self.mma_stage_shared(stage, tidx, tiled_mma, acc, s2r_a, s2r_b, tXsA, tXrA, tXsB, tXrB, tCrA, tCrB,
                                  k_steps, sq_ptr, ss_ptr, sa_ptr)

    @cute.jit
    def mma_stage_shared(self, stage: Int32, tidx: Int32, tiled_mma: cute.TiledMma, acc: cute.Tensor,
                         s2r_a: cute.TiledCopy, s2r_b: cute.TiledCopy, tXsA: cute.Tensor, tXrA: cute.Tensor,
                         tXsB: cute.Tensor, tXrB: cute.Tensor, tCrA: cute.Tensor, tCrB: cute.Tensor,
                         k_steps: cutlass.Constexpr, sq_ptr: cute.Pointer, ss_ptr: cute.Pointer, sa_ptr: cute.Pointer):
        """ldmatrix from the bf16 weight ring, or from the bf16 slot 4-bit weights are dequantized to."""
        for sub in cutlass.range_constexpr(self.kps):
            a_slot = stage
            if cutlass.const_expr(self.packed):
                # 4-bit: dequantize k-block `sub` of the stage into slot sub % a_slots; a warp past
                # this barrier has finished the MMAs that last read that slot (they ran before its
                # previous dequantization, or before the ring's top barrier)
                a_slot = sub % self.a_slots
                self.dequantize(tidx, stage, sub, a_slot, sq_ptr, ss_ptr, sa_ptr)
                cute.arch.sync_threads()
            for kk in cutlass.range_constexpr(k_steps):
                cute.copy(s2r_a, tXsA[None, None, kk, a_slot], tXrA[None, None, kk])
                cute.copy(s2r_b, tXsB[None, None, kk, stage * self.kps + sub], tXrB[None, None, kk])
                cute.gemm(tiled_mma, acc, tCrA[None, None, kk], tCrB[None, None, kk], acc)

    @cute.jit
    def mma_stage_registers(self, stage: Int32, tidx: Int32, acc: cute.Tensor, sq_ptr: cute.Pointer,
                            ss_ptr: cute.Pointer, sb_ptr: cute.Pointer):
        """4-bit weights dequantized into the A registers of the warp's MMAs (warps_n == 1).

        The reduction order inside a k-block is free as long as A and B agree on it, so each lane
        takes what is cheap to load: lane ``4g + t`` reads bytes ``8t .. 8t+8`` of its weight rows
        ``g`` and ``g + 8`` (values ``k = 16t .. 16t+16``, one 8-byte load each, inside one scale
        group) and the same 16 k of token row ``g`` (two 16-byte loads, chunks ``2t, 2t+1`` of the
        swizzled row). Its 8 bf16 pairs per row (``register_pair_k``) feed MMA step ``kk`` as A
        pairs ``2kk`` (MMA k ``2t, 2t+1``) and ``2kk + 1`` (MMA k ``2t+8, 2t+9``), matched by the
        same token pairs in B (``register_a_pair``, ``register_b_pair``). The accumulators keep
        the tiled MMA's layout, so the template's epilogue stores them unchanged."""
        lane = tidx % 32
        g = lane // 4
        t = lane % 4
        warps_m = self.tile.warps_m
        m_tiles = self.bm // (warps_m * MMA_M)
        n_tiles = self.bn // MMA_N
        first_row = (tidx // 32) * MMA_M + g  # m-tile mi adds mi * warps_m * 16, its second row 8
        scale_words = self.scale_words(ss_ptr, stage)
        for sub in cutlass.range_constexpr(self.kps):
            # token words: b[ni, 4c + j] is the bf16 pair k = 16t + 8c + 2j of token row 8 ni + g
            b = cute.make_rmem_tensor((n_tiles, 8), Int32)
            tokens = sb_ptr + cute.assume((stage * self.kps + sub) * (self.bn * BK), divby=CHUNK)
            for ni in cutlass.range_constexpr(n_tiles):
                n = ni * MMA_N + g
                for c in cutlass.range_constexpr(2):
                    chunk = cute.make_rmem_tensor(4, Int32)
                    src = tokens + cute.assume(n * BK + ((2 * t + c) ^ (n % 8)) * CHUNK, divby=CHUNK)
                    cute.autovec_copy(cute.make_tensor(cute.recast_ptr(src, dtype=Int32), cute.make_layout(4)), chunk)
                    for j in cutlass.range_constexpr(4):
                        b[ni, 4 * c + j] = chunk[j]
            k_block = self.packed_k_block(sq_ptr, stage, sub)
            for mi in cutlass.range_constexpr(m_tiles):
                # a[h, Q]: bf16 pair Q of weight row first_row + 8h
                a = cute.make_rmem_tensor((2, 8), Int32)
                for h in cutlass.range_constexpr(2):
                    r = first_row + mi * (warps_m * MMA_M) + 8 * h
                    words = cute.make_rmem_tensor(2, Int32)
                    src = cute.recast_ptr(k_block + cute.assume(r * INT4_ROW_BYTES + 8 * t, divby=8), dtype=Int32)
                    cute.autovec_copy(cute.make_tensor(src, cute.make_layout(2)), words)
                    self.dequantize_pairs(words, scale_words[sub, r], t, a, h)
                for kk in cutlass.range_constexpr(BK // MMA_K):
                    for ni in cutlass.range_constexpr(n_tiles):
                        # acc is the tiled MMA's ((2, 2), m_tiles, n_tiles) fragment, column-major
                        d = mma_bf16([a[register_a_pair(kk, reg)] for reg in range(4)],
                                     [b[ni, register_b_pair(kk, reg)] for reg in range(2)],
                                     [acc[i + 4 * (mi + m_tiles * ni)] for i in range(4)])
                        for i in cutlass.range_constexpr(4):
                            acc[i + 4 * (mi + m_tiles * ni)] = d[i]

    @cute.jit
    def dequantize_pairs(self, words: cute.Tensor, scale_word: Int32, t: Int32, a: cute.Tensor,
                         h: cutlass.Constexpr):
        """16 packed values (two words, value ``v`` in bits ``4v``) of one row -> bf16 pairs
        ``a[h, Q]`` (values ``2Q, 2Q + 1``), scaled by the row's scale of lane ``t``'s group in
        ``scale_word``: MXINT4 the bf16 ``t // 2`` (32-value groups), NVFP4 the ue4m3 byte ``t``."""
        if cutlass.const_expr(self.fp4):
            s2 = fp4_convert.scale_pair(scale_word >> (8 * t), 0)
        else:
            s2 = int4_convert.scale_pair(scale_word, t // 2)
        for c in cutlass.range_constexpr(2):
            pairs = self.scaled_word(words[c], s2)
            for j in cutlass.range_constexpr(4):
                a[h, 4 * c + j] = pairs[j]

    @cute.jit
    def load_weights(self, kb: Int32, stage: Int32, kb_stride: Int64, a_src: list, a_dst: list, a_ok: list,
                     s_src: list, s_dst: list, s_ok: list, sa_ptr: cute.Pointer, sq_ptr: cute.Pointer,
                     ss_ptr: cute.Pointer):
        """cp.async k-block ``kb`` of the CTA's weight rows (4-bit: packed bytes and scales) into
        ring slot ``stage``."""
        if cutlass.const_expr(self.packed):
            g2s16 = cute.make_copy_atom(
                cute.nvgpu.cpasync.CopyG2SOp(cache_mode=cute.nvgpu.cpasync.LoadCacheMode.GLOBAL), Uint8,
                num_bits_per_copy=128)
            # stage kb (here: the stage index) starts at k-block kb0 = kb * kps. MXINT4: quarter
            # kb0 % 4 of 128-byte block kb0 // 4; NVFP4: bytes 32 * kb0 of the row
            kb0 = kb * self.kps
            q_kb = cute.assume(Int64(kb0 // 4) * kb_stride + Int64((kb0 % 4) * INT4_ROW_BYTES), divby=16)
            if cutlass.const_expr(self.fp4):
                q_kb = cute.assume(Int64(kb0 * INT4_ROW_BYTES), divby=16)
            q_stage = stage * (self.bm * INT4_ROW_BYTES * self.kps)
            for i in cutlass.range_constexpr(self.packed_loads):
                if a_ok[i]:
                    cute.copy(g2s16, cute.make_tensor(a_src[i] + q_kb, cute.make_layout(16)),
                              cute.make_tensor(sq_ptr + cute.assume(q_stage + a_dst[i], divby=16),
                                               cute.make_layout(16)))
            self.load_scales(kb, stage, s_src, s_dst, s_ok, ss_ptr)
        else:
            g2s = cute.make_copy_atom(
                cute.nvgpu.cpasync.CopyG2SOp(cache_mode=cute.nvgpu.cpasync.LoadCacheMode.GLOBAL), BFloat16,
                num_bits_per_copy=128)
            vec = cute.make_layout(CHUNK)
            a_kb = cute.assume(kb_stride * Int64(kb), divby=BK)
            a_stage = stage * (self.bm * BK)
            for i in cutlass.range_constexpr(self.a_loads):
                if a_ok[i]:
                    cute.copy(g2s, cute.make_tensor(a_src[i] + a_kb, vec),
                              cute.make_tensor(sa_ptr + cute.assume(a_stage + a_dst[i], divby=CHUNK), vec))

    @cute.jit
    def load_scales(self, kb: Int32, stage: Int32, s_src: list, s_dst: list, s_ok: list, ss_ptr: cute.Pointer):
        """cp.async the block scales of stage ``kb`` (k-blocks ``kb * kps ..``: columns
        ``scales_per_kb * kb * kps ..``, in 4-column groups) into scale-ring slot ``stage``."""
        g2s_s = cute.make_copy_atom(cute.nvgpu.cpasync.CopyG2SOp(), self.scale_dtype,
                                    num_bits_per_copy=self.scale_dtype.width * self.piece_scales)
        c0 = kb * self.kps * self.scales_per_kb
        s_kb = cute.assume((c0 // 4) * (SCALE_TILE * 4) + c0 % 4, divby=self.piece_scales)
        s_stage = stage * (self.bm * self.scales_per_kb * self.kps)
        piece = cute.make_layout(self.piece_scales)
        for i in cutlass.range_constexpr(self.scale_loads):
            if s_ok[i]:
                cute.copy(g2s_s, cute.make_tensor(s_src[i] + s_kb, piece),
                          cute.make_tensor(ss_ptr + cute.assume(s_stage + s_dst[i], divby=self.piece_scales), piece))

    def packed_weight_sources(self, tidx: Int32, expert: Int32, mb: Int32, w_ptr: cute.Pointer, m: Int32, k: Int32):
        """Packed rows at stage 0: thread ``tid`` copies 16-byte chunk ``tid % row_chunks`` of rows
        ``tid // row_chunks + i * threads / row_chunks``. MXINT4: row ``p`` of block ``b`` starts
        at byte ``((e * K/256 + b) * M + p) * 128``; NVFP4: CTA row ``p`` reads checkpoint row
        ``src(p)`` (``fp4_source_row``) at byte ``(e * M + src(p)) * K/2``."""
        c = tidx % self.row_chunks
        first = Int64(expert) * Int64(k // INT4_BLOCK_K) * Int64(m)
        src, dst, ok = [], [], []
        for i in range(self.packed_loads):
            r = tidx // self.row_chunks + i * (self.loader_threads // self.row_chunks)
            p = mb * self.bm + r
            if cutlass.const_expr(self.fp4):
                row = Int64(expert) * Int64(m) + Int64(self.fp4_source_row(p, m))
                src.append(w_ptr + cute.assume(row * Int64(k // 2) + Int64(c * 16), divby=16))
            else:
                src.append(w_ptr + cute.assume((first + Int64(p)) * INT4_BLOCK_BYTES + Int64(c * 16), divby=16))
            dst.append((c // INT4_CHUNKS) * (self.bm * INT4_ROW_BYTES) + r * INT4_ROW_BYTES + (c % INT4_CHUNKS) * 16)
            ok.append(p < m)
        return src, dst, ok

    def packed_k_block(self, sq_ptr: cute.Pointer, stage: Int32, sub: cutlass.Constexpr) -> cute.Pointer:
        """k-block ``sub`` of packed-ring slot ``stage``: ``bm`` rows of 32 bytes (the ring is
        k-block major, so that the 4 or 8 rows one access phase reads are 128 contiguous bytes)."""
        return sq_ptr + cute.assume(stage * (self.bm * INT4_ROW_BYTES * self.kps) + sub * (self.bm * INT4_ROW_BYTES),
                                    divby=16)

    def scale_words(self, ss_ptr: cute.Pointer, stage: Int32) -> cute.Tensor:
        """Scale-ring slot ``stage`` as 32-bit words ``[sub, row]``: the scales of one row and
        k-block (2 bf16 or 4 ue4m3) are one word."""
        return cute.make_tensor(
            cute.recast_ptr(ss_ptr + stage * (self.bm * self.scales_per_kb * self.kps), dtype=Int32),
            cute.make_layout((self.kps, self.bm), stride=(1, self.kps)))

    def scaled_word(self, word: Int32, s2: Int32) -> list:
        """The 8 packed values of ``word`` (value ``v`` in bits ``4v``) times the scale pair ``s2``:
        4 bf16x2 words, pair ``j`` = values ``2j, 2j + 1``. MXINT4 ``bf16(q * s)``
        (cute_moe.kernels.int4_convert), NVFP4 ``e2m1 * ue4m3`` exactly (fp4_convert)."""
        if self.fp4:
            hi = word >> 4
            return [fp4_convert.scaled_pair(word, hi, s2, j) for j in range(INT4_PER_WORD // 2)]
        hi = word >> 4
        return [int4_convert.scaled_pair(word, hi, s2, j) for j in range(INT4_PER_WORD // 2)]

    def fp4_source_row(self, p: Int32, m: Int32) -> Int32:
        """The checkpoint row behind prepared row ``p`` (cute_moe.layouts.fc1_source_rows): the
        32-row shuffle ``q = 32*(p//32) + 4*(p%8) + (p%32)//8``, then for a gated FC1 the
        interleave (``q = 2i``: up row ``i``, ``q = 2i + 1``: gate row ``M/2 + i``)."""
        q = 32 * (p // 32) + 4 * (p % 8) + (p % 32) // 8
        if cutlass.const_expr(self.gated):
            q = q // 2 + (q % 2) * (m // 2)
        return q

    def packed_scale_sources(self, tidx: Int32, expert: Int32, mb: Int32, scale_ptr: cute.Pointer, m: Int32,
                             k: Int32):
        """Scale pieces at stage 0: item ``tid + i * threads`` is piece ``item % row_pieces`` of
        row ``item // row_pieces`` (``piece_scales`` adjacent scales, the next piece one 4-column
        group, 512 elements, on); scale ``(p, c)`` of an expert's ``[Rp, Cp]`` matrix (``Rp``: M
        padded to 128 rows, ``Cp = K / group``) sits at ``(p // 128) * 128 * Cp + (c // 4) * 512 +
        (p % 32) * 16 + ((p % 128) // 32) * 4 + c % 4``. NVFP4 reads the row of ``src(p)``."""
        cp = k // (FP4_GROUP if cutlass.const_expr(self.fp4) else INT4_GROUP)
        rp = (m + SCALE_TILE - 1) // SCALE_TILE * SCALE_TILE
        first = Int64(expert) * Int64(rp) * Int64(cp)
        src, dst, ok = [], [], []
        for i in range(self.scale_loads):
            item = tidx + i * self.loader_threads
            r = item // self.row_pieces
            piece = item % self.row_pieces
            p = mb * self.bm + r
            srow = p
            if cutlass.const_expr(self.fp4):
                srow = self.fp4_source_row(p, m)
            off = (srow // SCALE_TILE) * SCALE_TILE * cp + (srow % 32) * 16 + ((srow % SCALE_TILE) // 32) * 4 \
                + piece * (SCALE_TILE * 4)
            src.append(scale_ptr + cute.assume(first + Int64(off), divby=4))
            dst.append(r * (self.scales_per_kb * self.kps) + piece * self.piece_scales)
            ok.append((r < self.bm) & (p < m))
        return src, dst, ok

    @cute.jit
    def dequantize(self, tidx: Int32, stage: Int32, sub: cutlass.Constexpr, slot: cutlass.Constexpr,
                   sq_ptr: cute.Pointer, ss_ptr: cute.Pointer, sa_ptr: cute.Pointer):
        """k-block ``sub`` of ring slot ``stage`` (packed rows, scales) -> bf16 slot ``slot`` of
        ``sA`` (swizzled). Unit ``u``: row ``u // 2``, half ``h = u % 2`` (values ``32h .. 32h + 32``,
        16 packed bytes) -> 4 chunks of 8 bf16. MXINT4: one scale per unit, ``bf16(q * s)``
        (cute_moe.kernels.int4_convert); NVFP4: word ``c`` of the unit takes ue4m3 scale
        ``2h + c // 2`` of the row's word, ``e2m1 * ue4m3`` exactly (cute_moe.kernels.fp4_convert)."""
        raw = self.packed_k_block(sq_ptr, stage, sub)
        scale_words = self.scale_words(ss_ptr, stage)
        sa_words = cute.recast_ptr(sa_ptr + slot * (self.bm * BK), dtype=Int32)
        for j in cutlass.range_constexpr(self.dequant_units):
            u = tidx + j * self.threads
            r = u // INT4_SCALES_PER_KB
            self.dequantize_unit(r, u % INT4_SCALES_PER_KB, raw, scale_words[sub, r], sa_words)

    @cute.jit
    def dequantize_unit(self, r: Int32, h: Int32, raw: cute.Pointer, four: Int32, sa_words: cute.Pointer):
        """Half ``h`` of row ``r`` of a packed k-block (16 bytes at ``raw``, k-block major), with
        the row's scale word ``four`` -> 4 swizzled 16-byte bf16 chunks of row ``r`` at ``sa_words``."""
        words_per_unit = INT4_GROUP // INT4_PER_WORD
        words = cute.make_rmem_tensor(words_per_unit, Int32)
        src = cute.recast_ptr(raw + cute.assume(r * INT4_ROW_BYTES + h * 16, divby=16), dtype=Int32)
        cute.autovec_copy(cute.make_tensor(src, cute.make_layout(words_per_unit)), words)
        if cutlass.const_expr(self.fp4):
            # bytes 2h, 2h + 1 of the word scale the two 16-value blocks of this half
            half = four >> (16 * h)
            s2_fp4 = [fp4_convert.scale_pair(half, 0), fp4_convert.scale_pair(half, 1)]
        else:
            s2 = int4_convert.scale_pair(four, h)
        for c in cutlass.range_constexpr(words_per_unit):
            out = cute.make_rmem_tensor(CHUNK // 2, Int32)
            pairs = self.scaled_word(words[c], s2_fp4[c // 2] if cutlass.const_expr(self.fp4) else s2)
            for p in cutlass.range_constexpr(CHUNK // 2):
                out[p] = pairs[p]
            chunk = h * words_per_unit + c
            dst = sa_words + cute.assume((r * BK + (chunk ^ (r % 8)) * CHUNK) // 2, divby=4)
            cute.autovec_copy(out, cute.make_tensor(dst, cute.make_layout(CHUNK // 2)))

    @cute.jit
    def load_tokens(self, ks: Int32, stage: Int32, g2s: cute.CopyAtom, vec: cute.Layout, b_src: list, b_dst: list,
                    b_ok, sb_ptr: cute.Pointer):
        """cp.async the ``kps`` k-blocks of stage ``ks`` of the tile's token rows (those with
        ``b_ok``) into ring slot ``stage`` (k-block ``sub`` in sub-slot ``stage * kps + sub``)."""
        for sub in cutlass.range_constexpr(self.kps):
            b_kb = cute.assume((ks * self.kps + sub) * BK, divby=CHUNK)
            b_stage = (stage * self.kps + sub) * (self.bn * BK)
            for i in cutlass.range_constexpr(self.b_loads):
                if b_ok[i]:
                    cute.copy(g2s, cute.make_tensor(b_src[i] + b_kb, vec),
                              cute.make_tensor(sb_ptr + cute.assume(b_stage + b_dst[i], divby=CHUNK), vec))

    @cute.jit
    def store_tile(self, tidx: Int32, sc_ptr: cute.Pointer, expert: Int32, row0: Int32, nrows: Int32, block: Int32,
                   out_ptr: cute.Pointer, lora_ptr: cute.Pointer, p2e: cute.Tensor, alpha: cute.Tensor,
                   beta: cute.Tensor, clamp: cute.Tensor, out_scale: cute.Tensor, m: Int32, n_out: Int32):
        """The epilogue of the staged tile ``sC`` (``epi_bm``-row block ``block``): FC1 or FC2."""
        if cutlass.const_expr(self.is_fc1):
            self.store_fc1(tidx, sc_ptr, expert, row0, nrows, block, out_ptr, lora_ptr, p2e, alpha, beta, clamp,
                           out_scale, m, n_out)
        else:
            self.store_fc2(tidx, sc_ptr, expert, row0, nrows, block, out_ptr, out_scale, m, n_out)

    def expert_scalars(self, expert: Int32, alpha: cute.Tensor, beta: cute.Tensor, clamp: cute.Tensor,
                       out_scale: cute.Tensor):
        """The epilogue's per-expert scalars: SwiGLU alpha, beta and limit, and the output scale
        (1, 0, 0, 1 where the kernel does not take them; read only where it does)."""
        a_e, b_e, c_e, s_e = Float32(1.0), Float32(0.0), Float32(0.0), Float32(1.0)
        if cutlass.const_expr(self.has_alpha):
            a_e = alpha[expert]
        if cutlass.const_expr(self.has_beta):
            b_e = beta[expert]
        if cutlass.const_expr(self.has_clamp):
            c_e = clamp[expert]
        if cutlass.const_expr(self.has_out_scale):
            s_e = out_scale[expert]
        return a_e, b_e, c_e, s_e

    @cute.jit
    def store_fc1(self, tidx: Int32, sc_ptr: cute.Pointer, expert: Int32, row0: Int32, nrows: Int32, mb: Int32,
                  out_ptr: cute.Pointer, lora_ptr: cute.Pointer, p2e: cute.Tensor, alpha: cute.Tensor,
                  beta: cute.Tensor, clamp: cute.Tensor, out_scale: cute.Tensor, m: Int32, n_out: Int32):
        """act[row0 + n, c .. c+8) for the vectors of ``epi_bm``-row block ``mb`` (activation in
        float32); columns past ``n_out`` belong to weight rows past M (a partial last m-block) and
        are skipped."""
        tasks = self.bn * self.vecs_per_row
        a_e, b_e, c_e, s_e = self.expert_scalars(expert, alpha, beta, clamp, out_scale)
        out_vec = cute.make_layout(CHUNK)
        for it in cutlass.range_constexpr((tasks + self.threads - 1) // self.threads):
            q = tidx + it * self.threads
            v = q % self.vecs_per_row
            n = q // self.vecs_per_row
            col = mb * (self.epi_bm // 2) + v * CHUNK  # first output column (intermediate index)
            if cutlass.const_expr(not self.gated):
                col = mb * self.epi_bm + v * CHUNK
            if (q < tasks) & (n < nrows) & (col < n_out):
                res = cute.make_rmem_tensor(CHUNK, Float32)
                if cutlass.const_expr(self.gated):
                    vals = cute.make_rmem_tensor((4, 4), Float32)
                    src = sc_ptr + cute.assume(n * self.c_stride + epi.gated_base(v), divby=4)
                    cute.autovec_copy(cute.make_tensor(src, epi.gated_view_layout()), vals)
                    up = cute.make_rmem_tensor(CHUNK, Float32)
                    gate = cute.make_rmem_tensor(CHUNK, Float32)
                    for i in cutlass.range_constexpr(CHUNK):
                        up[i] = vals[i // 2, 2 * (i % 2)]
                        gate[i] = vals[i // 2, 2 * (i % 2) + 1]
                        if cutlass.const_expr(self.has_out_scale):
                            up[i] = up[i] * s_e
                            gate[i] = gate[i] * s_e
                    if cutlass.const_expr(self.has_lora):
                        ex = p2e[row0 + n]
                        row = Int64(ex) * Int64(2 * n_out)
                        d_up = cute.make_rmem_tensor(CHUNK, BFloat16)
                        d_gate = cute.make_rmem_tensor(CHUNK, BFloat16)
                        cute.autovec_copy(cute.make_tensor(lora_ptr + (row + Int64(cute.assume(col, divby=CHUNK))),
                                                           out_vec), d_up)
                        cute.autovec_copy(
                            cute.make_tensor(lora_ptr + (row + Int64(cute.assume(n_out + col, divby=CHUNK))), out_vec),
                            d_gate)
                        for i in cutlass.range_constexpr(CHUNK):
                            up[i] = up[i] + Float32(d_up[i])
                            gate[i] = gate[i] + Float32(d_gate[i])
                    for i in cutlass.range_constexpr(CHUNK):
                        if cutlass.const_expr(self.oss):
                            res[i] = epi.swiglu_oss(up[i], gate[i], a_e, b_e, c_e, self.has_alpha, self.has_beta,
                                                    self.has_clamp)
                        else:
                            res[i] = epi.swiglu(up[i], gate[i])
                else:
                    vals = cute.make_rmem_tensor((2, 4), Float32)
                    src = sc_ptr + cute.assume(n * self.c_stride + epi.plain_base(v), divby=2)
                    cute.autovec_copy(cute.make_tensor(src, epi.plain_view_layout()), vals)
                    for i in cutlass.range_constexpr(CHUNK):
                        if cutlass.const_expr(self.has_out_scale):
                            res[i] = epi.relu2(vals[i // 4, i % 4] * s_e)
                        else:
                            res[i] = epi.relu2(vals[i // 4, i % 4])
                out = cute.make_rmem_tensor(CHUNK, BFloat16)
                out.store(res.load().to(BFloat16))
                dst = out_ptr + cute.assume(Int32(row0 + n) * n_out + col, divby=CHUNK)
                cute.autovec_copy(out, cute.make_tensor(dst, out_vec))

    @cute.jit
    def store_fc2(self, tidx: Int32, sc_ptr: cute.Pointer, expert: Int32, row0: Int32, nrows: Int32, mb: Int32,
                  out_ptr: cute.Pointer, out_scale: cute.Tensor, m: Int32, n_out: Int32):
        """gemm2_output[row0 + n, c .. c+8) for the unshuffled rows of ``epi_bm``-row block ``mb``."""
        tasks = self.bn * self.vecs_per_row
        s_e = Float32(1.0)
        if cutlass.const_expr(self.has_out_scale):
            s_e = out_scale[expert]
        out_vec = cute.make_layout(CHUNK)
        for it in cutlass.range_constexpr((tasks + self.threads - 1) // self.threads):
            q = tidx + it * self.threads
            v = q % self.vecs_per_row
            n = q // self.vecs_per_row
            col = mb * self.epi_bm + v * CHUNK
            if (q < tasks) & (n < nrows) & (col < m):
                vals = cute.make_rmem_tensor((2, 4), Float32)
                src = sc_ptr + cute.assume(n * self.c_stride + epi.plain_base(v), divby=2)
                cute.autovec_copy(cute.make_tensor(src, epi.plain_view_layout()), vals)
                out = cute.make_rmem_tensor(CHUNK, BFloat16)
                for i in cutlass.range_constexpr(CHUNK):
                    if cutlass.const_expr(self.has_out_scale):
                        out[i] = BFloat16(vals[i // 4, i % 4] * s_e)
                    else:
                        out[i] = BFloat16(vals[i // 4, i % 4])
                dst = out_ptr + cute.assume(Int32(row0 + n) * n_out + col, divby=CHUNK)
                cute.autovec_copy(out, cute.make_tensor(dst, out_vec))


# --------------------------------------------------------------------------- compile-time examples


def example_args(weight_format: str = "bf16", packed_tokens: bool = False):
    """Arguments that compile a ``GroupedGemm`` (``packed_tokens``: its SM120 block-scaled
    instantiation, whose token rows are packed NVFP4 bytes) without a GPU (pointers never
    dereferenced)."""
    bf16 = lambda: runtime.fake_ptr(torch.bfloat16, 16)  # noqa: E731
    i32 = lambda: runtime.fake_ptr(torch.int32, 16)  # noqa: E731
    f32 = lambda: runtime.fake_ptr(torch.float32, 4)  # noqa: E731
    weights = bf16() if weight_format == "bf16" else runtime.fake_ptr(torch.uint8, 16)
    scales = {"bf16": bf16, "mxint4": lambda: runtime.fake_ptr(torch.bfloat16, INT4_SCALE_ALIGN),
              "nvfp4": lambda: runtime.fake_ptr(torch.uint8, FP4_SCALE_ALIGN)}[weight_format]()
    tokens = runtime.fake_ptr(torch.uint8, 16) if packed_tokens else bf16()
    return (weights, scales, tokens, i32(), i32(), i32(), bf16(), bf16(), f32(), f32(), f32(), f32(),
            256, 256, 128, 1, 1, 1, 1, 0, runtime.fake_stream())
