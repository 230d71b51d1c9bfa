"""NVFP4 activation quantization of the plan's rows, per local expert (b12x_fused_moe, nvfp4 mode).

For every plan tile ``(e, row0, nrows)`` and every 16-value block ``b`` of its rows:

    dst[row0 + n, 16b : 16b + 16] = Q(src[source(row0 + n), 16b : 16b + 16], gs[e])   n < nrows

with ``source(r) = permuted_idx_to_expanded_idx[r] // top_k`` (``gather``: ``x``'s token rows,
each quantized with the global scale of the expert it is routed to) or ``r`` (FC1's activation,
quantized in place). ``Q`` is the rule of cute_moe.reference_b12x (a global scale divides):

    sf = ue4m3(min(max|v| / (6 * gs), 448))    round to nearest even
    q  = e2m1(v / (sf * gs))                    round to nearest even, saturating at +-6
    Q  = q * sf                                 (0 when sf is 0)

stored as bf16 (exact: at most 2 + 4 significant bits), ready for the dequantizing bf16 MMA,
which computes with ``Q`` what the block-scaled FP4 MMA computes with ``(q, sf)``.

One thread per 16-value block and row (two 16-byte loads, two 16-byte stores); a CTA covers
``THREADS`` blocks of one tile's rows. Rows past ``nrows`` (padding) and tiles past the plan's
count (read on the device) are left alone: CUDA-graph safe.
"""

from __future__ import annotations

import struct

import torch

import cutlass
import cutlass.cute as cute
import cuda.bindings.driver as cuda
from cutlass import BFloat16, Float32, Int32
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T

from . import runtime

THREADS = 128
BLOCK = 16  # values per ue4m3 scale
E2M1_MAX = 6.0
UE4M3_MAX = 448.0


def _f32_asm(ptx: str, constraints: str, args) -> Float32:
    return Float32(llvm.inline_asm(T.f32(), [Float32(a).ir_value() for a in args], ptx, constraints,
                                   has_side_effects=False, is_align_stack=False))


UE4M3_ROUND_PTX = ("{\n.reg .b16 q, lo, hi;\n.reg .b32 h;\n"
                   "cvt.rn.satfinite.e4m3x2.f32 q, $1, $1;\n"
                   "cvt.rn.f16x2.e4m3x2 h, q;\n"
                   "mov.b32 {lo, hi}, h;\n"
                   "cvt.f32.f16 $0, lo;\n}")
UE4M3_BITS_PTX = ("{\n.reg .b16 q;\n"
                  "cvt.rn.satfinite.e4m3x2.f32 q, $1, $1;\n"
                  "cvt.u32.u16 $0, q;\n"
                  "and.b32 $0, $0, 0xFF;\n}")


def ue4m3_round(x: Float32) -> Float32:
    """``float(ue4m3(x))`` for ``0 <= x <= 448``: round to nearest even (subnormals included)."""
    return _f32_asm(UE4M3_ROUND_PTX, "=f,f", [x])


# e2m1 rounding of a = |v| / denom as a sum of steps: (boundary, comparison, step). Ties go to the
# even code: boundaries 0.25, 1.25, 2.5, 5 round down ("gt"), 0.75, 1.75, 3.5 up ("ge").
_E2M1_STEPS = ((0.25, "gt", 0.5), (0.75, "ge", 0.5), (1.25, "gt", 0.5), (1.75, "ge", 0.5),
               (2.5, "gt", 1.0), (3.5, "ge", 1.0), (5.0, "gt", 2.0))


def _f32_hex(x: float) -> str:
    return "0f%08X" % struct.unpack("<I", struct.pack("<f", x))[0]


