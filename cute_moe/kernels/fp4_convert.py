"""e2m1 (FP4) values and ue4m3 block scales -> exact bf16 (device functions), for weights in
b12x's NVFP4 layout dequantized to the bf16 MMA.

Both conversions place the narrow format's bits inside a bf16 and fix the exponent bias with one
exact multiply, so no table and no float conversion instruction is needed:

* ue4m3 byte ``b`` (sign, 4 exponent bits with bias 7, 3 mantissa bits): ``((b & 0x7f) << 4) |
  ((b & 0x80) << 8)`` is the bf16 of ``s * 2**-120`` (subnormal scales become bf16 subnormals of
  the same significand), times ``2**120``: ``s`` exactly;
* e2m1 nibble ``q`` (sign, 2 exponent bits with bias 1, 1 mantissa bit): ``((q & 7) << 6) |
  ((q & 8) << 12)`` is the bf16 of ``value * 2**-126`` (code 1, 0.5, becomes a subnormal), times
  ``2**126``: the value exactly.

``value * s`` is exact in bf16 (at most 2 + 4 significant bits), so a dequantized weight is the
exact product, as the block-scaled MMA would use it.
"""

from __future__ import annotations

import cutlass
from cutlass import Int32

from .int4_convert import _pure_asm, byte_selector

BF16X2_2_POW_120 = 0x7B807B80
BF16X2_2_POW_126 = 0x7E807E80


def scale_pair_ptx(j: int) -> str:
    """PTX of ``scale_pair`` (``$0`` the result, ``$1`` the word)."""
    return ("{\n.reg .b32 b, t, h, m, nz;\n"
            f"bfe.u32 b, $1, {8 * j}, 8;\n"
            "and.b32 t, b, 0x7F;\n"
            "shl.b32 t, t, 4;\n"
            "and.b32 h, b, 0x80;\n"
            "shl.b32 h, h, 8;\n"
            "or.b32 t, t, h;\n"
            "prmt.b32 t, t, t, 0x1010;\n"
            f"mov.b32 m, {BF16X2_2_POW_120:#x};\n"
            "mov.b32 nz, 0x80008000;\n"
            "fma.rn.bf16x2 $0, t, m, nz;\n}")


def scale_pair(four: Int32, j: cutlass.Constexpr) -> Int32:
    """bf16x2 ``(s, s)`` of ue4m3 byte ``j`` of the 32-bit word ``four``."""
    return _pure_asm(scale_pair_ptx(j), "=r,r", [four])


def scaled_pair_ptx(j: int) -> str:
    """PTX of ``scaled_pair`` (``$0`` the result, ``$1 .. $3`` word, hi, scale2)."""
    return ("{\n.reg .b32 t, a, b, m, nz;\n"
            f"prmt.b32 t, $1, $2, {byte_selector(j):#x};\n"
            "and.b32 a, t, 0x00070007;\n"
            "shl.b32 a, a, 6;\n"
            "and.b32 b, t, 0x00080008;\n"
            "shl.b32 b, b, 12;\n"
            "or.b32 t, a, b;\n"
            f"mov.b32 m, {BF16X2_2_POW_126:#x};\n"
            "mov.b32 nz, 0x80008000;\n"
            "fma.rn.bf16x2 t, t, m, nz;\n"
            "fma.rn.bf16x2 $0, t, $3, nz;\n}")


def scaled_pair(word: Int32, hi: Int32, scale2: Int32, j: cutlass.Constexpr) -> Int32:
    """bf16x2 ``(v_2j * s, v_2j+1 * s)`` of the e2m1 nibbles of byte ``j`` of ``word`` (low nibble
    first), ``hi = word >> 4``, ``scale2 = (s, s)``."""
    return _pure_asm(scaled_pair_ptx(j), "=r,r,r,r", [word, hi, scale2])
