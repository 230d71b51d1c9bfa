"""The MoE plan on the GPU: per-expert counts, padded offsets, permutation maps, tile list.

Pair ``p = t * K + j`` routed to local expert ``e`` goes to permuted row
``expert_offsets[e] + (number of pairs p' < p routed to e)``, so the rows of one expert are
contiguous and in (token, slot) order whatever the launch configuration; counting uses shared
memory atomics (order-independent), positions never do.

Ranking inside a block of ``THREADS`` consecutive pairs: ``match.any`` gives each warp's peers
with the same expert (rank = peers below this lane), a per-(warp, expert) count table gives the
pairs of earlier warps, and a running per-expert base carries the count of earlier blocks.

Two launch shapes, chosen on the host from ``T * K`` (a host value):

* ``PlanSingleCta``: one CTA counts, scans and scatters (small T: one launch).
* ``PlanCountChunks`` -> ``PlanScan`` -> ``PlanScatterChunks``: chunks of ``chunk_pairs_for(T*K)`` pairs
  are counted in parallel into a ``[num_chunks, L]`` workspace, one CTA turns it into per-chunk
  bases and the expert offsets, and the chunks scatter in parallel.

Both write identical plans. All sizes (``L <= MAX_LOCAL_EXPERTS``, ``tile_rows``, counts) are
runtime values: one compile serves every plan shape.
"""

from __future__ import annotations

import torch

import cutlass
import cutlass.cute as cute
import cutlass.memory
import cuda.bindings.driver as cuda
from cutlass import Float32, Int32, Int64

from ..plan import RASTER_TILES
from . import runtime
from .l2_prefetch import prefetch_expert_prefixes
from .topk_pack import unpack_pair

THREADS = 512
WARPS = THREADS // 32
MAX_LOCAL_EXPERTS = 512
MAX_CHUNK_PAIRS = 4096
TARGET_CHUNKS = 128  # about one CTA per SM in the count and scatter kernels
SINGLE_CTA_MAX_PAIRS = 2048
FUSED_ROUTE_MAX_TOKENS = 16  # routing folded into the one-CTA plan: one token per warp


