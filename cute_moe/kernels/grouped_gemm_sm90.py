"""SM90 instantiation of the grouped GEMM: warp-specialized TMA + WGMMA mainloop, same epilogue.

Computes exactly what ``GroupedGemm`` computes (cute_moe.kernels.grouped_gemm: inputs, plan,
outputs, epilogue); only the mainloop differs, so it subclasses the template and replaces the
launch, the kernel body and the mainloop. A work item is one (plan tile, m-block): ``bm`` weight
rows (64 or 128 per MMA warpgroup: one or two m64 wgmma per k-step) by ``bn`` permuted token rows.

Warp roles (``cta_threads = 128 + 128 * warpgroups``):

* warpgroup 0, the producer (``setmaxnreg`` down to its REGISTER_SPLIT share): for every k-block of a work
  item it waits for a free ring slot, then one thread arms the slot's ``full`` barrier with the
  weight bytes and issues one TMA box (the ``bm x 64`` BlockMajorK block: ``bm`` rows of 128
  bytes, 128-byte swizzle), while all 128 threads gather the ``bn`` token rows with 16-byte
  ``cp.async`` into the same swizzled layout (TMA cannot gather rows on SM90: FC1 reads
  ``hidden_states`` through the plan's permutation) and signal the barrier with
  ``cp.async.mbarrier.arrive.noinc``; FC2's contiguous ``act`` rows come as a second TMA box
  instead;
* warpgroups 1.. the consumers (``setmaxnreg`` up to theirs): wait on ``full``, issue the k-block's
  4 ``wgmma.mma_async`` (m64 x bn x k16, bf16 -> f32, both operands from shared memory), keep one
  wgmma group in flight and release the previous slot on its ``empty`` barrier. An item whose
  token rows fill only part of the tile (an expert's last tile) runs a narrower wgmma instead,
  m64 x w x k16 over the first ``w`` rows (``w`` the smallest multiple of 64 that covers them),
  and the bulk epilogue over those columns only; the producer gathers no padding rows. After the last
  k-block comes the epilogue (``store_rows``): each thread holds, per token, prepared rows ``p``
  and ``p + 8``, i.e. two neighbouring output columns (or the up and gate halves of one
  intermediate), so it scales, activates and rounds them in registers into a bf16 tile of the
  m-block's output columns (in two passes of one m-repeat each where all of them do not fit),
  and every valid token row leaves as one ``cp.async.bulk`` copy that runs under the next
  item's mainloop. With LoRA, or where no such tile fits next to the ring, the float32 tile
  ``sC[n, p]`` and the template's stores (``store_passes``) instead.

MXINT4 weights (``weight_format="mxint4"``): the producer's TMA box is the k-block's packed rows
(``bm`` rows of 32 bytes: quarter ``kb % 4`` of the 128-byte blocks ``kb // 4``, a 5-D view) into
a packed ring, its threads cp.async the scale words (``load_scales``) next to the token rows. Up
to 128 token rows (``TileConfig.wgmma_int4_register_a``) each MMA thread dequantizes the values
its wgmma reads straight into A registers, half a k-block (one scale group) at a time, and the
wgmma takes A from registers (``mainloop``, ``dequantize_registers``): no bf16 copy
in shared memory, no barrier. Wider tiles do not have the registers for that next to their
accumulators: each MMA warpgroup dequantizes its own rows into one of two bf16 A slots in the
wgmma layout (``dequantize_warpgroup``), fences them for the async proxy and syncs its 128
threads before its wgmmas.

Schedule: persistent CTAs over ``num_tiles * m_blocks`` items (``num_tiles`` read on the device,
CUDA-graph safe), rastered like the warp-MMA persistent schedule (grouped_gemm.raster), handed out
by a work queue (the plan's ``counters[2]``) rather than a fixed stride: the items in flight stay
one window of consecutive items, so the raster's L2 reuse survives SMs that run at different
speeds (with a fixed stride they drift apart item after item).
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
import cutlass.pipeline
import cutlass.memory
import cutlass.utils
import cutlass.utils.hopper_helpers as sm90_utils
import cuda.bindings.driver as cuda
from cutlass import BFloat16, Float32, Int32, Int64, Uint8
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T

from . import gemm_epilogue as epi
from . import int4_convert
from .gemm_config import (BK, INT4_BLOCK_K, INT4_ROW_BYTES, INT4_SCALES_PER_KB, PRODUCER_THREADS, SMEM_LIMIT,
                          WGMMA_INT4_A_SLOTS, WGMMA_M, WGMMA_TAIL_N, WGMMA_WEIGHT_KINDS, TileConfig, c_row_stride,
                          out_tile_stride)
from .grouped_gemm import CHUNK, CHUNKS_PER_ROW, INT4_BLOCK_BYTES, SMEM_ALIGN, GroupedGemm, raster

# (producer, MMA) registers per thread after setmaxnreg, by MMA warpgroups: two (384 threads, one
# CTA per SM, 168 each at launch) or one (256 threads, two CTAs per SM: 128 at launch, so that one
# CTA's epilogue overlaps the other's mainloop). The producer computes addresses only, the MMA
# threads take what it gives back. A 192-row token tile gathers 12 rows per producer thread;
# its tiles were measured and checked on the GPU with 48 producer registers (32 spill; 40 also
# compiles without spills, not measured). setmaxnreg only moves the CTA's launch registers
# between its warps: a split that asks for more never returns from setmaxnreg.inc
# (register_split_fits).
REGISTER_SPLIT = {2: (40, 232), 1: (40, 216)}
WIDE_GATHER_SPLIT = (48, 224)  # two MMA warpgroups, more than 8 gathered rows per producer thread
CTAS_PER_SM = {2: 1, 1: 2}
EPILOGUE_BARRIER = 1  # named barrier of the MMA threads (0 is sync_threads)
DEQUANT_BARRIER = 2  # MXINT4: + warpgroup, the named barrier of one MMA warpgroup
PRODUCER_BARRIER = DEQUANT_BARRIER + 2  # the producer warpgroup's, once per work item
WORK_COUNTER, DONE_COUNTER = 2, 3  # plan counters fields (zero between launches): the item queue
WARPGROUP = 128


def pack_bf16x2(lo: Float32, hi: Float32) -> Int32:
    """bf16(lo) in the low half, bf16(hi) in the high half (round to nearest even)."""
    return Int32(llvm.inline_asm(T.i32(), [Float32(hi).ir_value(), Float32(lo).ir_value()],
                                 "cvt.rn.bf16x2.f32 $0, $1, $2;", "=r,f,f", has_side_effects=False,
                                 is_align_stack=False))


def bulk_copy_to_global(dst: Int64, src: Int32, size: Int32):
    """``size`` bytes from shared address ``src`` to global address ``dst`` on the async proxy
    (one ``cp.async.bulk`` of the calling thread's bulk group)."""
    llvm.inline_asm(None, [Int64(dst).ir_value(), Int32(src).ir_value(), Int32(size).ir_value()],
                    "cp.async.bulk.global.shared::cta.bulk_group [$0], [$1], $2;", "l,r,r",
                    has_side_effects=True, is_align_stack=False)


@cute.jit
def store_int(tensor: cute.Tensor, index: Int32, value: Int32):
    """``tensor[index] = value`` from inside staged control flow (a helper, so that the tensor
    is not threaded through the enclosing region as a rebound value)."""
    tensor[index] = value


def register_split_fits(warpgroups: int, producer: int, mma: int) -> bool:
    """Whether ``producer`` registers per producer thread and ``mma`` per MMA thread fit the
    registers a CTA of ``warpgroups`` MMA warpgroups holds at launch (65536 per SM over its
    CTAs' threads, in steps of 8 per thread)."""
    threads = WARPGROUP * (1 + warpgroups)
    at_launch = 65536 // (CTAS_PER_SM[warpgroups] * threads) // 8 * 8
    return WARPGROUP * (producer + warpgroups * mma) <= at_launch * threads


def warpgroup_row(warpgroup, local, warpgroups):
    """Row ``local`` (``< bm / warpgroups``) of MMA warpgroup ``warpgroup``'s part of an m-block:
    m-repeat ``j`` of the tiled wgmma covers rows ``[j * rep, (j+1) * rep)``, ``rep = 64 *
    warpgroups``, 64 per warpgroup (checked against the DSL's partition by
    tests/test_grouped_gemm.py)."""
    return (local // WGMMA_M) * (warpgroups * WGMMA_M) + warpgroup * WGMMA_M + local % WGMMA_M


def register_a_row(warpgroup, tl, rep, h, warpgroups):
    """The weight row (of the m-block) whose A values MMA thread ``tl`` of warpgroup ``warpgroup``
    holds in m-repeat ``rep``, row half ``h``: per warp the m16n8k16 A layout, lane ``4g + t`` of
    warp ``w`` rows ``16w + g`` and ``16w + g + 8``."""
    return warpgroup_row(warpgroup, rep * WGMMA_M, warpgroups) + (tl // 32) * 16 + (tl % 32) // 4 + 8 * h


def register_a_word(h, k8, rep, step, reps):
    """The 32-bit register (bf16 pair ``k, k + 1``, ``k = 16 step + 2t + 8 k8``) of row half ``h``
    in the A fragment ``((2, 2, 2), reps, k-steps)`` of a register-fed wgmma (compact, column-major)."""
    return h + 2 * k8 + 4 * (rep + reps * step)


class WgmmaGroupedGemm(GroupedGemm):
    """``GroupedGemm`` with a TMA + WGMMA warp-specialized mainloop (SM90 only, bf16 or MXINT4
    weights). Same constructor and launch arguments; ``tile.mma`` must be "wgmma"."""

    def __init__(self, op: str, tile: TileConfig, schedule: str, *args, weight_format: str = "bf16", **kwargs):
        if tile.mma != "wgmma":
            raise ValueError(f"WgmmaGroupedGemm takes a wgmma tile, got {tile}")
        if weight_format not in WGMMA_WEIGHT_KINDS:
            raise ValueError(f"WgmmaGroupedGemm: {weight_format} weights run on the warp-MMA family")
        if schedule != "persistent":
            raise ValueError(f"WgmmaGroupedGemm: the schedule is persistent, got {schedule!r}")
        super().__init__(op, tile, schedule, *args, weight_format=weight_format, **kwargs)
        self.cta_threads = tile.cta_threads
        self.warpgroups = tile.threads // 128
        self.b_loads = self.bn * CHUNKS_PER_ROW // PRODUCER_THREADS  # 16-byte chunks per producer thread
        if self.bn * CHUNKS_PER_ROW % PRODUCER_THREADS:
            raise ValueError(f"wgmma tile: bn = {self.bn} token rows do not split over the producer warpgroup")
        wide = self.warpgroups == 2 and self.b_loads > 8
        self.register_a = self.packed and tile.wgmma_int4_register_a
        # wgmma groups per k-block. A from registers: parts that alternate between dequantization
        # and the wgmma in flight, one 32-value scale group each
        self.a_parts = INT4_SCALES_PER_KB if self.register_a else 1
        self.producer_regs, self.mma_regs = WIDE_GATHER_SPLIT if wide else REGISTER_SPLIT[self.warpgroups]
        self.min_ctas = CTAS_PER_SM[self.warpgroups]
        if not register_split_fits(self.warpgroups, self.producer_regs, self.mma_regs):
            raise ValueError(f"registers: {self.producer_regs} per producer and {self.mma_regs} per MMA thread "
                             f"exceed the launch registers of {self.min_ctas} CTA(s) per SM")
        # the epilogue tile holds epi_bm rows: m-block rows [h * epi_bm, (h+1) * epi_bm) in pass h.
        # Accumulator m-repeat j holds rows [j * rep_rows, (j+1) * rep_rows), 64 per warpgroup: a
        # pass takes whole repeats, or (64-row passes of two warpgroups) one warpgroup's part
        self.set_epilogue_rows(tile.epilogue_rows)
        self.passes = self.bm // self.epi_bm
        rep_rows = self.warpgroups * WGMMA_M
        self.reps_per_pass = max(1, self.epi_bm // rep_rows)
        self.split_reps = self.epi_bm < rep_rows
        self.a_bytes = self.bm * BK * 2
        # An expert's last tile holds its leftover rows, bn / 2 of them on average: those tiles run a
        # narrower wgmma over just the first tail_widths[i] token rows (wgmma's N is fixed per
        # instruction), the smallest one that covers the tile's rows
        self.tail_widths = tuple(range(WGMMA_TAIL_N, self.bn, WGMMA_TAIL_N))
        if len(self.tail_widths) > 2:
            raise ValueError(f"wgmma tile: bn = {self.bn} needs more than the three mainloop widths consume() chains")
        # FC2's token rows are contiguous: one TMA box per k-block (bn rows of 128 bytes, the same
        # swizzle), issued with the weights'. FC1 gathers its rows and MXINT4 cp.asyncs its scales:
        # there the producer threads load too and each arrives on the slot's barrier
        self.tma_tokens = not self.gather
        self.thread_loads = self.gather or self.packed
        self.full_arrivals = 1 + PRODUCER_THREADS if self.thread_loads else 1
        smem = tile.wgmma_int4_smem_bytes if self.packed else tile.smem_bytes
        if smem > SMEM_LIMIT:
            raise ValueError(f"tile {tile} needs {smem} bytes of shared memory (> {SMEM_LIMIT})")
        # Epilogue: the accumulators go, activated and rounded, into a bf16 tile of the m-block's
        # output columns, and each valid token row leaves as one bulk copy that runs under the
        # next item's mainloop; where that tile does not fit next to the ring (or with LoRA,
        # whose deltas are added per output vector) the float32 tile and the template's stores.
        # The bf16 tile holds the m-block's columns, or (256x192 FC2, 256x128 FC2 of 4 stages)
        # those of one accumulator m-repeat per pass, each pass's copies read before the next.
        self.out_cols = self.bm // 2 if self.gated else self.bm
        ring = smem - tile.epilogue_bytes
        fitting = [p for p in sorted({1, self.bm // rep_rows})
                   if ring + self.bn * out_tile_stride(self.out_cols // p) <= SMEM_LIMIT]
        self.bulk_store = not self.has_lora and bool(fitting)
        self.bulk_passes = fitting[0] if fitting else 1
        self.pass_cols = self.out_cols // self.bulk_passes
        self.out_stride = out_tile_stride(self.pass_cols)
        if self.packed:
            # MXINT4: one k-block per ring slot, its scales cp.async-ed by the producer warpgroup;
            # each MMA warpgroup dequantizes its own rows, wg_units units of 32 values per thread
            if self.kps != 1:
                raise ValueError(f"wgmma tile {tile}: MXINT4 takes bn > 16 (one k-block per ring slot)")
            self.set_loader_threads(PRODUCER_THREADS)
            self.wg_units = self.bm // self.warpgroups * INT4_SCALES_PER_KB // WARPGROUP

    # ------------------------------------------------------------------ host side (jit)

    @cute.jit
    def __call__(self, w_ptr: cute.Pointer, scale_ptr: cute.Pointer, x_ptr: cute.Pointer, p2e_ptr: cute.Pointer,
                 tile_info_ptr: cute.Pointer,
                 counters_ptr: cute.Pointer, out_ptr: cute.Pointer, lora_ptr: cute.Pointer, alpha_ptr: cute.Pointer,
                 beta_ptr: cute.Pointer, clamp_ptr: cute.Pointer, out_scale_ptr: cute.Pointer, m: Int32, k: Int32,
                 n_out: Int32, top_k: Int32, num_experts: Int32, max_tiles: Int32, num_ctas: Int32, use_pdl: Int32,
                 stream: cuda.CUstream):
        """Arguments as GroupedGemm.__call__ (``scale_ptr``: MXINT4 only)."""
        major = cutlass.utils.LayoutEnum.ROW_MAJOR  # both operands K-major
        tiler = (self.bm, self.bn, BK)
        # MXINT4: two bf16 slots that the MMA warpgroups dequantize into (the same 128-byte swizzle)
        a_slots = WGMMA_INT4_A_SLOTS if cutlass.const_expr(self.packed) else self.stages
        a_layout = sm90_utils.make_smem_layout_a(major, tiler, BFloat16, a_slots)
        a_elems = 8 if cutlass.const_expr(self.register_a) else cute.cosize(a_layout)  # no A in shared memory
        b_layout = sm90_utils.make_smem_layout_b(major, tiler, BFloat16, self.stages)
        tiled_mma = self.tiled_wgmma(self.bn)
        # The prepared weights [L, K/64, M, 64] as (M, (64, K/64), L): one k-block of an m-block is
        # the TMA box (bm, 64), bm rows of 128 contiguous bytes. MXINT4 [L, K/256, M, 128 bytes] as
        # (M, (32, (4, K/256)), L): k-block kb is quarter kb % 4 of 128-byte block kb // 4, the box
        # (bm, 32) lands as bm rows of 32 bytes (the packed ring's k-block layout)
        k_blocks = k // BK
        if cutlass.const_expr(self.packed):
            blocks = k // INT4_BLOCK_K
            weights = cute.make_tensor(w_ptr, cute.make_layout(
                (m, (INT4_ROW_BYTES, (4, blocks)), num_experts),
                stride=(INT4_BLOCK_BYTES, (1, (INT4_ROW_BYTES, m * INT4_BLOCK_BYTES)), blocks * m * INT4_BLOCK_BYTES)))
            box_layout, box = self.packed_ring_layout(), (self.bm, INT4_ROW_BYTES)
        else:
            weights = cute.make_tensor(w_ptr, cute.make_layout((m, (BK, k_blocks), num_experts),
                                                               stride=(BK, (1, m * BK), m * k)))
            box_layout, box = a_layout, (self.bm, BK)
        tma_atom, tma_weights = cute.nvgpu.cpasync.make_tiled_tma_atom(
            cute.nvgpu.cpasync.CopyBulkTensorTileG2SOp(), weights, cute.slice_(box_layout, (None, None, 0)), box)
        tma_atom_x, tma_x = tma_atom, tma_weights  # stand-ins where the producer threads load the rows
        if cutlass.const_expr(self.tma_tokens):
            # the FC2 input [rows, K] as (rows, (64, K/64)): k-block kb of tile t is the box (t, kb)
            tokens = cute.make_tensor(x_ptr, cute.make_layout((max_tiles * self.bn, (BK, k_blocks)),
                                                              stride=(k, (1, BK))))
            tma_atom_x, tma_x = cute.nvgpu.cpasync.make_tiled_tma_atom(
                cute.nvgpu.cpasync.CopyBulkTensorTileG2SOp(), tokens, cute.slice_(b_layout, (None, None, 0)),
                (self.bn, BK))

        tile_info, counters, p2e, alpha, beta, clamp, out_scale = self.plan_views(
            tile_info_ptr, counters_ptr, p2e_ptr, alpha_ptr, beta_ptr, clamp_ptr, out_scale_ptr, max_tiles,
            num_experts)

        stages, c_floats = self.stages, self.bn * c_row_stride(self.epi_bm)
        if cutlass.const_expr(self.bulk_store):
            c_floats = self.bn * self.out_stride // 4  # the bf16 output tile takes the float32 tile's place
        q_bytes = stages * self.bm * INT4_ROW_BYTES if cutlass.const_expr(self.packed) else 16
        s_values = stages * self.bm * INT4_SCALES_PER_KB if cutlass.const_expr(self.packed) else 8

        @cute.struct
        class Storage:
            sA: cute.struct.Align[cute.struct.MemRange[BFloat16, a_elems], SMEM_ALIGN]
            sB: cute.struct.Align[cute.struct.MemRange[BFloat16, cute.cosize(b_layout)], SMEM_ALIGN]
            sC: cute.struct.Align[cute.struct.MemRange[Float32, c_floats], 16]
            sQ: cute.struct.Align[cute.struct.MemRange[Uint8, q_bytes], SMEM_ALIGN]  # MXINT4: packed ring
            sS: cute.struct.Align[cute.struct.MemRange[BFloat16, s_values], 16]  # MXINT4: scale ring
            full: cute.struct.MemRange[cutlass.Int64, stages]
            empty: cute.struct.MemRange[cutlass.Int64, stages]
            item_of_slot: cute.struct.MemRange[Int32, stages]  # the work item whose first k-block fills a slot
            next_item: cute.struct.MemRange[Int32, 2]  # the producer's queue answer, by item parity

        self.storage = Storage
        self.kernel(tiled_mma, tma_atom, tma_weights, tma_atom_x, tma_x, a_layout, b_layout, scale_ptr, x_ptr,
                    out_ptr, lora_ptr, p2e, tile_info, counters, alpha, beta, clamp, out_scale, m, k, n_out,
                    top_k).launch(
            grid=[num_ctas, 1, 1], block=[self.cta_threads, 1, 1], stream=stream, use_pdl=use_pdl,
            min_blocks_per_mp=self.min_ctas, preferred_smem_carveout=100)  # all of the SM's memory as shared

    # ------------------------------------------------------------------ device side

    @cute.kernel
    def kernel(self, tiled_mma: cute.TiledMma, tma_atom: cute.CopyAtom, tma_weights: cute.Tensor,
               tma_atom_x: cute.CopyAtom, tma_x: cute.Tensor,
               a_layout: cute.ComposedLayout, b_layout: cute.ComposedLayout, scale_ptr: cute.Pointer,
               x_ptr: cute.Pointer,
               out_ptr: cute.Pointer, lora_ptr: cute.Pointer, p2e: cute.Tensor, tile_info: cute.Tensor,
               counters: cute.Tensor, alpha: cute.Tensor, beta: cute.Tensor, clamp: cute.Tensor,
               out_scale: cute.Tensor, m: Int32, k: Int32, n_out: Int32, top_k: Int32):
        tidx, _, _ = cute.arch.thread_idx()
        bx, _, _ = cute.arch.block_idx()
        num_ctas, _, _ = cute.arch.grid_dim()
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        if warp == 0:
            cute.nvgpu.cpasync.prefetch_descriptor(tma_atom)
            if cutlass.const_expr(self.tma_tokens):
                cute.nvgpu.cpasync.prefetch_descriptor(tma_atom_x)

        storage = cutlass.memory.SmemAllocator().allocate(self.storage)
        full = storage.full.data_ptr()
        empty = storage.empty.data_ptr()
        if warp == 0:
            with cute.arch.elect_one():
                for s in cutlass.range_constexpr(self.stages):
                    # full: the TMA thread's arrive (+ its bytes) and, unless the token rows come by
                    # TMA too, one cp.async arrive per producer thread
                    cute.arch.mbarrier_init(full + s, self.full_arrivals)
                    cute.arch.mbarrier_init(empty + s, self.threads)
        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()
        # Programmatic dependent launch: nothing is read before the previous kernel completed
        cute.arch.griddepcontrol_wait()
        cute.arch.griddepcontrol_launch_dependents()

        num_tiles = counters[0]
        m_blocks = (m + self.bm - 1) // self.bm
        items = num_tiles * m_blocks
        k_blocks = k // BK
        sA = storage.sA.get_tensor(a_layout.outer, swizzle=a_layout.inner)
        sB = storage.sB.get_tensor(b_layout.outer, swizzle=b_layout.inner)

        item_of_slot = storage.item_of_slot.get_tensor(cute.make_layout(self.stages))
        if warp < PRODUCER_THREADS // 32:
            cute.arch.setmaxregister_decrease(self.producer_regs)
            self.produce(tidx, warp, bx, num_ctas, items, m_blocks, k_blocks, tma_atom, tma_weights, tma_atom_x,
                         tma_x, sA, sB, storage.sB.data_ptr(), full, empty, item_of_slot,
                         storage.next_item.get_tensor(cute.make_layout(2)), counters, x_ptr, p2e, tile_info, m, k,
                         top_k, scale_ptr, storage.sQ.data_ptr(), storage.sS.data_ptr())
        else:
            cute.arch.setmaxregister_increase(self.mma_regs)
            self.consume(tidx - PRODUCER_THREADS, m_blocks, k_blocks, tiled_mma, sA,
                         sB, storage.sC.data_ptr(), full, empty, item_of_slot, out_ptr, lora_ptr, p2e, tile_info,
                         alpha, beta, clamp, out_scale, m, n_out, storage.sA.data_ptr(), storage.sQ.data_ptr(),
                         storage.sS.data_ptr())

    @cute.jit
    def produce(self, tidx: Int32, warp: Int32, bx: Int32, num_ctas: Int32, items: Int32, m_blocks: Int32,
                k_blocks: Int32, tma_atom: cute.CopyAtom, tma_weights: cute.Tensor, tma_atom_x: cute.CopyAtom,
                tma_x: cute.Tensor, sA: cute.Tensor, sB: cute.Tensor, sb_ptr: cute.Pointer, full: cute.Pointer,
                empty: cute.Pointer, item_of_slot: cute.Tensor, next_item: cute.Tensor, counters: cute.Tensor,
                x_ptr: cute.Pointer,
                p2e: cute.Tensor, tile_info: cute.Tensor, m: Int32, k: Int32, top_k: Int32, scale_ptr: cute.Pointer,
                sq_ptr: cute.Pointer, ss_ptr: cute.Pointer):
        """Fill ring slot after ring slot: k-block ``kb`` of item ``w`` -> slot ``(count) % stages``:
        one TMA box of weights (bf16: into ``sA``; MXINT4: the packed rows into the packed ring, the
        scales by cp.async with the template's loader) and the token rows: gathered by cp.async
        (FC1), or a second TMA box of contiguous rows (FC2).

        Work items come from a queue: CTA ``bx`` starts with item ``bx``, then takes ``num_ctas +``
        the next ticket of the plan's work counter, so the items in flight stay a window of
        consecutive items (the raster's L2 reuse) however far one SM runs ahead of another. The
        item goes to the consumers in ``item_of_slot`` of its first k-block's slot (published by
        that slot's ``full`` barrier); -1 there ends their loop. The last CTA to finish zeroes the
        counters for the next launch."""
        box_cols, box_bytes, s_box = BK, self.a_bytes, sA
        if cutlass.const_expr(self.packed):
            box_cols, box_bytes = INT4_ROW_BYTES, self.bm * INT4_ROW_BYTES
            s_box = cute.make_tensor(sq_ptr, self.packed_ring_layout())
        g_w = cute.local_tile(tma_weights, (self.bm, box_cols), (None, None, None))  # (bm, cols, m-block, k-block, L)
        tAsA, tAgA = cute.nvgpu.cpasync.tma_partition(tma_atom, 0, cute.make_layout(1),
                                                      cute.group_modes(s_box, 0, 2), cute.group_modes(g_w, 0, 2))
        tBsB, tBgB = tAsA, tAgA
        if cutlass.const_expr(self.tma_tokens):
            box_bytes = box_bytes + self.bn * BK * 2
            g_x = cute.local_tile(tma_x, (self.bn, BK), (None, None))  # (bn, 64, tile, k-block)
            tBsB, tBgB = cute.nvgpu.cpasync.tma_partition(tma_atom_x, 0, cute.make_layout(1),
                                                          cute.group_modes(sB, 0, 2), cute.group_modes(g_x, 0, 2))
        g2s = cute.make_copy_atom(cute.nvgpu.cpasync.CopyG2SOp(cache_mode=cute.nvgpu.cpasync.LoadCacheMode.GLOBAL),
                                  BFloat16, num_bits_per_copy=128)
        vec = cute.make_layout(CHUNK)
        stage = Int32(0)
        phase = Int32(1)  # the first pass over the ring finds every slot free
        producer_sync = cutlass.pipeline.NamedBarrier(barrier_id=PRODUCER_BARRIER, num_threads=PRODUCER_THREADS)
        w = bx
        parity = Int32(0)
        while w < items:
            tile, mb = raster(w, tile_info, m_blocks)
            expert = tile_info[tile, 0]
            row0 = tile_info[tile, 1]
            # gathered token rows of this thread, padding rows left out (the consumers' narrower
            # wgmma leaves most of their columns out too)
            nrows = tile_info[tile, 2]
            b_src, b_dst, b_ok = [], [], []
            if cutlass.const_expr(not self.tma_tokens):
                b_src, b_dst, b_ok = self.token_row_loads(tidx, PRODUCER_THREADS, row0, nrows, p2e, x_ptr, k,
                                                          top_k)
            if cutlass.const_expr(self.packed):
                s_src, s_dst, s_ok = self.packed_scale_sources(tidx, expert, mb, scale_ptr, m, k)
            for kb in cutlass.range(k_blocks, unroll=1):
                cute.arch.mbarrier_wait(empty + stage, phase)
                if warp == 0:
                    with cute.arch.elect_one():
                        if kb == 0:
                            store_int(item_of_slot, stage, w)
                        cute.arch.mbarrier_arrive_and_expect_tx(full + stage, box_bytes)
                    cute.copy(tma_atom, tAgA[(None, mb, kb, expert)], tAsA[(None, stage)], tma_bar_ptr=full + stage)
                    if cutlass.const_expr(self.tma_tokens):
                        cute.copy(tma_atom_x, tBgB[(None, row0 // self.bn, kb)], tBsB[(None, stage)],
                                  tma_bar_ptr=full + stage)
                if cutlass.const_expr(self.packed):
                    self.load_scales(kb, stage, s_src, s_dst, s_ok, ss_ptr)
                if cutlass.const_expr(not self.tma_tokens):
                    self.load_tokens(kb, stage, g2s, vec, b_src, b_dst, b_ok, sb_ptr)
                if cutlass.const_expr(self.thread_loads):
                    cute.arch.cp_async_mbarrier_arrive_noinc(full + stage)
                stage = stage + 1
                if stage == self.stages:
                    stage = Int32(0)
                    phase = phase ^ 1
            if tidx == 0:
                ticket = cute.arch.atomic_add((counters.iterator + WORK_COUNTER).llvm_ptr, Int32(1))
                store_int(next_item, parity, ticket + num_ctas)
            producer_sync.arrive_and_wait()
            w = next_item[parity]
            parity = parity ^ 1
        # the end: the next slot carries no k-block, only the item -1
        cute.arch.mbarrier_wait(empty + stage, phase)
        if warp == 0:
            with cute.arch.elect_one():
                store_int(item_of_slot, stage, Int32(-1))
                cute.arch.mbarrier_arrive(full + stage)
        if cutlass.const_expr(self.thread_loads):
            cute.arch.mbarrier_arrive(full + stage)
        if tidx == 0:
            done = cute.arch.atomic_add((counters.iterator + DONE_COUNTER).llvm_ptr, Int32(1), sem="acq_rel",
                                        scope="gpu")
            if done == num_ctas - 1:
                store_int(counters, WORK_COUNTER, Int32(0))
                store_int(counters, DONE_COUNTER, Int32(0))

    @cute.jit
    def consume(self, tidx: Int32, m_blocks: Int32,
                k_blocks: Int32, tiled_mma: cute.TiledMma, sA: cute.Tensor, sB: cute.Tensor, sc_ptr: cute.Pointer,
                full: cute.Pointer, empty: cute.Pointer, item_of_slot: cute.Tensor, out_ptr: cute.Pointer,
                lora_ptr: cute.Pointer,
                p2e: cute.Tensor, tile_info: cute.Tensor, alpha: cute.Tensor, beta: cute.Tensor,
                clamp: cute.Tensor, out_scale: cute.Tensor, m: Int32, n_out: Int32, sa_ptr: cute.Pointer,
                sq_ptr: cute.Pointer, ss_ptr: cute.Pointer):
        """WGMMA over the ring, then the template's epilogue; ``tidx`` counts the MMA threads.
        MXINT4 through shared memory: each warpgroup first dequantizes its rows of the slot's
        k-block into bf16 slot ``a_slot`` (two alternate: the wgmma group that read a slot two
        k-blocks ago has retired at this warpgroup's previous ``wait_group(1)``), fences them
        for the async proxy and syncs its own 128 threads; with A from registers each thread
        dequantizes into its A fragments instead (``mainloop``)."""
        thr_mma = tiled_mma.get_slice(tidx)
        if cutlass.const_expr(self.register_a):
            # one k-block of A fragments ((2, 2, 2), m-repeats, k-steps): its parts alternate
            # between the wgmma group in flight and the dequantization (mainloop)
            tCrA = cute.make_rmem_tensor(thr_mma.partition_shape_A((self.bm, BK)), BFloat16)
        else:
            tCrA = tiled_mma.make_fragment_A(thr_mma.partition_A(sA))
        tCrB = tiled_mma.make_fragment_B(thr_mma.partition_B(sB))
        acc = cute.make_rmem_tensor(thr_mma.partition_shape_C((self.bm, self.bn)), Float32)
        # (bm, bn) view of the epi_bm-row tile: the passes alias one buffer
        sC = cute.make_tensor(sc_ptr, cute.make_layout(((self.epi_bm, self.passes), self.bn),
                                                       stride=((1, 0), self.c_stride)))
        tCsC = thr_mma.partition_C(sC)
        tCcC = thr_mma.partition_C(cute.make_identity_tensor((self.bm, self.bn)))  # (row, token) of each value
        k_steps = cute.size(tCrA, mode=[2])
        tiled_mma.set(cute.nvgpu.warpgroup.Field.ACCUMULATE, True)
        # (wgmma, accumulators, B fragments) by width: the tails' views are prefixes of the full
        # tile's, the first w token rows of every slot and the accumulators of their columns
        by_width = [self.narrow_mma(tidx, w, acc, sB) for w in self.tail_widths] + [(tiled_mma, acc, tCcC, tCrB)]
        warpgroup = cute.arch.make_warp_uniform(tidx // 128)
        epilogue_sync = cutlass.pipeline.NamedBarrier(barrier_id=EPILOGUE_BARRIER, num_threads=self.threads)
        fixed = (tidx, warpgroup, k_blocks, k_steps, tCrA, acc, tCsC, full, empty, sc_ptr, sq_ptr, ss_ptr, sa_ptr,
                 out_ptr, lora_ptr, p2e, alpha, beta, clamp, out_scale, m, n_out, epilogue_sync)
        stage = Int32(0)
        phase = Int32(0)
        a_slot = Int32(0)
        cute.arch.mbarrier_wait(full + stage, phase)
        w = item_of_slot[stage]
        while w >= 0:
            tile, mb = raster(w, tile_info, m_blocks)
            # the epilogue's tile fields, read now: their latency hides under the mainloop
            expert = tile_info[tile, 0]
            row0 = tile_info[tile, 1]
            nrows = tile_info[tile, 2]
            if cutlass.const_expr(not self.register_a):
                acc.fill(0.0)
            # the narrowest wgmma that covers the tile's rows: widths[width] (the last one is bn)
            width = Int32(0)
            for t in cutlass.range_constexpr(len(self.tail_widths)):
                if nrows > self.tail_widths[t]:
                    width = Int32(t + 1)
            # one work item per width behind an if / elif / else chain (sequential ifs would join the
            # accumulators through moves that make ptxas serialize every wgmma)
            item = (expert, row0, nrows, mb, stage, phase, a_slot)
            if cutlass.const_expr(len(by_width) == 1):
                stage, phase, a_slot = self.work_item(*fixed, *by_width[0], *item)
            elif cutlass.const_expr(len(by_width) == 2):
                if width == 1:
                    stage, phase, a_slot = self.work_item(*fixed, *by_width[1], *item)
                else:
                    stage, phase, a_slot = self.work_item(*fixed, *by_width[0], *item)
            elif width == 2:
                stage, phase, a_slot = self.work_item(*fixed, *by_width[2], *item)
            elif width == 1:
                stage, phase, a_slot = self.work_item(*fixed, *by_width[1], *item)
            else:
                stage, phase, a_slot = self.work_item(*fixed, *by_width[0], *item)
            cute.arch.mbarrier_wait(full + stage, phase)
            w = item_of_slot[stage]
        if cutlass.const_expr(self.bulk_store):
            cute.arch.cp_async_bulk_wait_group(0)  # the last rows have landed before the CTA leaves

    def tiled_wgmma(self, width: int) -> cute.TiledMma:
        """The MMA warpgroups' tiled wgmma over ``width`` token rows: m64 x width x k16 per
        warpgroup, bf16 operands K-major in shared memory (A in registers where the MXINT4 weights
        are dequantized there), float32 accumulators."""
        a_source = cute.nvgpu.warpgroup.OperandSource.RMEM if self.register_a else \
            cute.nvgpu.warpgroup.OperandSource.SMEM
        return sm90_utils.make_trivial_tiled_mma(
            BFloat16, BFloat16, cute.nvgpu.OperandMajorMode.K, cute.nvgpu.OperandMajorMode.K,
            Float32, (self.warpgroups, 1, 1), tiler_mn=(64, width), a_source=a_source)

    def narrow_mma(self, tidx: Int32, width: int, acc: cute.Tensor, sB: cute.Tensor):
        """The wgmma of a ``width``-row tail: its tiled MMA (m64 x width x k16), the accumulators of
        the first ``width`` token columns (a prefix of the (2, 2, bn / 8) values of each m-repeat:
        value group ``g`` holds columns 8g..8g+7) with their (row, token) coordinates, and its B
        fragments over the first ``width`` rows of every ring slot (whole 8-row swizzle atoms of
        the bn-row slot)."""
        mma = self.tiled_wgmma(width)
        mma.set(cute.nvgpu.warpgroup.Field.ACCUMULATE, True)
        reps = cute.size(acc, mode=[1])
        # (c, h, g) of m-repeat r is value c + 2h + 4g + (bn / 2) r of the full fragment
        prefix = cute.make_layout(((2, 2, width // 8), reps, 1), stride=((1, 2, 4), self.bn // 2, 0))
        acc_w = cute.make_tensor(acc.iterator, cute.composition(acc.layout, prefix))
        sB_w = cute.make_tensor(sB.iterator, cute.make_layout(((8, width // 8), (BK, 1), (1, self.stages)),
                                                              stride=((BK, 8 * BK), (1, 0), (0, self.bn * BK))))
        thr = mma.get_slice(tidx)
        tCcC_w = thr.partition_C(cute.make_identity_tensor((self.bm, width)))
        return mma, acc_w, tCcC_w, mma.make_fragment_B(thr.partition_B(sB_w))

    @cute.jit
    def work_item(self, tidx: Int32, warpgroup: Int32, k_blocks: Int32, k_steps: cutlass.Constexpr,
                  tCrA: cute.Tensor, acc: cute.Tensor, tCsC: cute.Tensor, full: cute.Pointer, empty: cute.Pointer,
                  sc_ptr: cute.Pointer, sq_ptr: cute.Pointer, ss_ptr: cute.Pointer, sa_ptr: cute.Pointer,
                  out_ptr: cute.Pointer, lora_ptr: cute.Pointer, p2e: cute.Tensor, alpha: cute.Tensor,
                  beta: cute.Tensor, clamp: cute.Tensor, out_scale: cute.Tensor, m: Int32, n_out: Int32,
                  epilogue_sync: cutlass.pipeline.NamedBarrier, tiled_mma: cute.TiledMma, acc_w: cute.Tensor,
                  tCcC_w: cute.Tensor, tCrB: cute.Tensor, expert: Int32, row0: Int32, nrows: Int32, mb: Int32,
                  stage: Int32, phase: Int32, a_slot: Int32):
        """One work item with the wgmma of one width: the mainloop into ``acc_w`` (a prefix of
        ``acc``), then the epilogue: the bulk one over the accumulators of that width, the float32
        one over all of them (its stores take the valid rows only). Returns the mainloop's ring
        position and A slot."""
        stage, phase, a_slot = self.mainloop(tidx, warpgroup, k_blocks, k_steps, tiled_mma, acc_w, tCrA, tCrB,
                                             full, empty, sq_ptr, ss_ptr, sa_ptr, stage, phase, a_slot)
        if cutlass.const_expr(self.bulk_store):
            self.store_rows(tidx, acc_w, tCcC_w, sc_ptr, expert, row0, nrows, mb, out_ptr, alpha, beta, clamp,
                            out_scale, m, n_out, epilogue_sync)
        else:
            self.store_passes(tidx, acc, tCsC, warpgroup, sc_ptr, expert, row0, nrows, mb, out_ptr, lora_ptr,
                              p2e, alpha, beta, clamp, out_scale, m, n_out, epilogue_sync)
        return stage, phase, a_slot

    @cute.jit
    def mainloop(self, tidx: Int32, warpgroup: Int32, k_blocks: Int32, k_steps: cutlass.Constexpr,
                 tiled_mma: cute.TiledMma, acc: cute.Tensor, tCrA: cute.Tensor, tCrB: cute.Tensor,
                 full: cute.Pointer, empty: cute.Pointer, sq_ptr: cute.Pointer, ss_ptr: cute.Pointer,
                 sa_ptr: cute.Pointer, stage: Int32, phase: Int32, a_slot: Int32):
        """One work item's k-blocks: wait for the slot, issue its wgmmas in ``a_parts`` groups,
        keep one group in flight and free the slot of the k-block before. MXINT4 through shared
        memory: the warpgroup first dequantizes its rows into bf16 slot ``a_slot``, fences them
        and syncs. MXINT4 from registers: each part (two k-steps, one scale group) is dequantized
        into its A fragments while the group of the part before runs (the group that last read
        these registers, the same part of the previous k-block, retired at the last
        ``wait_group(1)``); no barrier, and the item's first k-step overwrites the accumulators
        instead of a zero fill (the columns a narrow item leaves out stay dead). Returns the
        ring position (stage, phase) and the next A slot."""
        prev = Int32(0)
        parts = self.a_parts
        shared_dequant = self.packed and not self.register_a
        for kb in cutlass.range(k_blocks, unroll=1):
            if kb > 0:  # the item's first slot was waited for with its item number
                cute.arch.mbarrier_wait(full + stage, phase)
            a_read = stage
            if cutlass.const_expr(shared_dequant):
                self.dequantize_warpgroup(tidx % WARPGROUP, warpgroup, stage, a_slot, sq_ptr, ss_ptr, sa_ptr)
                a_read = a_slot
                a_slot = a_slot ^ 1
            for part in cutlass.range_constexpr(parts):
                if cutlass.const_expr(self.register_a):
                    self.dequantize_registers(tidx % WARPGROUP, warpgroup, stage, sq_ptr, ss_ptr, tCrA, part)
                # token rows that arrived through cp.async (generic proxy) and the weights this
                # warpgroup dequantized into shared memory: wgmma reads them through the async proxy
                if cutlass.const_expr(part == 0 and (self.gather or shared_dequant)):
                    cute.arch.fence_proxy("async.shared", space="cta")
                if cutlass.const_expr(shared_dequant):
                    cute.arch.barrier(barrier_id=DEQUANT_BARRIER + warpgroup, number_of_threads=WARPGROUP)
                cute.nvgpu.warpgroup.fence()
                for kk in cutlass.range_constexpr(part * k_steps // parts, (part + 1) * k_steps // parts):
                    if cutlass.const_expr(self.register_a):
                        if cutlass.const_expr(kk == 0):
                            tiled_mma.set(cute.nvgpu.warpgroup.Field.ACCUMULATE, kb > 0)
                        cute.gemm(tiled_mma, acc, tCrA[(None, None, kk)], tCrB[(None, None, kk, stage)], acc)
                        if cutlass.const_expr(kk == 0):
                            tiled_mma.set(cute.nvgpu.warpgroup.Field.ACCUMULATE, True)
                    else:
                        cute.gemm(tiled_mma, acc, tCrA[(None, None, kk, a_read)], tCrB[(None, None, kk, stage)], acc)
                cute.nvgpu.warpgroup.commit_group()
                cute.nvgpu.warpgroup.wait_group(1)
                if cutlass.const_expr(part == 0):
                    # the last group of k-block kb - 1 has finished: its slot goes back to the producer
                    if kb > 0:
                        cute.arch.mbarrier_arrive(empty + prev)
            prev = stage
            stage = stage + 1
            if stage == self.stages:
                stage = Int32(0)
                phase = phase ^ 1
        cute.nvgpu.warpgroup.wait_group(0)
        cute.arch.mbarrier_arrive(empty + prev)
        return stage, phase, a_slot

    @cute.jit
    def store_passes(self, tidx: Int32, acc: cute.Tensor, tCsC: cute.Tensor, warpgroup: Int32, sc_ptr: cute.Pointer,
                     expert: Int32, row0: Int32, nrows: Int32, mb: Int32, out_ptr: cute.Pointer,
                     lora_ptr: cute.Pointer, p2e: cute.Tensor, alpha: cute.Tensor, beta: cute.Tensor,
                     clamp: cute.Tensor, out_scale: cute.Tensor, m: Int32, n_out: Int32,
                     epilogue_sync: cutlass.pipeline.NamedBarrier):
        """The float32 epilogue: accumulators -> sC[n, p] -> the template's stores, one pass per
        ``epi_bm`` rows."""
        for h in cutlass.range_constexpr(self.passes):
            epilogue_sync.arrive_and_wait()  # the previous pass's stores have read sC
            if cutlass.const_expr(self.split_reps):
                if warpgroup == h % self.warpgroups:
                    self.stage_rep(acc, tCsC, h // self.warpgroups)
            else:
                for j in cutlass.range_constexpr(self.reps_per_pass):
                    self.stage_rep(acc, tCsC, h * self.reps_per_pass + j)
            epilogue_sync.arrive_and_wait()
            block = mb * self.passes + h
            self.store_tile(tidx, sc_ptr, expert, row0, nrows, block, out_ptr, lora_ptr, p2e, alpha, beta, clamp,
                            out_scale, m, n_out)

    @cute.jit
    def store_rows(self, tidx: Int32, acc: cute.Tensor, tCcC: cute.Tensor, sd_ptr: cute.Pointer, expert: Int32,
                   row0: Int32, nrows: Int32, mb: Int32, out_ptr: cute.Pointer, alpha: cute.Tensor,
                   beta: cute.Tensor, clamp: cute.Tensor, out_scale: cute.Tensor, m: Int32, n_out: Int32,
                   epilogue_sync: cutlass.pipeline.NamedBarrier):
        """The bulk epilogue: every accumulator pair (prepared rows ``p``, ``p + 8`` of one token:
        unshuffled rows ``r``, ``r + 1``) is scaled, activated and rounded into the bf16 tile
        ``sD[n, c]`` of ``pass_cols`` output columns; then thread ``n < nrows`` copies token row
        ``n`` to ``out[row0 + n, ...]`` with one bulk copy (columns past the output width, a
        partial last m-block, are left out). One pass holds the m-block's columns, or
        ``bulk_passes`` passes those of one accumulator m-repeat each (the shuffle stays inside
        32-row blocks, so an m-repeat's rows are whole output columns). The copies before have
        read ``sD`` before anyone writes it again."""
        a_e, b_e, c_e, s_e = self.expert_scalars(expert, alpha, beta, clamp, out_scale)
        tile_bytes = self.bn * self.out_stride
        halves = cute.make_tensor(cute.recast_ptr(sd_ptr, dtype=BFloat16), cute.make_layout(tile_bytes // 2))
        words = cute.make_tensor(cute.recast_ptr(sd_ptr, dtype=Int32), cute.make_layout(tile_bytes // 4))
        values, reps, cols = cute.size(acc, mode=[0]), cute.size(acc, mode=[1]), cute.size(acc, mode=[2])
        reps_per_pass = reps // self.bulk_passes
        rows_per_pass = self.bm // self.bulk_passes  # prepared (= unshuffled) rows of one pass
        width = n_out if cutlass.const_expr(self.is_fc1) else m
        for h in cutlass.range_constexpr(self.bulk_passes):
            cute.arch.cp_async_bulk_wait_group(0, read=True)
            epilogue_sync.arrive_and_wait()
            for rep in cutlass.range_constexpr(h * reps_per_pass, (h + 1) * reps_per_pass):
                for col in cutlass.range_constexpr(cols):
                    for v in cutlass.range_constexpr(values // 4):
                        for c in cutlass.range_constexpr(2):
                            # values (c, 0, v) and (c, 1, v) of the m64 atom: rows p and p + 8 of one token
                            lo = acc[((c, 0, v), rep, col)]
                            hi = acc[((c, 1, v), rep, col)]
                            if cutlass.const_expr(self.has_out_scale):
                                lo = lo * s_e
                                hi = hi * s_e
                            p, n = tCcC[((c, 0, v), rep, col)]
                            r = epi.unshuffled_row(p) - h * rows_per_pass
                            if cutlass.const_expr(self.gated):
                                if cutlass.const_expr(self.oss):
                                    res = epi.swiglu_oss(lo, hi, a_e, b_e, c_e, self.has_alpha, self.has_beta,
                                                         self.has_clamp)
                                else:
                                    res = epi.swiglu(lo, hi)
                                halves[n * (self.out_stride // 2) + r // 2] = BFloat16(res)
                            else:
                                if cutlass.const_expr(self.relu2):
                                    lo = epi.relu2(lo)
                                    hi = epi.relu2(hi)
                                words[n * (self.out_stride // 4) + r // 2] = pack_bf16x2(lo, hi)
            # the tile was written through the generic proxy; the bulk copies read it through the async one
            cute.arch.fence_proxy("async.shared", space="cta")
            epilogue_sync.arrive_and_wait()
            first = mb * self.out_cols + h * self.pass_cols
            if (tidx < nrows) & (tidx < self.bn) & (first < width):
                size = cutlass.min(Int32(self.pass_cols), width - first) * 2
                dst = out_ptr + (Int64(row0 + tidx) * Int64(n_out) + Int64(first))
                src = cute.recast_ptr(sd_ptr, dtype=Uint8) + tidx * self.out_stride
                bulk_copy_to_global(dst.toint(), src.toint(), size)
            cute.arch.cp_async_bulk_commit_group()

    def packed_ring_layout(self) -> cute.Layout:
        """MXINT4: the packed ring, (bm rows, 32 bytes, stages), one k-block per slot."""
        return cute.make_layout((self.bm, INT4_ROW_BYTES, self.stages),
                                stride=(INT4_ROW_BYTES, 1, self.bm * INT4_ROW_BYTES))

    @cute.jit
    def dequantize_warpgroup(self, tl: Int32, warpgroup: Int32, stage: Int32, a_slot: Int32, sq_ptr: cute.Pointer,
                             ss_ptr: cute.Pointer, sa_ptr: cute.Pointer):
        """MXINT4: the rows of MMA warpgroup ``warpgroup`` in the k-block of ring slot ``stage`` ->
        bf16 slot ``a_slot`` (the wgmma layout: rows of 128 bytes, 128-byte swizzle). Thread ``tl``
        takes units ``u = tl + 128 * n`` of the warpgroup's rows: half ``u % 2`` of its row
        ``u // 2`` (``warpgroup_row``)."""
        raw = self.packed_k_block(sq_ptr, stage, 0)
        scale_words = self.scale_words(ss_ptr, stage)
        sa_words = cute.recast_ptr(sa_ptr + cute.assume(a_slot * (self.bm * BK), divby=self.bm * BK), dtype=Int32)
        for n in cutlass.range_constexpr(self.wg_units):
            u = tl + n * WARPGROUP
            r = warpgroup_row(warpgroup, u // INT4_SCALES_PER_KB, self.warpgroups)
            self.dequantize_unit(r, u % INT4_SCALES_PER_KB, raw, scale_words[0, r], sa_words)

    @cute.jit
    def dequantize_registers(self, tl: Int32, warpgroup: Int32, stage: Int32, sq_ptr: cute.Pointer,
                             ss_ptr: cute.Pointer, tCrA: cute.Tensor, part: cutlass.Constexpr):
        """MXINT4: part ``part`` of ``a_parts`` of the k-block in ring slot ``stage`` -> the A
        fragments of its k-steps, for thread ``tl`` of MMA warpgroup ``warpgroup``. The wgmma's
        A layout is the m16n8k16 one per warp: lane ``4g + t`` of warp ``w`` holds, per m-repeat
        and k-step ``s``, rows ``16w + g`` and ``+ 8`` at k ``16s + 2t, +1`` and ``16s + 2t + 8,
        +9``: the two values of byte ``t`` of packed words ``2s`` and ``2s + 1`` of those rows
        (low nibble first). So each lane loads its rows' words of the part (inside one 32-value
        scale group) and converts byte ``t`` of each (the prmt selector at run time), scaled by
        the row's scale of the group."""
        raw = self.packed_k_block(sq_ptr, stage, 0)
        scale_words = self.scale_words(ss_ptr, stage)
        selector = int4_convert.byte_selector(tl % 4)
        reps = cute.size(tCrA, mode=[1])
        regs = cute.recast_tensor(tCrA, Int32)  # bf16 pairs (register_a_word)
        words = INT4_ROW_BYTES // 4 // self.a_parts  # packed words of the part (8 values each)
        group = part * INT4_SCALES_PER_KB // self.a_parts
        for rep in cutlass.range_constexpr(reps):
            for h in cutlass.range_constexpr(2):
                r = register_a_row(warpgroup, tl, rep, h, self.warpgroups)
                packed = cute.make_rmem_tensor(words, Int32)
                src = cute.recast_ptr(raw + cute.assume(r * INT4_ROW_BYTES + part * words * 4, divby=words * 4),
                                      dtype=Int32)
                cute.autovec_copy(cute.make_tensor(src, cute.make_layout(words)), packed)
                s2 = int4_convert.scale_pair(scale_words[0, r], group)
                for i in cutlass.range_constexpr(words):
                    w = part * words + i  # word w of the row: k-step w // 2, k8 = w % 2
                    pair = int4_convert.scaled_byte(packed[i], packed[i] >> 4, s2, selector)
                    regs[register_a_word(h, w % 2, rep, w // 2, reps)] = pair

    @cute.jit
    def stage_rep(self, acc: cute.Tensor, tCsC: cute.Tensor, rep: cutlass.Constexpr):
        """Accumulator m-repeat ``rep`` -> its rows of the epilogue tile."""
        acc_rep = acc[(None, rep, None)]
        sc_rep = tCsC[(None, rep, None)]
        for i in cutlass.range(cute.size(acc_rep), unroll_full=True):
            sc_rep[i] = acc_rep[i]
