"""Prints, as JSON, where the DSL's description of a warp MMA puts every (lane, value) of its
operands; tests/test_grouped_gemm.py compares the tables with the fragment functions the kernels
load and store with.

* ``python mma_layouts.py fp4`` (``CUTE_DSL_ARCH=sm_120a``: the op exists for that arch only):
  SM120's block-scaled m16n8k64 MMA (``MmaMXF4NVF4Op``): A, B, C, SFA and SFB;
* ``python mma_layouts.py bf16``: the m16n8k16 bf16 MMA of every arch (``MmaF16BF16Op``): A, B, C;
* ``python mma_layouts.py wgmma`` (``CUTE_DSL_ARCH=sm_90a``): the weight rows each MMA warpgroup of
  the SM90 instantiation's tiled wgmma reads from shared memory, per (warpgroups, bm);
* ``python mma_layouts.py wgmma_a`` (``CUTE_DSL_ARCH=sm_90a``): per (warpgroups, bm) and MMA thread, the
  (row, k) of each value of the register-fed tiled wgmma's A fragment, in its flat value order;
* ``python mma_layouts.py wgmma_c`` (``CUTE_DSL_ARCH=sm_90a``): per (warpgroups, bm, bn) and MMA
  thread, the (row, token) of each accumulator value ``((c, h, v), rep, col)``, in that index order.
"""

import json
import sys

import cutlass
import cutlass.cute as cute
import cutlass.utils.blackwell_helpers as helpers

TABLES = {}


def _table(layout, threads, values, rows):
    """(lane, value) -> (row, column) of the (rows x cols) tile the layout indexes column-major."""
    return [[[cute.crd2idx((lane, v), layout) % rows, cute.crd2idx((lane, v), layout) // rows]
             for v in range(values)] for lane in range(threads)]


@cute.jit
def describe_fp4():
    op = cute.nvgpu.warp.MmaMXF4NVF4Op(cutlass.Float4E2M1FN, cutlass.Float32, cutlass.Float8E4M3FN)
    atom = cute.make_mma_atom(op)
    tiled = cute.make_tiled_mma(op, cute.make_layout((1, 1, 1)), permutation_mnk=(16, 8, 64))
    TABLES["A"] = _table(atom.tv_layout_A, 32, 32, 16)  # (m, k), 32 values: 4 registers of 8
    TABLES["B"] = _table(atom.tv_layout_B, 32, 16, 8)  # (n, k)
    TABLES["C"] = _table(atom.tv_layout_C, 32, 4, 16)  # (m, n)
    TABLES["SFA"] = _table(helpers.get_layoutSFA_TV(tiled), 32, 64, 16)  # (m, k) the lane's scales cover
    TABLES["SFB"] = _table(helpers.get_layoutSFB_TV(tiled), 32, 64, 8)


@cute.jit
def describe_bf16():
    atom = cute.make_mma_atom(cute.nvgpu.warp.MmaF16BF16Op(cutlass.BFloat16, cutlass.Float32, (16, 8, 16)))
    TABLES["A"] = _table(atom.tv_layout_A, 32, 8, 16)  # (m, k), 8 values: 4 registers of 2
    TABLES["B"] = _table(atom.tv_layout_B, 32, 4, 8)  # (n, k)
    TABLES["C"] = _table(atom.tv_layout_C, 32, 4, 16)  # (m, n)


@cute.jit
def describe_wgmma():
    import cutlass.utils.hopper_helpers as sm90_utils

    for warpgroups, bm in ((2, 256), (2, 128), (1, 128)):
        tiled = sm90_utils.make_trivial_tiled_mma(
            cutlass.BFloat16, cutlass.BFloat16, cute.nvgpu.OperandMajorMode.K, cute.nvgpu.OperandMajorMode.K,
            cutlass.Float32, (warpgroups, 1, 1), tiler_mn=(64, 64))
        rows = cute.make_identity_tensor((bm, 64))
        TABLES[f"{warpgroups}x{bm}"] = [sorted({part[i][0] for i in range(cute.size(part))})
                                        for part in (tiled.get_slice(128 * wg).partition_A(rows)
                                                     for wg in range(warpgroups))]


@cute.jit
def describe_wgmma_a():
    import cutlass.utils.hopper_helpers as sm90_utils

    for warpgroups, bm in ((2, 256), (2, 128), (1, 128), (1, 64)):
        tiled = sm90_utils.make_trivial_tiled_mma(
            cutlass.BFloat16, cutlass.BFloat16, cute.nvgpu.OperandMajorMode.K, cute.nvgpu.OperandMajorMode.K,
            cutlass.Float32, (warpgroups, 1, 1), tiler_mn=(64, 64), a_source=cute.nvgpu.warpgroup.OperandSource.RMEM)
        parts = [tiled.get_slice(t).partition_A(cute.make_identity_tensor((bm, 64))) for t in range(128 * warpgroups)]
        TABLES[f"{warpgroups}x{bm}"] = [[list(part[i]) for i in range(cute.size(part))] for part in parts]


@cute.jit
def describe_wgmma_c():
    import cutlass.utils.hopper_helpers as sm90_utils

    for warpgroups, bm, bn in ((2, 256, 128), (2, 256, 192), (2, 256, 64), (2, 128, 64), (1, 64, 128)):
        tiled = sm90_utils.make_trivial_tiled_mma(
            cutlass.BFloat16, cutlass.BFloat16, cute.nvgpu.OperandMajorMode.K, cute.nvgpu.OperandMajorMode.K,
            cutlass.Float32, (warpgroups, 1, 1), tiler_mn=(64, bn))
        parts = [tiled.get_slice(t).partition_C(cute.make_identity_tensor((bm, bn)))
                 for t in range(128 * warpgroups)]
        shape = (cute.size(parts[0], mode=[0]) // 4, cute.size(parts[0], mode=[1]), cute.size(parts[0], mode=[2]))
        TABLES[f"{warpgroups}x{bm}x{bn}"] = [
            [list(part[((c, h, v), rep, col)]) for rep in range(shape[1]) for col in range(shape[2])
             for v in range(shape[0]) for h in range(2) for c in range(2)] for part in parts]


if __name__ == "__main__":
    {"fp4": describe_fp4, "bf16": describe_bf16, "wgmma": describe_wgmma, "wgmma_a": describe_wgmma_a,
     "wgmma_c": describe_wgmma_c}[sys.argv[1]]()
    print(json.dumps(TABLES))