def _e2m1_ptx() -> str:
    lines = ["{", ".reg .pred p;", ".reg .f32 a, q, t;", ".reg .b32 m, b;",
             "abs.f32 a, $1;", "div.rn.f32 a, a, $2;", "mov.f32 q, 0f00000000;"]
    for bound, cmp, step in _E2M1_STEPS:
        lines += [f"setp.{cmp}.f32 p, a, {_f32_hex(bound)};", f"selp.f32 t, {_f32_hex(step)}, 0f00000000, p;",
                  "add.f32 q, q, t;"]
    lines += ["mov.b32 m, $1;", "and.b32 m, m, 0x80000000;", "mov.b32 b, q;", "or.b32 b, b, m;",
              "mov.b32 $0, b;", "}"]
    return "\n".join(lines)


def _e2m1_code_ptx() -> str:
    lines = ["{", ".reg .pred p;", ".reg .f32 a;", ".reg .b32 q, t, m;",
             "abs.f32 a, $1;", "div.rn.f32 a, a, $2;", "mov.b32 q, 0;"]
    for bound, cmp, _ in _E2M1_STEPS:
        lines += [f"setp.{cmp}.f32 p, a, {_f32_hex(bound)};", "selp.b32 t, 1, 0, p;", "add.u32 q, q, t;"]
    lines += ["mov.b32 m, $1;", "shr.u32 m, m, 31;", "shl.b32 m, m, 3;", "or.b32 $0, q, m;", "}"]
    return "\n".join(lines)


def e2m1_code(v: Float32, denom: Float32) -> Int32:
    """The 4-bit e2m1 code of ``e2m1_round(v, denom)``: sign in bit 3, magnitude index 0..7."""
    return Int32(llvm.inline_asm(T.i32(), [Float32(a).ir_value() for a in (v, denom)], _e2m1_code_ptx(),
                                 "=r,f,f", has_side_effects=False, is_align_stack=False))


def ue4m3_bits(x: Float32) -> Int32:
    """The ue4m3 byte of ``ue4m3_round(x)``."""
    return Int32(llvm.inline_asm(T.i32(), [Float32(x).ir_value()], UE4M3_BITS_PTX, "=r,f", has_side_effects=False,
                                 is_align_stack=False))


def e2m1_round(v: Float32, denom: Float32) -> Float32:
    """``e2m1(v / denom)`` as a float: ``|v| / denom`` (IEEE division) rounded to the nearest of
    0, 0.5, 1, 1.5, 2, 3, 4, 6 (ties to the even code, saturating at 6), with the sign bit of
    ``v`` (cute_moe.layouts.packing.encode_e2m1's rule)."""
    return _f32_asm(_e2m1_ptx(), "=f,f,f", [v, denom])


def abs_f32(x: Float32) -> Float32:
    return _f32_asm("abs.f32 $0, $1;", "=f,f", [x])


