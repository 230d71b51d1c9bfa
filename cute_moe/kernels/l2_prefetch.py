"""Moving weight bytes from DRAM into L2 while a decode call waits (device functions).

At small T a call streams its routed experts' weights once, and DRAM idles while the one-CTA
plan lays out the tiles (~4 us before FC1 can start). The plan's launch carries extra CTAs that
recompute the routed ids and move the first bytes of those experts into L2 with
``cp.async.bulk.prefetch.L2`` (sm_90 and later: no destination, nothing to wait for), so that
FC1 finds them there. One CTA issues bulk prefetches at roughly 0.3 TB/s (8 MB from the plan's
own CTA delayed it by ~30 us), hence several CTAs.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Int32, Int64
from cutlass._mlir.dialects import llvm

PREFETCH_CHUNK = 64 * 1024  # bytes per prefetch instruction of an expert's prefix


def prefetch_l2(address: Int64, size: Int32):
    """Prefetch ``size`` bytes (a multiple of 16) at global ``address`` (16-byte aligned) into L2."""
    llvm.inline_asm(None, [Int64(address).ir_value(), Int32(size).ir_value()],
                    "cp.async.bulk.prefetch.L2.global [$0], $1;", "l,r", has_side_effects=True,
                    is_align_stack=False)


@cute.jit
def prefetch_expert_prefixes(first: Int32, stride: Int32, ids: cute.Tensor, num_pairs: Int32,
                             expert_offset: Int32, num_local: Int32, w1: Int64, w2: Int64, fc1_bytes: Int64,
                             fc2_bytes: Int64, share: Int32):
    """The first ``share`` bytes (a multiple of ``PREFETCH_CHUNK``) of the weights of each routed
    pair's local expert, in the order the GEMMs stream them: FC1's (k-block major, so its prefix
    is the first k-blocks of every row), then FC2's. Units of ``PREFETCH_CHUNK`` bytes, this
    thread takes units ``first, first + stride, ...``; ``ids``: the pairs' global expert ids."""
    per_pair = share // PREFETCH_CHUNK
    for u in cutlass.range(first, num_pairs * per_pair, stride):
        p = u // per_pair
        e = ids[p] - expert_offset
        if (e >= 0) & (e < num_local):
            offset = Int64(u - p * per_pair) * PREFETCH_CHUNK
            if offset < fc1_bytes:
                prefetch_l2(w1 + Int64(e) * fc1_bytes + offset, Int32(cutlass.min(fc1_bytes - offset, PREFETCH_CHUNK)))
            elif offset - fc1_bytes < fc2_bytes:
                offset2 = offset - fc1_bytes
                prefetch_l2(w2 + Int64(e) * fc2_bytes + offset2,
                            Int32(cutlass.min(fc2_bytes - offset2, PREFETCH_CHUNK)))