def chunk_pairs_for(num_pairs: int) -> int:
    """Pairs per chunk: a multiple of THREADS, at most MAX_CHUNK_PAIRS, about TARGET_CHUNKS chunks
    (more chunks, more parallel CTAs, but a longer per-expert loop in the scan kernel)."""
    per = -(-num_pairs // TARGET_CHUNKS)
    return min(MAX_CHUNK_PAIRS, max(THREADS, -(-per // THREADS) * THREADS))


# --------------------------------------------------------------------------- device pieces


@cute.jit
def _block_exclusive_scan(v: Int32, tid: Int32, scratch: cute.Tensor):
    """(exclusive prefix of ``v`` over the CTA's threads, CTA total); ``scratch`` has WARPS ints."""
    lane = tid % 32
    warp = tid // 32
    incl = v
    for s in cutlass.range_constexpr(5):
        up = cute.arch.shuffle_sync_up(incl, offset=1 << s)
        incl = incl + up if lane >= (1 << s) else incl
    if lane == 31:
        scratch[warp] = incl
    cute.arch.sync_threads()
    if warp == 0:
        w = Int32(0)
        if lane < WARPS:
            w = scratch[lane]
        for s in cutlass.range_constexpr(5):
            up = cute.arch.shuffle_sync_up(w, offset=1 << s)
            w = w + up if lane >= (1 << s) else w
        if lane < WARPS:
            scratch[lane] = w
    cute.arch.sync_threads()
    base = Int32(0)
    if warp > 0:
        base = scratch[warp - 1]
    total = scratch[WARPS - 1]
    cute.arch.sync_threads()
    return base + incl - v, total


@cute.jit
def _write_layout(tid: Int32, count: Int32, num_local: Int32, tile_rows: Int32, s_offset: cute.Tensor,
                  s_tile_start: cute.Tensor, s_tiles: cute.Tensor, s_count: cute.Tensor, s_scan: cute.Tensor,
                  expert_counts: cute.Tensor, expert_offsets: cute.Tensor, p2e: cute.Tensor,
                  tile_info: cute.Tensor, counters: cute.Tensor):
    """From thread e's count (e < L): offsets, counts, counters, padding rows and the tile list.

    Leaves ``s_offset[e]`` = first permuted row of expert e, ``s_tiles[e]`` its tiles, and
    returns rows in use.
    """
    tiles = (count + tile_rows - 1) // tile_rows
    padded = tiles * tile_rows
    row0, rows = _block_exclusive_scan(padded, tid, s_scan)
    tile0, num_tiles = _block_exclusive_scan(tiles, tid, s_scan)
    if tid < num_local:
        expert_counts[tid] = count
        expert_offsets[tid] = row0
        s_offset[tid] = row0
        s_tile_start[tid] = tile0
        s_tiles[tid] = tiles
        s_count[tid] = count
    if tid == 0:
        expert_offsets[num_local] = rows
        counters[0] = num_tiles
        counters[1] = rows
        counters[2] = Int32(0)
        counters[3] = Int32(0)
    cute.arch.sync_threads()
    # Padding rows: one warp per expert, lanes on consecutive rows (coalesced stores).
    lane = tid % 32
    for e in cutlass.range(tid // 32, num_local, WARPS):
        first_pad = s_offset[e] + s_count[e]
        end_pad = s_offset[e] + s_tiles[e] * tile_rows
        for r in cutlass.range(first_pad + lane, end_pad, 32):
            p2e[r] = Int32(-1)
    for tile in cutlass.range(tid, num_tiles, THREADS):
        # The expert of a tile: the last e with s_tile_start[e] <= tile (empty experts share
        # their start with the next expert, so the last one is the owner).
        lo = Int32(0)
        hi = num_local - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if s_tile_start[mid] <= tile:
                lo = mid
            else:
                hi = mid - 1
        first = (tile - s_tile_start[lo]) * tile_rows
        n = s_count[lo] - first
        tile_info[tile, 0] = lo
        tile_info[tile, 1] = s_offset[lo] + first
        tile_info[tile, 2] = n if n < tile_rows else tile_rows
        # raster group: the RASTER_TILES-tile chunk of the expert's tiles that holds this tile
        first_tile = s_tile_start[lo]
        chunk = first_tile + (tile - first_tile) // RASTER_TILES * RASTER_TILES
        end = first_tile + s_tiles[lo]
        size = end - chunk if end - chunk < RASTER_TILES else RASTER_TILES
        tile_info[tile, 3] = chunk * RASTER_TILES + size - 1
    return rows


@cute.jit
def _first_id(tid: Int32, begin: Int32, end: Int32, topk_ids: cute.Tensor) -> Int32:
    """This thread's id in the first block of [begin, end) (-1 past the end): loaded early so its
    latency hides behind other work."""
    first = Int32(-1)
    if begin + tid < end:
        first = topk_ids[begin + tid]
    return first


@cute.jit
def _scatter_ranked(tid: Int32, begin: Int32, end: Int32, first: Int32, topk_ids: cute.Tensor,
                    expert_offset: Int32, num_local: Int32, s_next: cute.Tensor, s_warp_count: cute.Tensor,
                    e2p: cute.Tensor, p2e: cute.Tensor):
    """Permuted rows of pairs [begin, end) in pair order; ``first`` = ``_first_id``;
    ``s_next[e]`` = next free row of e (advanced here); ``s_warp_count`` [WARPS, MAX_LOCAL_EXPERTS]
    must be zero on entry (left zero)."""
    warp = tid // 32
    below = cute.arch.lanemask_lt()
    nxt = first
    for block in cutlass.range(begin, end, THREADS):
        p = block + tid
        e = nxt - expert_offset
        if p + THREADS < end:  # next block's id, loaded while this block ranks
            nxt = topk_ids[p + THREADS]
        local = (e >= 0) & (e < num_local) & (p < end)
        key = e if local else Int32(-1)
        peers = cute.arch.match_sync(0xFFFFFFFF, key)
        rank = Int32(cute.arch.popc(peers & below))
        first_of_peers = (peers & below) == cutlass.Uint32(0)
        if local & first_of_peers:
            s_warp_count[warp, e] = Int32(cute.arch.popc(peers))
        cute.arch.sync_threads()
        if local:
            pos = s_next[e] + rank
            for w in cutlass.range_constexpr(WARPS - 1):
                if w < warp:
                    pos = pos + s_warp_count[w, e]
            e2p[p] = pos
            p2e[pos] = p
        elif p < end:
            e2p[p] = Int32(-1)
        cute.arch.sync_threads()
        if local & first_of_peers:
            cute.arch.atomic_add((s_next.iterator + e).llvm_ptr, Int32(cute.arch.popc(peers)))
            s_warp_count[warp, e] = Int32(0)
        cute.arch.sync_threads()


@cute.jit
def _zero(tid: Int32, t: cute.Tensor, n: int):
    for i in cutlass.range(tid, n, THREADS):
        t[i] = Int32(0)


@cute.jit
def _zero_warp_counts(tid: Int32, s_warp_count: cute.Tensor, num_local: Int32):
    """Zero ``s_warp_count[w, e]`` for ``e < num_local`` (all ``_scatter_ranked`` reads): warp
    ``w`` its row, 16-byte stores (zeroing all 512 columns took ~30% of a one-CTA plan at T = 1)."""
    zero = cute.make_rmem_tensor(4, Int32)
    zero.fill(0)
    row = s_warp_count.iterator + cute.assume((tid // 32) * MAX_LOCAL_EXPERTS, divby=MAX_LOCAL_EXPERTS)
    for c in cutlass.range((tid % 32) * 4, num_local, 128):
        cute.autovec_copy(zero, cute.make_tensor(row + cute.assume(c, divby=4), cute.make_layout(4)))


@cute.jit
def _count_pairs(tid: Int32, begin: Int32, end: Int32, topk_ids: cute.Tensor, expert_offset: Int32,
                 num_local: Int32, s_count: cute.Tensor):
    """``s_count[e] +=`` pairs of [begin, end) routed to local expert e (smem atomics)."""
    for p in cutlass.range(begin + tid, end, THREADS):
        e = topk_ids[p] - expert_offset
        if (e >= 0) & (e < num_local):
            cute.arch.atomic_add((s_count.iterator + e).llvm_ptr, Int32(1))


def _plan_tensors(num_pairs, num_local, max_rows, max_tiles, counts_ptr, offsets_ptr, e2p_ptr,
                  p2e_ptr, tile_info_ptr, counters_ptr):
    return (cute.make_tensor(counts_ptr, cute.make_layout(num_local)),
            cute.make_tensor(offsets_ptr, cute.make_layout(num_local + 1)),
            cute.make_tensor(e2p_ptr, cute.make_layout(num_pairs)),
            cute.make_tensor(p2e_ptr, cute.make_layout(max_rows)),
            cute.make_tensor(tile_info_ptr, cute.make_layout((max_tiles, 4), stride=(4, 1))),
            cute.make_tensor(counters_ptr, cute.make_layout(4)))


# --------------------------------------------------------------------------- kernels


class PlanSingleCta:
    """Whole plan in one CTA (count, scan, ranked scatter) from the routed ids of ``source``:

    * ``"ids"``: ``topk_ids`` int32, written by an earlier launch;
    * ``"packed"``: FlashInfer's packed pairs ``(id << 16) | bf16 weight bits``, unpacked here
      into ``topk_ids`` and ``topk_weights`` (the unpack kernel folded in);
    * a ``RouteTopk``: router logits of at most ``FUSED_ROUTE_MAX_TOKENS`` tokens, routed here one
      token per warp (the routing kernel folded in).

    A folded-in source leaves the ids in shared memory for the plan (at most
    ``SINGLE_CTA_MAX_PAIRS``). At decode every launch before FC1 is latency on the critical path:
    folding the producer of the ids in saves one kernel boundary. CTAs past the first only
    prefetch: they recompute the ids and move the routed experts' first weight bytes into L2
    (``l2_prefetch``) while the first CTA plans."""

    def __init__(self, source="ids"):
        if not (source in ("ids", "packed") or hasattr(source, "route_token")):
            raise ValueError(f"source: expected 'ids', 'packed' or a RouteTopk, got {source!r}")
        self.source = source

    @cute.jit
    def __call__(self, src_ptr: cute.Pointer, bias_ptr: cute.Pointer, ids_ptr: cute.Pointer,
                 weights_ptr: cute.Pointer, replay_ptr: cute.Pointer, counts_ptr: cute.Pointer,
                 offsets_ptr: cute.Pointer, e2p_ptr: cute.Pointer, p2e_ptr: cute.Pointer,
                 tile_info_ptr: cute.Pointer, counters_ptr: cute.Pointer, num_pairs: Int32, expert_offset: Int32,
                 num_local: Int32, tile_rows: Int32, max_rows: Int32, max_tiles: Int32,
                 routed_scaling_factor: Float32, w1: Int64, w2: Int64, fc1_bytes: Int64, fc2_bytes: Int64,
                 prefetch_share: Int32, prefetch_ctas: Int32, use_pdl: Int32,
                 stream: cuda.CUstream):
        """``src_ptr``: the source's input (ids, packed pairs or logits); ``bias_ptr``,
        ``weights_ptr``, ``replay_ptr`` serve the folded-in routing / unpacking (any aligned
        address otherwise). ``w1`` / ``w2``: addresses of the experts' FC1 / FC2 weights,
        ``fc1_bytes`` / ``fc2_bytes`` per local expert; ``prefetch_ctas`` more CTAs move the first
        ``prefetch_share`` bytes of every routed pair's expert into L2 while the plan runs (0:
        none; ``l2_prefetch``). ``use_pdl``: launch as a programmatic dependent of the previous
        kernel (which lets it launch at its start): the plan waits for it at its start, then lets
        FC1 launch."""
        plan = _plan_tensors(num_pairs, num_local, max_rows, max_tiles, counts_ptr, offsets_ptr,
                             e2p_ptr, p2e_ptr, tile_info_ptr, counters_ptr)
        pairs = cute.make_layout(num_pairs)
        if cutlass.const_expr(self.source in ("ids", "packed")):
            src = tuple(cute.make_tensor(ptr, pairs) for ptr in (src_ptr, bias_ptr, ids_ptr, weights_ptr, replay_ptr))
        else:
            src = self.source.tensors(src_ptr, bias_ptr, ids_ptr, weights_ptr, replay_ptr,
                                      num_pairs // self.source.top_k)
        prefetch = (w1, w2, fc1_bytes, fc2_bytes, prefetch_share)
        self.kernel(*src, *plan, num_pairs, expert_offset, num_local, tile_rows, routed_scaling_factor,
                    *prefetch).launch(grid=[1 + prefetch_ctas, 1, 1], block=[THREADS, 1, 1], stream=stream,
                                      use_pdl=use_pdl)

    @cute.kernel
    def kernel(self, src: cute.Tensor, bias: cute.Tensor, topk_ids: cute.Tensor, topk_weights: cute.Tensor,
               replay: cute.Tensor, expert_counts: cute.Tensor, expert_offsets: cute.Tensor, e2p: cute.Tensor,
               p2e: cute.Tensor, tile_info: cute.Tensor, counters: cute.Tensor, num_pairs: Int32,
               expert_offset: Int32, num_local: Int32, tile_rows: Int32, routed_scaling_factor: Float32,
               w1: Int64, w2: Int64, fc1_bytes: Int64, fc2_bytes: Int64, prefetch_share: Int32):
        cute.arch.griddepcontrol_wait()  # the routed ids (a no-op without a programmatic launch)
        cute.arch.griddepcontrol_launch_dependents()  # FC1 waits for this grid at its own start
        tid = cute.arch.thread_idx()[0]
        cta = cute.arch.block_idx()[0]
        ctas = cute.arch.grid_dim()[0]
        smem = cutlass.memory.SmemAllocator()
        s_ids = smem.allocate_tensor(Int32, cute.make_layout(SINGLE_CTA_MAX_PAIRS), 16)
        s_count = smem.allocate_tensor(Int32, cute.make_layout(MAX_LOCAL_EXPERTS), 16)
        s_offset = smem.allocate_tensor(Int32, cute.make_layout(MAX_LOCAL_EXPERTS), 16)
        s_tile_start = smem.allocate_tensor(Int32, cute.make_layout(MAX_LOCAL_EXPERTS), 16)
        s_tiles = smem.allocate_tensor(Int32, cute.make_layout(MAX_LOCAL_EXPERTS), 16)
        s_scan = smem.allocate_tensor(Int32, cute.make_layout(WARPS), 16)
        s_warp_count = smem.allocate_tensor(
            Int32, cute.make_layout((WARPS, MAX_LOCAL_EXPERTS), stride=(MAX_LOCAL_EXPERTS, 1)), 16)
        if cta > 0:
            # a prefetching CTA: the same ids (recomputed, nothing written), then its units
            ids_p = self.routed_ids(tid, src, bias, s_ids, num_pairs, False, topk_ids, topk_weights, replay,
                                    routed_scaling_factor)
            cute.arch.sync_threads()
            prefetch_expert_prefixes(cta - 1 + (ctas - 1) * tid, (ctas - 1) * THREADS, ids_p, num_pairs,
                                     expert_offset, num_local, w1, w2, fc1_bytes, fc2_bytes, prefetch_share)
        else:
            ids = self.routed_ids(tid, src, bias, s_ids, num_pairs, True, topk_ids, topk_weights, replay,
                                  routed_scaling_factor)
            _zero(tid, s_count, MAX_LOCAL_EXPERTS)
            _zero_warp_counts(tid, s_warp_count, num_local)
            cute.arch.sync_threads()
            first = _first_id(tid, Int32(0), num_pairs, ids)
            _count_pairs(tid, Int32(0), num_pairs, ids, expert_offset, num_local, s_count)
            cute.arch.sync_threads()
            count = Int32(0)
            if tid < num_local:
                count = s_count[tid]
            cute.arch.sync_threads()
            _write_layout(tid, count, num_local, tile_rows, s_offset, s_tile_start, s_tiles, s_count, s_scan,
                          expert_counts, expert_offsets, p2e, tile_info, counters)
            _scatter_ranked(tid, Int32(0), num_pairs, first, ids, expert_offset, num_local, s_offset,
                            s_warp_count, e2p, p2e)

    @cute.jit
    def routed_ids(self, tid: Int32, src: cute.Tensor, bias: cute.Tensor, s_ids: cute.Tensor, num_pairs: Int32,
                   store: cutlass.Constexpr, topk_ids: cute.Tensor, topk_weights: cute.Tensor, replay: cute.Tensor,
                   routed_scaling_factor: Float32) -> cute.Tensor:
        """The routed ids the plan reads: ``src`` itself (ids), or ``s_ids`` filled from the
        packed pairs or the routing (visible after the caller's next barrier). ``store``: also
        write the unpacked or routed ids, weights and replay ids (the plan's CTA only)."""
        ids = s_ids
        if cutlass.const_expr(self.source == "ids"):
            ids = src  # any number of pairs (build_plan may force one CTA past SINGLE_CTA_MAX_PAIRS)
        elif cutlass.const_expr(self.source == "packed"):
            for p in cutlass.range(tid, num_pairs, THREADS, unroll=SINGLE_CTA_MAX_PAIRS // THREADS):
                expert, weight_bits = unpack_pair(src[p])
                if cutlass.const_expr(store):
                    topk_ids[p] = expert
                    topk_weights[p] = weight_bits
                s_ids[p] = expert
        else:
            lane = tid % 32
            k = self.source.top_k
            for t in cutlass.range(tid // 32, num_pairs // k, WARPS):
                expert = Int32(-1)
                if cutlass.const_expr(store):
                    expert = self.source.route_token(src, bias, topk_ids, topk_weights, replay, t, lane,
                                                     routed_scaling_factor)
                else:
                    expert = self.source.selected_expert(src, bias, t, lane)
                if lane < k:
                    s_ids[t * k + lane] = expert
        return ids


class PlanCountChunks:
    """``workspace[c, e]`` = pairs of chunk c routed to local expert e."""

    @cute.jit
    def __call__(self, ids_ptr: cute.Pointer, ws_ptr: cute.Pointer, num_pairs: Int32, expert_offset: Int32,
                 num_local: Int32, num_chunks: Int32, chunk_pairs: Int32, stream: cuda.CUstream):
        ws = cute.make_tensor(ws_ptr, cute.make_layout((num_chunks, num_local), stride=(num_local, 1)))
        self.kernel(cute.make_tensor(ids_ptr, cute.make_layout(num_pairs)), ws, num_pairs, expert_offset,
                    num_local, chunk_pairs).launch(grid=[num_chunks, 1, 1], block=[THREADS, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, topk_ids: cute.Tensor, ws: cute.Tensor, num_pairs: Int32, expert_offset: Int32,
               num_local: Int32, chunk_pairs: Int32):
        tid = cute.arch.thread_idx()[0]
        chunk = cute.arch.block_idx()[0]
        smem = cutlass.memory.SmemAllocator()
        s_count = smem.allocate_tensor(Int32, cute.make_layout(MAX_LOCAL_EXPERTS), 16)
        _zero(tid, s_count, MAX_LOCAL_EXPERTS)
        cute.arch.sync_threads()
        begin = chunk * chunk_pairs
        end = begin + chunk_pairs
        end = end if end < num_pairs else num_pairs
        _count_pairs(tid, begin, end, topk_ids, expert_offset, num_local, s_count)
        cute.arch.sync_threads()
        if tid < num_local:
            ws[chunk, tid] = s_count[tid]


class PlanScan:
    """Per-chunk counts -> per-chunk exclusive bases (in place), counts, offsets, tiles, counters."""

    @cute.jit
    def __call__(self, ws_ptr: cute.Pointer, counts_ptr: cute.Pointer, offsets_ptr: cute.Pointer,
                 p2e_ptr: cute.Pointer, tile_info_ptr: cute.Pointer, counters_ptr: cute.Pointer,
                 num_local: Int32, tile_rows: Int32, max_rows: Int32, max_tiles: Int32, num_chunks: Int32,
                 stream: cuda.CUstream):
        ws = cute.make_tensor(ws_ptr, cute.make_layout((num_chunks, num_local), stride=(num_local, 1)))
        self.kernel(ws, cute.make_tensor(counts_ptr, cute.make_layout(num_local)),
                    cute.make_tensor(offsets_ptr, cute.make_layout(num_local + 1)),
                    cute.make_tensor(p2e_ptr, cute.make_layout(max_rows)),
                    cute.make_tensor(tile_info_ptr, cute.make_layout((max_tiles, 4), stride=(4, 1))),
                    cute.make_tensor(counters_ptr, cute.make_layout(4)), num_local, tile_rows, num_chunks).launch(
            grid=[1, 1, 1], block=[THREADS, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, ws: cute.Tensor, expert_counts: cute.Tensor, expert_offsets: cute.Tensor,
               p2e: cute.Tensor, tile_info: cute.Tensor, counters: cute.Tensor, num_local: Int32,
               tile_rows: Int32, num_chunks: Int32):
        tid = cute.arch.thread_idx()[0]
        smem = cutlass.memory.SmemAllocator()
        s_count = smem.allocate_tensor(Int32, cute.make_layout(MAX_LOCAL_EXPERTS), 16)
        s_offset = smem.allocate_tensor(Int32, cute.make_layout(MAX_LOCAL_EXPERTS), 16)
        s_tile_start = smem.allocate_tensor(Int32, cute.make_layout(MAX_LOCAL_EXPERTS), 16)
        s_tiles = smem.allocate_tensor(Int32, cute.make_layout(MAX_LOCAL_EXPERTS), 16)
        s_scan = smem.allocate_tensor(Int32, cute.make_layout(WARPS), 16)
        count = Int32(0)
        if tid < num_local:
            for c in cutlass.range(num_chunks, unroll=16):
                n = ws[c, tid]
                ws[c, tid] = count
                count = count + n
        _write_layout(tid, count, num_local, tile_rows, s_offset, s_tile_start, s_tiles, s_count, s_scan,
                      expert_counts, expert_offsets, p2e, tile_info, counters)


class PlanScatterChunks:
    """Permuted rows of every chunk's pairs, from the expert offsets and per-chunk bases."""

    @cute.jit
    def __call__(self, ids_ptr: cute.Pointer, ws_ptr: cute.Pointer, offsets_ptr: cute.Pointer,
                 e2p_ptr: cute.Pointer, p2e_ptr: cute.Pointer, num_pairs: Int32, expert_offset: Int32,
                 num_local: Int32, max_rows: Int32, num_chunks: Int32, chunk_pairs: Int32,
                 stream: cuda.CUstream):
        ws = cute.make_tensor(ws_ptr, cute.make_layout((num_chunks, num_local), stride=(num_local, 1)))
        self.kernel(cute.make_tensor(ids_ptr, cute.make_layout(num_pairs)), ws,
                    cute.make_tensor(offsets_ptr, cute.make_layout(num_local + 1)),
                    cute.make_tensor(e2p_ptr, cute.make_layout(num_pairs)),
                    cute.make_tensor(p2e_ptr, cute.make_layout(max_rows)), num_pairs, expert_offset,
                    num_local, chunk_pairs).launch(grid=[num_chunks, 1, 1], block=[THREADS, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, topk_ids: cute.Tensor, ws: cute.Tensor, expert_offsets: cute.Tensor, e2p: cute.Tensor,
               p2e: cute.Tensor, num_pairs: Int32, expert_offset: Int32, num_local: Int32, chunk_pairs: Int32):
        tid = cute.arch.thread_idx()[0]
        chunk = cute.arch.block_idx()[0]
        begin = chunk * chunk_pairs
        end = begin + chunk_pairs
        end = end if end < num_pairs else num_pairs
        first = _first_id(tid, begin, end, topk_ids)
        smem = cutlass.memory.SmemAllocator()
        s_next = smem.allocate_tensor(Int32, cute.make_layout(MAX_LOCAL_EXPERTS), 16)
        s_warp_count = smem.allocate_tensor(
            Int32, cute.make_layout((WARPS, MAX_LOCAL_EXPERTS), stride=(MAX_LOCAL_EXPERTS, 1)), 16)
        _zero_warp_counts(tid, s_warp_count, num_local)
        if tid < num_local:
            s_next[tid] = expert_offsets[tid] + ws[chunk, tid]
        cute.arch.sync_threads()
        _scatter_ranked(tid, begin, end, first, topk_ids, expert_offset, num_local, s_next, s_warp_count,
                        e2p, p2e)


# --------------------------------------------------------------------------- compile-time examples


def _i32():
    return runtime.fake_ptr(torch.int32, 4)


def single_cta_example_args(source="ids"):
    """Arguments that compile ``PlanSingleCta(source)`` without a GPU."""
    if source in ("ids", "packed"):
        src, bias, weights = _i32(), _i32(), runtime.fake_ptr(torch.int16, 2)
    else:
        from .routing import route_example_args

        src, bias, _, weights, _ = route_example_args(source.logits_f32, source.bias_dtype)[:5]
    return (src, bias, _i32(), weights, runtime.fake_ptr(torch.int16, 2), _i32(), _i32(), _i32(), _i32(), _i32(),
            _i32(), 1, 0, 1, 1, 1, 1, 1.0, 0, 0, 16, 16, 0, 0, 0, runtime.fake_stream())


def count_example_args():
    return (_i32(), _i32(), 1, 0, 1, 1, THREADS, runtime.fake_stream())


def scan_example_args():
    return (_i32(), _i32(), _i32(), _i32(), _i32(), _i32(), 1, 1, 1, 1, 1, runtime.fake_stream())


def scatter_example_args():
    return (_i32(), _i32(), _i32(), _i32(), _i32(), 1, 0, 1, 1, 1, THREADS, runtime.fake_stream())
