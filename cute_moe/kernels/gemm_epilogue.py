"""Epilogue pieces of the grouped GEMM: un-shuffle views of the accumulator tile and the FC1
activations, in float32.

The accumulator tile lives in shared memory as ``sC[n, p]`` (token row ``n``, prepared weight row
``p`` of the CTA's m-block, ``c_row_stride(bm)`` floats per token row). Prepared row ``p`` of a
32-row block holds row ``src(p) = 32*(p//32) + 4*(p%8) + (p%32)//8`` of the unshuffled matrix
(docs/internals.md), so unshuffled rows come back by a fixed gather:

* 8 consecutive unshuffled rows ``r = 8v + q`` (q = 4b + a, a < 4, b < 2) sit at
  ``p = plain_base(v) + 8a + b`` with ``plain_base(v) = 32*(v//4) + 2*(v%4)``: a (2, 4) view with
  strides (1, 8) (FC2 rows of H, Relu2 rows of I);
* 16 consecutive interleaved rows ``j = 16v + q`` (q = 4b + a, b < 4) of a gated FC1 sit at
  ``p = gated_base(v) + 8a + b`` with ``gated_base(v) = 32*(v//2) + 4*(v%2)``: a (4, 4) view; the
  up value of intermediate ``8v + i`` is ``q = 2i`` (a = 2(i%2), b = i//2), its gate ``q = 2i + 1``.

The SM90 instantiation also stores straight from its accumulators (``unshuffled_row``): a thread
holds prepared rows ``p`` and ``p + 8`` with ``(p % 32) // 8`` even, which are unshuffled rows
``r`` and ``r + 1`` (``r`` even): for FC2 / Relu2 two neighbouring output columns, for a gated FC1
the up (``r``) and gate (``r + 1``) halves of intermediate ``r / 2``.

Activations (float32, per local expert ``e``):

* Swiglu: ``silu(gate) * up = gate / (1 + exp(-gate)) * up``, the exponential and the reciprocal
  in their approximate forms (``ex2.approx``, ``rcp.approx``: about 1 ulp of float32, far below
  the bf16 rounding that follows; the IEEE ``rcp.rn`` adds a Newton step and a range check with
  an inlined slow path to each value, docs/gemm_notes.md);
* Swiglu with any of alpha / beta / limit given (GPT-OSS): ``up = clamp(up, -limit, limit)``,
  ``gate = min(gate, limit)``, ``gate * sigmoid(alpha * gate) * (up + beta)`` (alpha 1, beta 0,
  no clamp for the ones not given);
* Relu2: ``relu(x)^2``.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32

PLAIN_ROWS = 8  # unshuffled rows per epilogue vector (one 16-byte bf16 store)
GATED_ROWS = 16  # interleaved rows per vector of 8 intermediate values


def plain_view_layout():
    return cute.make_layout((2, 4), stride=(1, 8))


def gated_view_layout():
    return cute.make_layout((4, 4), stride=(1, 8))


@cute.jit
def plain_base(v: Int32) -> Int32:
    return 32 * (v // 4) + 2 * (v % 4)


@cute.jit
def gated_base(v: Int32) -> Int32:
    return 32 * (v // 2) + 4 * (v % 2)


def unshuffled_row(p):
    """Row of the unshuffled matrix that prepared row ``p`` holds (plain arithmetic: traced
    inside kernels, evaluated on ints by the CPU tests)."""
    return 32 * (p // 32) + 4 * (p % 8) + (p % 32) // 8


@cute.jit
def sigmoid(x: Float32) -> Float32:
    return cute.arch.rcp_approx(1.0 + cute.math.exp(-x, fastmath=True))


@cute.jit
def swiglu(up: Float32, gate: Float32) -> Float32:
    return gate * sigmoid(gate) * up


@cute.jit
def swiglu_oss(up: Float32, gate: Float32, alpha: Float32, beta: Float32, limit: Float32,
               has_alpha: cutlass.Constexpr, has_beta: cutlass.Constexpr, has_clamp: cutlass.Constexpr) -> Float32:
    u = up
    g = gate
    if cutlass.const_expr(has_clamp):
        u = cute.arch.fmin(cute.arch.fmax(u, -limit), limit)
        g = cute.arch.fmin(g, limit)
    ag = g
    if cutlass.const_expr(has_alpha):
        ag = alpha * g
    if cutlass.const_expr(has_beta):
        u = u + beta
    return g * sigmoid(ag) * u


@cute.jit
def relu2(x: Float32) -> Float32:
    r = cute.arch.fmax(x, Float32(0.0))
    return r * r
