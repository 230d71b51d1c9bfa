"""Weighted combine of the FC2 rows of each token, deterministic.

``out[t, :] = bf16( sum_{j=0..K-1, perm[t*K+j] >= 0} w[t, j] * gemm2_output[perm[t*K+j], :] )``

The sum runs in float32 in slot order ``j = 0 .. K-1`` (one fused multiply-add per slot), with a
single rounding to bf16 at the end; slots of non-local experts (``perm < 0``) are skipped and a
token without a local slot gets zeros. Each thread owns 8 consecutive columns (16-byte loads and
stores); a CTA covers ``THREADS * 8`` columns of one token, so the grid is (tokens, column
blocks) and no two threads write the same output: results are bitwise reproducible.
"""

from __future__ import annotations

import torch

import cutlass
import cutlass.cute as cute
import cuda.bindings.driver as cuda
from cutlass import Float32, Int32

from . import runtime

THREADS = 128
VEC = 8  # bf16 per 16-byte access
COLS_PER_CTA = THREADS * VEC


class CombineRows:
    """Compile-time: ``top_k`` and whether the weights are float32 (else bf16)."""

    def __init__(self, top_k: int, weights_f32: bool):
        self.top_k = top_k
        self.weights_f32 = weights_f32

    @cute.jit
    def __call__(self, rows_ptr: cute.Pointer, weights_ptr: cute.Pointer, perm_ptr: cute.Pointer,
                 out_ptr: cute.Pointer, num_tokens: Int32, num_rows: Int32, hidden_vecs: Int32,
                 use_pdl: Int32, stream: cuda.CUstream):
        """``use_pdl``: launch as a programmatic dependent of FC2, which lets it launch as soon as
        every FC2 CTA runs: the launch latency hides behind FC2 and each CTA waits at its start."""
        k = self.top_k
        row_stride = cute.assume(hidden_vecs * VEC, divby=VEC)
        # [rows, H / 8, 8]: the row stride is a multiple of 8 elements, so every 8-vector is
        # 16-byte aligned and loads as one 128-bit access.
        rows = cute.make_tensor(rows_ptr, cute.make_layout((num_rows, hidden_vecs, VEC),
                                                           stride=(row_stride, VEC, 1)))
        out = cute.make_tensor(out_ptr, cute.make_layout((num_tokens, hidden_vecs, VEC),
                                                         stride=(row_stride, VEC, 1)))
        pairs = cute.make_layout(num_tokens * k)
        self.kernel(rows, cute.make_tensor(weights_ptr, pairs), cute.make_tensor(perm_ptr, pairs), out,
                    hidden_vecs).launch(
            grid=[num_tokens, (hidden_vecs + THREADS - 1) // THREADS, 1], block=[THREADS, 1, 1],
            stream=stream, use_pdl=use_pdl)

    @cute.kernel
    def kernel(self, rows: cute.Tensor, weights: cute.Tensor, perm: cute.Tensor, out: cute.Tensor,
               hidden_vecs: Int32):
        t = cute.arch.block_idx()[0]
        v = cute.arch.block_idx()[1] * THREADS + cute.arch.thread_idx()[0]
        # The permutation and the weights come from the plan (or before it), complete before FC2
        # could launch this grid (FC1 waited for the plan before it let FC2 launch): read them
        # while FC2 runs, so that after the wait only the rows' round trip is left.
        slot_rows = [perm[t * self.top_k + j] for j in range(self.top_k)]
        slot_weights = [weights[t * self.top_k + j].to(Float32) for j in range(self.top_k)]
        cute.arch.griddepcontrol_wait()  # FC2's rows (a no-op without a programmatic launch)
        if v < hidden_vecs:
            acc = cute.make_rmem_tensor((VEC,), Float32)
            acc.fill(0.0)
            for j in cutlass.range_constexpr(self.top_k):
                row = slot_rows[j]
                if row >= 0:
                    w = slot_weights[j]
                    x = cute.make_rmem_tensor((VEC,), cutlass.BFloat16)
                    cute.autovec_copy(rows[row, v, None], x)
                    xf = x.load().to(Float32)
                    a = acc.load()
                    for i in cutlass.range_constexpr(VEC):
                        acc[i] = cute.math.fma(xf[i], w, a[i])
            res = cute.make_rmem_tensor((VEC,), cutlass.BFloat16)
            res.store(acc.load().to(cutlass.BFloat16))
            cute.autovec_copy(res, out[t, v, None])


def combine_example_args(weights_f32: bool = False):
    """Arguments that compile ``CombineRows`` without a GPU."""
    return (runtime.fake_ptr(torch.bfloat16, 16), runtime.fake_ptr(torch.float32 if weights_f32 else torch.bfloat16, 4 if weights_f32 else 2),
            runtime.fake_ptr(torch.int32, 4), runtime.fake_ptr(torch.bfloat16, 16), 1, 1, 1, 0,
            runtime.fake_stream())
