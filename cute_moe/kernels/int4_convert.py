"""Signed int4 -> scaled bf16, two values per instruction chain (device functions).

A 32-bit word holds 8 signed int4 values, value ``j`` in bits ``[4j, 4j + 4)``. The pair
``(2j, 2j + 1)`` (the two nibbles of byte ``j``) becomes one bf16x2 register without any float
conversion instruction:

1. ``w = word ^ 0x88888888`` turns each signed nibble ``q`` into ``u = q + 8`` in [0, 16);
2. ``prmt`` puts byte ``j`` of ``w`` and byte ``j`` of ``w >> 4`` in the two 16-bit halves;
3. ``lop3``: ``(x & 0x000F000F) | 0x43004300`` is the bf16 pair ``(128 + u_lo, 128 + u_hi)``
   (0x4300 is 128.0, whose ulp is 1);
4. ``fma.rn.bf16x2``: ``x * 1 - 136 = q``, exact;
5. ``fma.rn.bf16x2``: ``q * s + (-0)`` with the scale pair ``(s, s)``: ``bf16(q * s)`` rounded
   once, the same value as ``float(q) * s`` rounded to bf16.

All snippets are pure value computations (no side effects), so the compiler may schedule them.
"""

from __future__ import annotations

import cutlass
from cutlass import Int32
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T

SIGN_FLIP = -0x77777778  # 0x88888888 as an int32


def _pure_asm(ptx: str, constraints: str, args):
    return Int32(llvm.inline_asm(T.i32(), [Int32(a).ir_value() for a in args], ptx, constraints,
                                 has_side_effects=False, is_align_stack=False))


def _pair_selector(j: int) -> int:
    """prmt selector: result bytes (w.j, w.j, hi.j, hi.j) (bytes 1 and 3 are masked off)."""
    return j | (j << 4) | ((4 + j) << 8) | ((4 + j) << 12)


def scaled_pair_ptx(j: int) -> str:
    """PTX of ``scaled_pair`` (``$0`` the result, ``$1 .. $3`` w, hi, scale2)."""
    return ("{\n.reg .b32 t, one, bias, nz;\n"
            f"prmt.b32 t, $1, $2, {_pair_selector(j):#x};\n"
            "lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA;\n"
            "mov.b32 one, 0x3F803F80;\n"
            "mov.b32 bias, 0xC308C308;\n"
            "mov.b32 nz, 0x80008000;\n"
            "fma.rn.bf16x2 t, t, one, bias;\n"
            "fma.rn.bf16x2 $0, t, $3, nz;\n}")


def scaled_pair(w: Int32, hi: Int32, scale2: Int32, j: cutlass.Constexpr) -> Int32:
    """bf16x2 ``(q_2j * s, q_2j+1 * s)`` from ``w = word ^ 0x88888888``, ``hi = w >> 4`` and the
    bf16 scale pair ``scale2 = (s, s)``."""
    return _pure_asm(scaled_pair_ptx(j), "=r,r,r,r", [w, hi, scale2])


def scale_pair(two_scales: Int32, which: Int32) -> Int32:
    """``(s, s)`` as bf16x2 from a word holding two bf16 scales; ``which`` 0 picks the low one."""
    s = (two_scales >> (16 * which)) & 0xFFFF
    return s | (s << 16)
