"""Signed int4 -> scaled bf16, two values per instruction chain (device functions).

A 32-bit word holds 8 signed int4 values, value ``j`` in bits ``[4j, 4j + 4)``. The pair
``(2j, 2j + 1)`` (the two nibbles of byte ``j``) becomes one bf16x2 register without any float
conversion instruction:

1. ``prmt`` puts byte ``j`` of the word and byte ``j`` of ``word >> 4`` in the two 16-bit halves;
2. ``lop3`` keeps each half's low nibble, flips its top bit (signed ``q`` -> ``u = q + 8`` in
   [0, 16)) and sets the rest to 0x4300: the bf16 pair ``(128 + u_lo, 128 + u_hi)`` (0x4300 is
   128.0, whose ulp is 1). One ``lop3``: ``mask ? (x ^ c) : c`` with ``c = 0x43084308``;
3. ``fma.rn.bf16x2``: ``x * 1 - 136 = q``, exact;
4. ``fma.rn.bf16x2``: ``q * s + (-0)`` with the scale pair ``(s, s)``: ``bf16(q * s)`` rounded
   once, the same value as ``float(q) * s`` rounded to bf16.

The scale pair is one ``prmt`` of the word that holds two bf16 scales.

All snippets are pure value computations (no side effects), so the compiler may schedule them.
"""

from __future__ import annotations

import cutlass
from cutlass import Int32
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T

# lop3 truth table of ``b ? (a ^ c) : c`` (a: the prmt result, b: the nibble mask, c: 0x4300 with
# the nibble's top bit set, which flips the sign bit of a two's-complement nibble)
FLIP_MERGE_LUT = 0x6A


def _pure_asm(ptx: str, constraints: str, args):
    return Int32(llvm.inline_asm(T.i32(), [Int32(a).ir_value() for a in args], ptx, constraints,
                                 has_side_effects=False, is_align_stack=False))


def byte_selector(j):
    """prmt selector of ``scaled_pair`` for byte ``j`` (a Python int, or an Int32 known at run time
    only): result bytes (w.j, w.j, hi.j, hi.j) (bytes 1 and 3 are masked off)."""
    return j * 0x1111 + 0x4400


def _scaled_pair_ptx(selector: str) -> str:
    """PTX of ``scaled_pair`` with the prmt selector ``selector`` (a constant or an operand)."""
    return ("{\n.reg .b32 t, one, bias, nz;\n"
            f"prmt.b32 t, $1, $2, {selector};\n"
            f"lop3.b32 t, t, 0x000F000F, 0x43084308, {FLIP_MERGE_LUT:#x};\n"
            "mov.b32 one, 0x3F803F80;\n"
            "mov.b32 bias, 0xC308C308;\n"
            "mov.b32 nz, 0x80008000;\n"
            "fma.rn.bf16x2 t, t, one, bias;\n"
            "fma.rn.bf16x2 $0, t, $3, nz;\n}")


def scaled_pair_ptx(j: int) -> str:
    """PTX of ``scaled_pair`` (``$0`` the result, ``$1 .. $3`` word, hi, scale2)."""
    return _scaled_pair_ptx(f"{byte_selector(j):#x}")


# byte j chosen at run time: the selector in $4 (``byte_selector``)
SCALED_BYTE_PTX = _scaled_pair_ptx("$4")


def scaled_pair(word: Int32, hi: Int32, scale2: Int32, j: cutlass.Constexpr) -> Int32:
    """bf16x2 ``(q_2j * s, q_2j+1 * s)`` from the packed ``word``, ``hi = word >> 4`` and the
    bf16 scale pair ``scale2 = (s, s)``."""
    return _pure_asm(scaled_pair_ptx(j), "=r,r,r,r", [word, hi, scale2])


def scaled_byte(word: Int32, hi: Int32, scale2: Int32, selector: Int32) -> Int32:
    """``scaled_pair`` of the byte that ``selector = byte_selector(j)`` picks."""
    return _pure_asm(SCALED_BYTE_PTX, "=r,r,r,r,r", [word, hi, scale2, selector])


SCALE_PAIR_PTX = "prmt.b32 $0, $1, 0, $2;"  # $2: selector 0x1010 (low scale) or 0x3232 (high)


def scale_pair(two_scales: Int32, which: Int32) -> Int32:
    """``(s, s)`` as bf16x2 from a word holding two bf16 scales; ``which`` 0 picks the low one."""
    return _pure_asm(SCALE_PAIR_PTX, "=r,r,r", [two_scales, 0x1010 + which * 0x2222])
