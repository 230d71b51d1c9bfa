"""Prints, as JSON, where the DSL's description of SM120's block-scaled m16n8k64 MMA
(``MmaMXF4NVF4Op``) puts every (lane, value) of A, B, C, SFA and SFB: run with
``CUTE_DSL_ARCH=sm_120a`` (the op exists for that arch only). tests/test_grouped_gemm.py compares
the tables with the fragment functions of cute_moe/kernels/grouped_gemm_sm120.py."""

import json

import cutlass
import cutlass.cute as cute
import cutlass.utils.blackwell_helpers as helpers

TABLES = {}


def _table(layout, threads, values, rows):
    """(lane, value) -> (row, column) of the (rows x cols) tile the layout indexes column-major."""
    return [[[cute.crd2idx((lane, v), layout) % rows, cute.crd2idx((lane, v), layout) // rows]
             for v in range(values)] for lane in range(threads)]


@cute.jit
def describe():
    op = cute.nvgpu.warp.MmaMXF4NVF4Op(cutlass.Float4E2M1FN, cutlass.Float32, cutlass.Float8E4M3FN)
    atom = cute.make_mma_atom(op)
    tiled = cute.make_tiled_mma(op, cute.make_layout((1, 1, 1)), permutation_mnk=(16, 8, 64))
    TABLES["A"] = _table(atom.tv_layout_A, 32, 32, 16)  # (m, k), 32 values: 4 registers of 8
    TABLES["B"] = _table(atom.tv_layout_B, 32, 16, 8)  # (n, k)
    TABLES["C"] = _table(atom.tv_layout_C, 32, 4, 16)  # (m, n)
    TABLES["SFA"] = _table(helpers.get_layoutSFA_TV(tiled), 32, 64, 16)  # (m, k) the lane's scales cover
    TABLES["SFB"] = _table(helpers.get_layoutSFB_TV(tiled), 32, 64, 8)


if __name__ == "__main__":
    describe()
    print(json.dumps(TABLES))
