"""SM120 instantiation of the grouped GEMM for NVFP4 x NVFP4: the block-scaled FP4 warp MMA.

Computes what ``GroupedGemm`` computes for b12x's nvfp4 mode, with both operands left in FP4:

    C[m, n] = sum_k W_e[m, k] * X[row0 + n, k]      W = e2m1 * ue4m3 (weights), X likewise (tokens)

The dequantizing template multiplies the same exact values in bf16; here
``mma.sync.aligned.kind::mxf4nvf4.block_scale.scale_vec::4X.m16n8k64`` takes the packed codes and
their ue4m3 scales (one per 16 values) directly, so nothing is converted in the mainloop.

* Weights: b12x's packed rows and 128x4-interleaved scales, read by the template's loader
  (``load_weights``: CTA row ``p`` from checkpoint row ``src(p)``, 32 bytes and one 4-byte scale
  word per row and 64-value k-block) into the same packed and scale rings.
* Token rows: the buffer of ``fp4_quantize.QuantizeRows(packed=True)``: codes ``[P, K/2]`` then
  scales ``[P, K/16]`` (``P = max_tiles * bn``), permuted rows ``row0 + n``; cp.async into two more
  rings (32 bytes and 4 bytes per row and k-block).
* Fragments of one m16n8k64 atom (lane ``4g + t``; a register holds 8 consecutive k, low nibble
  first, so it is 4 consecutive bytes of a packed row):
  A: ``a0`` bytes ``4t .. 4t+3`` of weight row ``g``'s 32-byte k-block, ``a1`` of row ``g + 8``,
  ``a2`` / ``a3`` bytes ``16 + 4t`` of rows ``g`` / ``g + 8``; B: ``b0`` bytes ``4t`` and ``b1``
  bytes ``16 + 4t`` of token row ``g``; scales (byte and thread selectors 0): SFA the word of
  weight row ``g + 8 (t % 2)``, SFB the word of token row ``g``; C: ``c0, c1`` = (row ``g``,
  tokens ``2t, 2t + 1``), ``c2, c3`` = row ``g + 8``.
* Warps tile the CTA as the template's ``warps_m x warps_n`` (warp ``w``: rows ``(w % warps_m) *
  bm / warps_m``, tokens ``(w // warps_m) * bn / warps_n``); accumulators go to the float32
  epilogue tile ``sC[n, p]`` and the template's epilogue stores them.

Compiled for sm_120a only (the instruction exists there); checked by compiling: no SM120 GPU has
run it yet.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64, Uint8
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T

from ..enums import ActivationType
from .gemm_config import BK, FP4_GROUP, INT4_ROW_BYTES, MMA_M, MMA_N, TileConfig
from .grouped_gemm import GroupedGemm

FP4_MMA_K = 64  # values per m16n8k64 atom: one k-block
SCALE_WORD = 4  # bytes: the 4 ue4m3 scales of one row and k-block
MMA_PTX = ("{\n.reg .b16 z;\nmov.b16 z, 0;\n"
           "mma.sync.aligned.kind::mxf4nvf4.block_scale.scale_vec::4X.m16n8k64.row.col.f32.e2m1.e2m1.f32.ue4m3 "
           "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13}, {$14}, {z, z}, {$15}, {z, z};\n}")


# Fragments of one m16n8k64 atom: where lane ``lane``'s register ``reg`` comes from. Plain
# arithmetic, so the kernel evaluates them on its registers and tests on Python ints
# (tests/test_grouped_gemm.py checks them against the DSL's layouts of the instruction).


def a_fragment(lane, reg):
    """A register ``reg`` (0..3) -> (weight row in the atom, first byte in the row's k-block)."""
    return lane // 4 + 8 * (reg % 2), 4 * (lane % 4) + 16 * (reg // 2)


def b_fragment(lane, reg):
    """B register ``reg`` (0..1) -> (token row in the atom, first byte in the row's k-block)."""
    return lane // 4, 4 * (lane % 4) + 16 * reg


def c_fragment(lane, reg):
    """Accumulator ``reg`` (0..3) -> (weight row, token row) in the atom."""
    return lane // 4 + 8 * (reg // 2), 2 * (lane % 4) + reg % 2


def sfa_row(lane):
    """The weight row whose scale word lane ``lane`` supplies (byte / thread selectors 0)."""
    return lane // 4 + 8 * (lane % 2)


def sfb_row(lane):
    """The token row whose scale word lane ``lane`` supplies."""
    return lane // 4


def mma_fp4(a: list, b: list, c: list, sfa: Int32, sfb: Int32) -> list:
    """One block-scaled m16n8k64 MMA: ``a`` 4 words, ``b`` 2 words, ``c`` 4 float32 -> 4 float32."""
    operands = [Int32(v).ir_value() for v in a + b] + [Float32(v).ir_value() for v in c] + \
        [Int32(sfa).ir_value(), Int32(sfb).ir_value()]
    res = llvm.inline_asm(llvm.StructType.get_literal([T.f32()] * 4), operands, MMA_PTX,
                          "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f,r,r", has_side_effects=False, is_align_stack=False)
    return [Float32(llvm.extractvalue(T.f32(), res, [i])) for i in range(4)]


class BlockScaledGroupedGemm(GroupedGemm):
    """``GroupedGemm`` for NVFP4 weights and NVFP4 token rows on SM120 (module docstring). Same
    constructor (``weight_format`` is "nvfp4", the token rows are the packed quantized rows) and
    launch arguments, ``x_ptr`` pointing at the packed token-row buffer."""

    def __init__(self, op: str, tile: TileConfig, schedule: str, activation: int = int(ActivationType.Swiglu),
                 has_out_scale: bool = True, **kwargs):
        if kwargs.get("weight_format", "nvfp4") != "nvfp4" or kwargs.get("has_lora"):
            raise ValueError("BlockScaledGroupedGemm: NVFP4 weights, no LoRA delta")
        if tile.mma != "warp":
            raise ValueError(f"BlockScaledGroupedGemm takes a warp-MMA tile, got {tile}")
        kwargs.update(weight_format="nvfp4", gather_rows=False)
        super().__init__(op, tile, schedule, activation=activation, has_out_scale=has_out_scale, **kwargs)
        self.wm, self.wn = self.bm // tile.warps_m, self.bn // tile.warps_n
        self.atoms_m, self.atoms_n = self.wm // MMA_M, self.wn // MMA_N
        self.row_bytes = INT4_ROW_BYTES * self.kps  # packed bytes of one row in one ring stage
        # token rows per stage: bn rows x row_bytes in 16-byte chunks, and one scale piece per row
        self.tok_chunks = self.bn * self.row_bytes // 16
        self.tok_loads = (self.tok_chunks + self.threads - 1) // self.threads
        self.tok_scale_bytes = SCALE_WORD * self.kps
        ring = self.ring
        a_raw = ring * self.bm * self.row_bytes
        a_scales = ring * self.bm * self.tok_scale_bytes
        b_raw = ring * self.bn * self.row_bytes
        b_scales = ring * self.bn * self.tok_scale_bytes
        self.offsets = (0, a_raw, a_raw + a_scales, a_raw + a_scales + b_raw)
        self.total = max(sum((a_raw, a_scales, b_raw, b_scales)), tile.epilogue_bytes)

    def smem_total(self) -> int:
        return self.total

    def smem_pointers(self, raw: cute.Pointer):
        """(token scale ring, token ring, packed-weight ring, weight scale ring), all bytes."""
        a_raw, a_scales, b_raw, b_scales = (raw + off for off in self.offsets)
        return (cute.recast_ptr(b_scales, dtype=Uint8), cute.recast_ptr(b_raw, dtype=Uint8),
                cute.recast_ptr(a_raw, dtype=Uint8), cute.recast_ptr(a_scales, dtype=Uint8))

    @cute.jit
    def work(self, tiled_mma: cute.TiledMma, tile: Int32, mb: Int32, tidx: Int32, sa_ptr: cute.Pointer,
             sb_ptr: cute.Pointer, sc_ptr: cute.Pointer, sq_ptr: cute.Pointer, ss_ptr: cute.Pointer,
             w_ptr: cute.Pointer, scale_ptr: cute.Pointer, x_ptr: cute.Pointer,
             out_ptr: cute.Pointer, lora_ptr: cute.Pointer, p2e: cute.Tensor, tile_info: cute.Tensor,
             alpha: cute.Tensor, beta: cute.Tensor, clamp: cute.Tensor, out_scale: cute.Tensor, m: Int32, k: Int32,
             n_out: Int32, top_k: Int32):
        """One (tile, m-block) work item: the block-scaled mainloop, then the template's epilogue.
        ``sa_ptr`` / ``sb_ptr``: the token scale / token rings (smem_pointers)."""
        bn, kps = self.bn, self.kps
        expert = tile_info[tile, 0]
        row0 = tile_info[tile, 1]
        nrows = tile_info[tile, 2]
        k_stages = k // BK // kps
        a_src, a_dst, a_ok = self.packed_weight_sources(tidx, expert, mb, w_ptr, m, k)
        s_src, s_dst, s_ok = self.packed_scale_sources(tidx, expert, mb, scale_ptr, m, k)
        kb_stride = Int64(0)  # NVFP4 rows are contiguous along K (load_weights ignores it)

        # token rows: chunk item i = tidx + j * threads is 16-byte chunk (i % chunks_per_row) of
        # row i // chunks_per_row; the scales follow the codes of all P rows
        chunks_per_row = self.row_bytes // 16
        half_k = cute.assume(Int64(k // 2), divby=16)
        t_src, t_dst, t_ok = [], [], []
        for j in cutlass.range_constexpr(self.tok_loads):
            item = tidx + j * self.threads
            r = item // chunks_per_row
            c = item % chunks_per_row
            t_src.append(x_ptr + cute.assume(Int64(row0 + r) * half_k + Int64(c * 16), divby=16))
            t_dst.append(r * self.row_bytes + c * 16)
            t_ok.append(item < self.tok_chunks)
        max_rows = Int64(cute.size(p2e.layout))
        x_scales = x_ptr + cute.assume(max_rows * half_k, divby=16)  # K % 128 == 0
        ts_src = x_scales + cute.assume(Int64(row0 + tidx) * Int64(k // FP4_GROUP), divby=self.tok_scale_bytes)
        ts_ok = tidx < bn

        acc = cute.make_rmem_tensor((self.atoms_m, self.atoms_n, 4), Float32)
        acc.fill(0.0)
        warp = tidx // 32
        lane = tidx % 32
        wrow = (warp % self.tile.warps_m) * self.wm
        wcol = (warp // self.tile.warps_m) * self.wn
        weights = (kb_stride, a_src, a_dst, a_ok, s_src, s_dst, s_ok, sa_ptr, sq_ptr, ss_ptr)
        tokens = (t_src, t_dst, t_ok, ts_src, ts_ok, sa_ptr, sb_ptr)
        self.k_loop(k_stages, weights, tokens, (acc, wrow, wcol, lane, sa_ptr, sb_ptr, sq_ptr, ss_ptr))

        # ---- accumulators -> sC[n, p] (float32, token-row major), then the template's stores
        sC = cute.make_tensor(sc_ptr, cute.make_layout(bn * self.c_stride))
        for mi in cutlass.range_constexpr(self.atoms_m):
            for ni in cutlass.range_constexpr(self.atoms_n):
                for reg in cutlass.range_constexpr(4):
                    p, n = c_fragment(lane, reg)
                    sC[(wcol + ni * MMA_N + n) * self.c_stride + wrow + mi * MMA_M + p] = acc[mi, ni, reg]
        cute.arch.sync_threads()
        self.store_tile(tidx, sc_ptr, expert, row0, nrows, mb, out_ptr, lora_ptr, p2e, alpha, beta, clamp, out_scale,
                        m, n_out)

    @cute.jit
    def load_tokens(self, ks: Int32, stage: Int32, t_src: list, t_dst: list, t_ok: list, ts_src: cute.Pointer,
                    ts_ok, sts_ptr: cute.Pointer, st_ptr: cute.Pointer):
        """cp.async the packed token rows and their scale words of stage ``ks`` (k-blocks
        ``ks * kps ..``) into ring slot ``stage``."""
        g2s16 = cute.make_copy_atom(
            cute.nvgpu.cpasync.CopyG2SOp(cache_mode=cute.nvgpu.cpasync.LoadCacheMode.GLOBAL), Uint8,
            num_bits_per_copy=128)
        g2s_sf = cute.make_copy_atom(cute.nvgpu.cpasync.CopyG2SOp(), Uint8, num_bits_per_copy=8 * self.tok_scale_bytes)
        kb0 = ks * self.kps
        q_kb = cute.assume(Int64(kb0 * INT4_ROW_BYTES), divby=16)
        stage_bytes = stage * (self.bn * self.row_bytes)
        for j in cutlass.range_constexpr(self.tok_loads):
            if t_ok[j]:
                cute.copy(g2s16, cute.make_tensor(t_src[j] + q_kb, cute.make_layout(16)),
                          cute.make_tensor(st_ptr + cute.assume(stage_bytes + t_dst[j], divby=16),
                                           cute.make_layout(16)))
        if ts_ok:
            piece = cute.make_layout(self.tok_scale_bytes)
            tidx, _, _ = cute.arch.thread_idx()
            dst = sts_ptr + cute.assume(stage * (self.bn * self.tok_scale_bytes) + tidx * self.tok_scale_bytes,
                                        divby=self.tok_scale_bytes)
            src = ts_src + cute.assume(Int64(kb0 * SCALE_WORD), divby=self.tok_scale_bytes)
            cute.copy(g2s_sf, cute.make_tensor(src, piece), cute.make_tensor(dst, piece))

    @cute.jit
    def mma_stage(self, stage: Int32, acc: cute.Tensor, wrow: Int32, wcol: Int32, lane: Int32, sts_ptr: cute.Pointer,
                  st_ptr: cute.Pointer, sq_ptr: cute.Pointer, ss_ptr: cute.Pointer):
        """The block-scaled MMAs of ring slot ``stage``, k-block by k-block."""
        for sub in cutlass.range_constexpr(self.kps):
            self.mma_k_block(acc, stage, sub, wrow, wcol, lane, sts_ptr, st_ptr, sq_ptr, ss_ptr)

    @cute.jit
    def mma_k_block(self, acc: cute.Tensor, stage: Int32, sub: cutlass.Constexpr, wrow: Int32, wcol: Int32,
                    lane: Int32, sts_ptr: cute.Pointer, st_ptr: cute.Pointer, sq_ptr: cute.Pointer,
                    ss_ptr: cute.Pointer):
        """The warp's atoms over k-block ``sub`` of ring slot ``stage`` (fragments: module docstring)."""
        rb = self.row_bytes
        a_words = cute.recast_ptr(self.packed_k_block(sq_ptr, stage, sub), dtype=Int32)
        b_words = cute.recast_ptr(st_ptr + stage * (self.bn * rb) + sub * INT4_ROW_BYTES, dtype=Int32)
        sfa_words = cute.recast_ptr(ss_ptr + stage * (self.bm * self.tok_scale_bytes) + sub * SCALE_WORD, dtype=Int32)
        sfb_words = cute.recast_ptr(sts_ptr + stage * (self.bn * self.tok_scale_bytes) + sub * SCALE_WORD,
                                    dtype=Int32)
        a_view = cute.make_tensor(a_words, cute.make_layout(self.bm * INT4_ROW_BYTES // 4))
        b_view = cute.make_tensor(b_words, cute.make_layout(self.bn * rb // 4))
        sfa = cute.make_tensor(sfa_words, cute.make_layout(self.bm * self.kps))
        sfb = cute.make_tensor(sfb_words, cute.make_layout(self.bn * self.kps))
        # the warp's A fragments and scale words of this k-block stay in registers; B goes atom by atom
        a_frag = cute.make_rmem_tensor((self.atoms_m, 5), Int32)
        for mi in cutlass.range_constexpr(self.atoms_m):
            r0 = wrow + mi * MMA_M
            for reg in cutlass.range_constexpr(4):
                r, byte = a_fragment(lane, reg)
                a_frag[mi, reg] = a_view[((r0 + r) * INT4_ROW_BYTES + byte) // 4]
            a_frag[mi, 4] = sfa[(r0 + sfa_row(lane)) * self.kps]
        for ni in cutlass.range_constexpr(self.atoms_n):
            n0 = wcol + ni * MMA_N
            b = []
            for reg in cutlass.range_constexpr(2):
                n, byte = b_fragment(lane, reg)
                b.append(b_view[((n0 + n) * rb + byte) // 4])
            sf_b = sfb[(n0 + sfb_row(lane)) * self.kps]
            for mi in cutlass.range_constexpr(self.atoms_m):
                d = mma_fp4([a_frag[mi, reg] for reg in range(4)], b, [acc[mi, ni, i] for i in range(4)],
                            a_frag[mi, 4], sf_b)
                for i in cutlass.range_constexpr(4):
                    acc[mi, ni, i] = d[i]