class QuantizeRows:
    """Compile-time: ``gather`` (``x``'s token rows through the permutation, else the rows in
    place); ``packed``: store the FP4 block itself (for SM120's block-scaled MMA) instead of bf16
    ``q * sf``: e2m1 codes ``[P, K/2]`` (low nibble first), then the ue4m3 scales ``[P, K/16]``
    row-major, in one buffer (``P = max_tiles * tile_rows``)."""

    def __init__(self, gather: bool, packed: bool = False):
        self.gather = gather
        self.packed = packed

    @cute.jit
    def __call__(self, src_ptr: cute.Pointer, dst_ptr: cute.Pointer, gs_ptr: cute.Pointer, p2e_ptr: cute.Pointer,
                 tile_info_ptr: cute.Pointer, counters_ptr: cute.Pointer, k: Int32, top_k: Int32,
                 num_experts: Int32, max_tiles: Int32, tile_rows: Int32, stream: cuda.CUstream):
        """``k``: row length (a multiple of 16); ``gs_ptr``: float32 per local expert."""
        blocks = k // BLOCK
        tile_info = cute.make_tensor(tile_info_ptr, cute.make_layout((max_tiles, 4), stride=(4, 1)))
        counters = cute.make_tensor(counters_ptr, cute.make_layout(4))
        p2e = cute.make_tensor(p2e_ptr, cute.make_layout(max_tiles * tile_rows))
        gs = cute.make_tensor(gs_ptr, cute.make_layout(num_experts))
        self.kernel(src_ptr, dst_ptr, gs, p2e, tile_info, counters, k, top_k, max_tiles * tile_rows).launch(
            grid=[max_tiles, (blocks + THREADS - 1) // THREADS, 1], block=[THREADS, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, src_ptr: cute.Pointer, dst_ptr: cute.Pointer, gs: cute.Tensor, p2e: cute.Tensor,
               tile_info: cute.Tensor, counters: cute.Tensor, k: Int32, top_k: Int32, max_rows: Int32):
        tile, by, _ = cute.arch.block_idx()
        b = by * THREADS + cute.arch.thread_idx()[0]
        if (tile < counters[0]) & (b < k // BLOCK):
            e = tile_info[tile, 0]
            row0 = tile_info[tile, 1]
            nrows = tile_info[tile, 2]
            g = gs[e]
            g6 = g * E2M1_MAX
            vec = cute.make_layout(BLOCK)
            scales = dst_ptr + cutlass.Int64(max_rows) * cutlass.Int64(k // 2)  # packed: after all P rows' codes
            for n in cutlass.range(nrows, unroll=1):
                r = row0 + n
                src_row = r
                if cutlass.const_expr(self.gather):
                    src_row = p2e[r] // top_k
                x = cute.make_rmem_tensor(BLOCK, BFloat16)
                src = src_ptr + cute.assume(cutlass.Int64(src_row) * cutlass.Int64(k) + cutlass.Int64(b * BLOCK),
                                            divby=BLOCK)
                cute.autovec_copy(cute.make_tensor(src, vec), x)
                v = x.load().to(Float32)
                amax = Float32(0.0)
                for i in cutlass.range_constexpr(BLOCK):
                    amax = cute.arch.fmax(amax, abs_f32(v[i]))
                sf_wanted = cute.arch.fmin(amax / g6, Float32(UE4M3_MAX))
                sf = ue4m3_round(sf_wanted)
                denom = sf * g
                if cutlass.const_expr(self.packed):
                    words = cute.make_rmem_tensor(2, Int32)
                    for w in cutlass.range_constexpr(2):
                        word = Int32(0)
                        for i in cutlass.range_constexpr(8):
                            word = word | (e2m1_code(v[8 * w + i], denom) << (4 * i))
                        words[w] = word
                    dst = dst_ptr + cute.assume(cutlass.Int64(r) * cutlass.Int64(k // 2) + cutlass.Int64(b * 8),
                                                divby=8)
                    cute.autovec_copy(words, cute.make_tensor(cute.recast_ptr(dst, dtype=Int32), cute.make_layout(2)))
                    scales[cutlass.Int64(r) * cutlass.Int64(k // BLOCK) + cutlass.Int64(b)] = \
                        cutlass.Uint8(ue4m3_bits(sf_wanted))
                else:
                    q = cute.make_rmem_tensor(BLOCK, Float32)
                    for i in cutlass.range_constexpr(BLOCK):
                        q[i] = e2m1_round(v[i], denom) * sf
                    out = cute.make_rmem_tensor(BLOCK, BFloat16)
                    out.store(q.load().to(BFloat16))
                    dst = dst_ptr + cute.assume(cutlass.Int64(r) * cutlass.Int64(k) + cutlass.Int64(b * BLOCK),
                                                divby=BLOCK)
                    cute.autovec_copy(out, cute.make_tensor(dst, vec))


def quantize_example_args(packed: bool = False):
    """Arguments that compile ``QuantizeRows`` without a GPU."""
    return (runtime.fake_ptr(torch.bfloat16, 16), runtime.fake_ptr(torch.uint8 if packed else torch.bfloat16, 16),
            runtime.fake_ptr(torch.float32, 4), runtime.fake_ptr(torch.int32, 4), runtime.fake_ptr(torch.int32, 16),
            runtime.fake_ptr(torch.int32, 16), 256, 1, 1, 1, 8, runtime.fake_stream())
