"""Grouped GEMMs (FC1, FC2) with bf16 or MXINT4 prepared weights.

CPU: every variant compiles for sm_90a, sm_100a and sm_120a with ``mma.sync`` / ``ldmatrix`` /
``cp.async`` in its PTX and no local memory (the cubin's stack frame, EIATTR_FRAME_SIZE, is 0
bytes: ptxas puts spills there); selector, config and argument checks.
GPU: FC1 and FC2 separately against a float32 reference on fresh random inputs
(``||out - ref|| / ||ref|| <= 1e-2``, no NaN), outputs poisoned with NaN first: every routed row
is written, padding rows are not; CUDA graph replay with a new routing.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest
import torch
import torch.nn.functional as F

from cute_moe.enums import ActivationType
from cute_moe.kernels import runtime
from cute_moe.kernels.gemm_config import SMEM_LIMIT, WGMMA_INT4_A_SLOTS, WGMMA_INT4_REGISTER_BN, GemmConfig, \
    TileConfig
from cute_moe.kernels.grouped_gemm import GroupedGemm, example_args
from cute_moe.kernels.grouped_gemm_sm90 import WgmmaGroupedGemm
from cute_moe.select import BN_BY_ROWS, ENV_VARIANT, INT4_BN_BY_ROWS, TILES, select_config

REL_BOUND = 1e-2
SWIGLU, RELU2 = int(ActivationType.Swiglu), int(ActivationType.Relu2)

# --------------------------------------------------------------------------- compile checks (CPU)

# (name, kernel factory): one per schedule, epilogue family and weight format; tiles from the
# selector table.
VARIANTS = [
    ("fc1_micro_64x8_swiglu", lambda: GroupedGemm("fc1", TileConfig(64, 8, 4, 1, 8), "m_fastest")),
    ("fc1_static_128x32_swiglu_lora_oss", lambda: GroupedGemm("fc1", TileConfig(128, 32, 4, 1, 4), "tiles_fastest",
                                                              has_lora=True, has_alpha=True, has_beta=True,
                                                              has_clamp=True)),
    ("fc1_dynamic_128x128_relu2", lambda: GroupedGemm("fc1", TileConfig(128, 128, 2, 2, 3), "persistent",
                                                      activation=RELU2)),
    ("fc2_dynamic_256x128", lambda: GroupedGemm("fc2", TileConfig(256, 128, 4, 2, 3), "persistent")),
    ("fc2_micro_64x16", lambda: GroupedGemm("fc2", TileConfig(64, 16, 4, 1, 8), "m_fastest")),
    # the selector's FC1 micro tile where 64-row CTAs would leave SMs unevenly loaded (two warps)
    ("fc1_micro_32x8_swiglu", lambda: GroupedGemm("fc1", TileConfig(32, 8, 2, 1, 8), "m_fastest")),
    ("int4_fc1_micro_32x8_swiglu", lambda: GroupedGemm("fc1", TileConfig(32, 8, 2, 1, 8), "m_fastest",
                                                       weight_format="mxint4")),
    ("int4_fc1_micro_64x8_swiglu_lora_oss", lambda: GroupedGemm("fc1", TileConfig(64, 8, 4, 1, 8), "m_fastest",
                                                                has_lora=True, has_alpha=True, has_beta=True,
                                                                has_clamp=True, weight_format="mxint4")),
    ("int4_fc1_dynamic_128x64_swiglu", lambda: GroupedGemm("fc1", TileConfig(128, 64, 2, 2, 4), "persistent",
                                                           weight_format="mxint4")),
    ("int4_fc2_static_128x32", lambda: GroupedGemm("fc2", TileConfig(128, 32, 4, 1, 4), "tiles_fastest",
                                                   weight_format="mxint4")),
    ("int4_fc2_dynamic_256x128", lambda: GroupedGemm("fc2", TileConfig(256, 128, 4, 2, 3), "persistent",
                                                     weight_format="mxint4")),
    # b12x FP4 experts: FC1 with the per-expert output scale, gathered (w4a16) or permuted
    # (nvfp4, quantized) token rows, silu and relu2; FC2 with its scale
    ("fp4_fc1_micro_64x8_swiglu_scaled", lambda: GroupedGemm("fc1", TileConfig(64, 8, 4, 1, 8), "m_fastest",
                                                             weight_format="nvfp4", has_out_scale=True)),
    ("fp4_fc1_dynamic_128x64_relu2_permuted", lambda: GroupedGemm(
        "fc1", TileConfig(128, 64, 2, 2, 4), "persistent", activation=RELU2, weight_format="nvfp4",
        has_out_scale=True, gather_rows=False)),
    ("fp4_fc2_static_128x32_scaled", lambda: GroupedGemm("fc2", TileConfig(128, 32, 4, 1, 4), "tiles_fastest",
                                                         weight_format="nvfp4", has_out_scale=True)),
    ("fp4_fc2_dynamic_256x128_scaled", lambda: GroupedGemm("fc2", TileConfig(256, 128, 4, 2, 3), "persistent",
                                                           weight_format="nvfp4", has_out_scale=True)),
]
PTX_NEEDLES = ["mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", "cp.async.cg.shared.global",
               "cp.async.wait_group", "st.global.v4"]
LDMATRIX = "ldmatrix.sync.aligned"
# the int4 path adds 4-byte cp.async of the scale pairs and the lop3 / bf16x2-fma dequantization
INT4_PTX_NEEDLES = ["cp.async.ca.shared.global", "lop3.b32", "fma.rn.bf16x2"]
# FP4: the e2m1 / ue4m3 bit placement (no lop3: and / shl / or) and the exponent fix-up multiply
FP4_PTX_NEEDLES = ["cp.async.ca.shared.global", "prmt.b32", "fma.rn.bf16x2"]
# 4-bit weights, one warp along N: 8-byte loads of packed rows, dequantized into the A registers
# (no ldmatrix at all: B is read with 16-byte loads in the matching k order); wider warp grids
# store the dequantized k-block to shared memory and ldmatrix it
REGISTER_DEQUANT_NEEDLES = ["ld.shared.v2.b32", "ld.shared.v4.b32"]
SHARED_DEQUANT_NEEDLES = ["st.shared.v4", LDMATRIX]
STACK_BUDGET_BYTES = 0  # no spills, no local arrays


def cubin_resources(cubin: bytes) -> dict:
    """``{"regs": max registers, "frame": max stack frame bytes}`` over the cubin's kernels, read
    from the ELF ``.nv.info`` section (EIATTR_REGCOUNT 0x2f, EIATTR_FRAME_SIZE 0x11: entries
    ``(format 0x04, attribute, u16 size, u32 symbol, u32 value)``)."""
    shoff = struct.unpack_from("<Q", cubin, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", cubin, 0x3A)
    shstrndx = struct.unpack_from("<H", cubin, 0x3E)[0]
    sections = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * shentsize) for i in range(shnum)]
    names_at = sections[shstrndx][4]

    def name(sec):
        start = names_at + sec[0]
        return cubin[start:cubin.index(b"\0", start)].decode()

    found = {"regs": [], "frame": []}
    for sec in sections:
        if name(sec) != ".nv.info":
            continue
        body = cubin[sec[4]:sec[4] + sec[5]]
        i = 0
        while i < len(body):
            fmt, attr = body[i], body[i + 1]
            if fmt == 0x04:
                size = struct.unpack_from("<H", body, i + 2)[0]
                if attr in (0x2F, 0x11) and size == 8:
                    value = struct.unpack_from("<II", body, i + 4)[1]
                    found["regs" if attr == 0x2F else "frame"].append(value)
                i += 4 + size
            elif fmt == 0x01:
                i += 2
            else:
                i += 4
    if not found["regs"]:
        raise AssertionError("no EIATTR_REGCOUNT in the cubin")
    return {"regs": max(found["regs"]), "frame": max(found["frame"], default=0)}


@pytest.mark.compile
@pytest.mark.parametrize("arch", runtime.TARGET_ARCHS)
@pytest.mark.parametrize("name,make", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_variant_compiles_without_spills(arch, name, make):
    import cutlass.cute as cute

    kernel = make()
    compiled = cute.compile(kernel, *example_args(kernel.weight_format),
                            options=f"--gpu-arch {arch} --keep-ptx --keep-cubin --dump-dir {runtime._dump_dir()}")
    ptx = compiled.artifacts.PTX
    assert f".target {arch}" in ptx
    extra = {"bf16": [LDMATRIX], "mxint4": INT4_PTX_NEEDLES, "nvfp4": FP4_PTX_NEEDLES}[kernel.weight_format]
    if kernel.packed:
        extra = extra + (REGISTER_DEQUANT_NEEDLES if kernel.reg_dequant else SHARED_DEQUANT_NEEDLES)
        assert (LDMATRIX in ptx) != kernel.reg_dequant, f"{name} on {arch}: ldmatrix with register dequantization"
    for needle in PTX_NEEDLES + extra:
        assert needle in ptx, f"{name} on {arch}: '{needle}' missing from the PTX"
    assert ".local" not in ptx, f"{name} on {arch}: local memory in the PTX"
    res = cubin_resources(compiled.artifacts.CUBIN)
    assert res["frame"] <= STACK_BUDGET_BYTES, f"{name} on {arch}: {res['frame']} bytes of stack (spills)"
    assert res["regs"] <= 255


# SM90 instantiation: TMA + WGMMA, warp-specialized (one producer warpgroup, two MMA warpgroups)
WGMMA_VARIANTS = [
    ("wgmma_fc1_128x128_swiglu_lora_oss", lambda: WgmmaGroupedGemm(
        "fc1", TileConfig(128, 128, 8, 1, 4, "wgmma"), "persistent", has_lora=True, has_alpha=True, has_beta=True,
        has_clamp=True)),
    ("wgmma_fc1_128x64_relu2", lambda: WgmmaGroupedGemm("fc1", TileConfig(128, 64, 8, 1, 6, "wgmma"), "persistent",
                                                        activation=RELU2)),
    ("wgmma_fc2_128x128", lambda: WgmmaGroupedGemm("fc2", TileConfig(128, 128, 8, 1, 4, "wgmma"), "persistent")),
    ("wgmma_fc1_256x128_swiglu", lambda: WgmmaGroupedGemm("fc1", TileConfig(256, 128, 8, 1, 4, "wgmma"),
                                                          "persistent")),
    ("wgmma_fc2_256x128_s3", lambda: WgmmaGroupedGemm("fc2", TileConfig(256, 128, 8, 1, 3, "wgmma"), "persistent")),
    # the bf16 output tile fits next to a 4-stage 256x128 ring in two passes of 128 columns
    ("wgmma_fc2_256x128_s4", lambda: WgmmaGroupedGemm("fc2", TileConfig(256, 128, 8, 1, 4, "wgmma"), "persistent")),
    # 192-row token tiles: 12 gathered rows per producer thread (the wide-gather register split),
    # FC2's output tile in two passes
    ("wgmma_fc1_256x192_swiglu_oss", lambda: WgmmaGroupedGemm(
        "fc1", TileConfig(256, 192, 8, 1, 3, "wgmma"), "persistent", has_alpha=True, has_beta=True, has_clamp=True)),
    ("wgmma_fc2_256x192", lambda: WgmmaGroupedGemm("fc2", TileConfig(256, 192, 8, 1, 3, "wgmma"), "persistent")),
    # MXINT4: the producer cp.asyncs packed rows and scales, the MMA warpgroups dequantize
    ("wgmma_int4_fc1_256x128_swiglu_lora_oss", lambda: WgmmaGroupedGemm(
        "fc1", TileConfig(256, 128, 8, 1, 4, "wgmma"), "persistent", has_lora=True, has_alpha=True, has_beta=True,
        has_clamp=True, weight_format="mxint4")),
    ("wgmma_int4_fc1_128x64_relu2", lambda: WgmmaGroupedGemm("fc1", TileConfig(128, 64, 8, 1, 4, "wgmma"),
                                                             "persistent", activation=RELU2, weight_format="mxint4")),
    ("wgmma_int4_fc2_256x128", lambda: WgmmaGroupedGemm("fc2", TileConfig(256, 128, 8, 1, 3, "wgmma"), "persistent",
                                                        weight_format="mxint4")),
    # one MMA warpgroup of 128 rows (two m-repeats), two CTAs per SM
    ("wgmma_int4_fc1_128x128_1wg_swiglu", lambda: WgmmaGroupedGemm("fc1", TileConfig(128, 128, 4, 1, 3, "wgmma"),
                                                                  "persistent", weight_format="mxint4")),
    ("wgmma_int4_fc2_256x64", lambda: WgmmaGroupedGemm("fc2", TileConfig(256, 64, 8, 1, 4, "wgmma"), "persistent",
                                                       weight_format="mxint4")),
    # MXINT4 with 192-row token tiles: 12 gathered rows per producer thread next to the scales
    ("wgmma_int4_fc1_256x192_swiglu", lambda: WgmmaGroupedGemm("fc1", TileConfig(256, 192, 8, 1, 3, "wgmma"),
                                                               "persistent", weight_format="mxint4")),
    ("wgmma_int4_fc2_256x192", lambda: WgmmaGroupedGemm("fc2", TileConfig(256, 192, 8, 1, 3, "wgmma"), "persistent",
                                                        weight_format="mxint4")),
]
WGMMA_PTX_NEEDLES = ["wgmma.mma_async.sync.aligned.m64n", "wgmma.commit_group", "wgmma.wait_group",
                     "setmaxnreg.inc.sync.aligned.u32 \t{mma}", "setmaxnreg.dec.sync.aligned.u32 \t{producer}",
                     "cp.async.bulk.tensor.4d.shared::cta.global.tile.mbarrier::complete_tx::bytes",
                     "mbarrier.try_wait.parity", "atom.global.add.u32", "atom.global.acq_rel.add.u32"]  # the work queue
# token rows: gathered by the producer threads' cp.async (FC1), or FC2's contiguous rows as a
# second TMA box; the threads arrive on the slot's barrier where they load rows or MXINT4 scales
THREAD_LOADS_NEEDLES = ["cp.async.mbarrier.arrive.noinc", "fence.proxy.async.shared::cta"]
TMA_ROWS_NEEDLES = ["cp.async.bulk.tensor.3d.shared::cta.global.tile.mbarrier::complete_tx::bytes"]
# the epilogue: bulk row copies of the bf16 output tile, or (LoRA, or no room) the template's stores
BULK_STORE_NEEDLES = ["cp.async.bulk.global.shared::cta.bulk_group", "cp.async.bulk.wait_group.read",
                      "fence.proxy.async.shared::cta"]


@pytest.mark.compile
@pytest.mark.parametrize("name,make", WGMMA_VARIANTS, ids=[v[0] for v in WGMMA_VARIANTS])
def test_wgmma_variant_compiles_for_sm90(name, make):
    import cutlass.cute as cute

    kernel = make()
    compiled = cute.compile(kernel, *example_args(kernel.weight_format),
                            options=f"--gpu-arch sm_90a --keep-ptx --keep-cubin --dump-dir {runtime._dump_dir()}")
    ptx = compiled.artifacts.PTX
    # MXINT4: a 5-D TMA box of packed rows (32-byte quarters of the 128-byte blocks), cp.async of
    # the scales, the dequantized k-block stored by the MMA warpgroups and synced on a warpgroup's
    # named barrier
    needles = [n.replace(".4d.", ".5d.") for n in WGMMA_PTX_NEEDLES] + \
        ["cp.async.ca.shared.global", "lop3.b32"] if kernel.packed else WGMMA_PTX_NEEDLES
    if kernel.packed and not kernel.register_a:
        needles = needles + ["st.shared.v4"]
    needles = [n.format(mma=kernel.mma_regs, producer=kernel.producer_regs) for n in needles]
    needles = needles + (BULK_STORE_NEEDLES if kernel.bulk_store else ["st.global.v4"])
    needles = needles + (TMA_ROWS_NEEDLES if kernel.tma_tokens else []) + (
        THREAD_LOADS_NEEDLES if kernel.thread_loads else [])
    # one wgmma per width: the tile's, and the narrower ones of items with fewer token rows
    needles = needles + [f"wgmma.mma_async.sync.aligned.m64n{w}k16" for w in kernel.tail_widths + (kernel.bn,)]
    assert kernel.tma_tokens == (not kernel.is_fc1) and kernel.thread_loads == (kernel.is_fc1 or kernel.packed)
    assert ("cp.async.cg.shared.global" in ptx) == kernel.is_fc1, name
    for needle in needles:
        assert needle in ptx, f"{name}: '{needle}' missing from the PTX"
    assert ("cp.async.bulk.global" in ptx) == kernel.bulk_store, name
    assert "mma.sync" not in ptx and ".local" not in ptx
    # MXINT4 with bn <= 128: every wgmma takes A from four registers (the dequantized values), and
    # no warpgroup stores them to shared memory or syncs on them
    a_operands = set(re.findall(r"wgmma\.mma_async[^{]*\{[^}]*\}, (\{|%rd)", ptx))
    assert a_operands == ({"{"} if kernel.register_a else {"%rd"}), (name, a_operands)
    assert kernel.register_a == (kernel.packed and kernel.bn <= WGMMA_INT4_REGISTER_BN)
    dequant_syncs = re.findall(r"bar\.sync\s+%r\d+, 128;", ptx)  # barrier DEQUANT_BARRIER + warpgroup
    assert bool(dequant_syncs) == (kernel.packed and not kernel.register_a), name
    if kernel.register_a:
        assert "st.shared.v4" not in ptx, name
    res = cubin_resources(compiled.artifacts.CUBIN)
    assert res["frame"] <= STACK_BUDGET_BYTES, f"{name}: {res['frame']} bytes of stack (spills)"
    assert res["regs"] <= 168  # 384 threads on one SM before setmaxnreg redistributes


def test_wgmma_int4_a_slots_are_the_dequantized_layout():
    """The MXINT4 wgmma dequantizes with the template's ``dequantize_unit``, which writes row ``r``
    of slot ``s`` at element ``s * bm * 64 + r * 64`` under the 128-byte swizzle of byte addresses
    (``_swizzle``: Swizzle<3,4,3>); the wgmma reads the slots through ``make_smem_layout_a``: the
    two must be one layout."""
    import cutlass
    import cutlass.cute as cute
    import cutlass.utils
    import cutlass.utils.hopper_helpers as sm90_utils

    found = {}

    @cute.jit
    def describe():
        for bm, bn in ((256, 128), (256, 64), (128, 128)):
            a = sm90_utils.make_smem_layout_a(cutlass.utils.LayoutEnum.ROW_MAJOR, (bm, bn, 64), cutlass.BFloat16,
                                              WGMMA_INT4_A_SLOTS)
            found[bm, bn] = (str(a.inner), [(r, k, s, cute.crd2idx((r, k, s), a.outer))
                                            for r in range(0, bm, 5) for k in range(0, 64, 7)
                                            for s in range(WGMMA_INT4_A_SLOTS)])

    describe()
    for (bm, _), (swizzle, points) in found.items():
        assert swizzle == "S<3,4,3>"
        for r, k, s, idx in points:
            assert idx == s * bm * 64 + r * 64 + k, (bm, r, k, s, idx)


def test_wgmma_int4_dequantizes_the_rows_each_warpgroup_reads():
    """Each MMA warpgroup dequantizes exactly the weight rows its wgmmas read (no warpgroup waits
    for another's stores): ``warpgroup_row`` against the DSL's partition of the tiled wgmma."""
    from cute_moe.kernels.grouped_gemm_sm90 import warpgroup_row

    tables = mma_layout_tables("wgmma", "sm_90a")
    assert len(tables) == 3
    for name, per_warpgroup in tables.items():
        warpgroups, bm = map(int, name.split("x"))
        for wg, rows in enumerate(per_warpgroup):
            assert rows == sorted(warpgroup_row(wg, i, warpgroups) for i in range(bm // warpgroups)), (name, wg)


def test_wgmma_register_a_fragments_match_the_instruction_layout():
    """MXINT4 with A from registers: the value each MMA thread dequantizes into 32-bit register
    ``register_a_word(h, k8, rep, step)`` (row ``register_a_row``, k ``16 step + 2t + 8 k8`` and
    ``+ 1`` with ``t = lane % 4``) is the (row, k) the DSL's register-fed tiled wgmma reads there."""
    from cute_moe.kernels.grouped_gemm_sm90 import register_a_row, register_a_word

    tables = mma_layout_tables("wgmma_a", "sm_90a")
    assert len(tables) == 4
    for name, threads in tables.items():
        warpgroups, bm = map(int, name.split("x"))
        assert len(threads) == 128 * warpgroups
        for tid, values in enumerate(threads):
            wg, tl = divmod(tid, 128)
            reps = bm // (64 * warpgroups)
            assert len(values) == 8 * reps * 4
            for rep in range(reps):
                for step in range(4):
                    for k8 in range(2):
                        for h in range(2):
                            word = register_a_word(h, k8, rep, step, reps)
                            row = register_a_row(wg, tl, rep, h, warpgroups)
                            k = 16 * step + 2 * (tl % 4) + 8 * k8
                            assert values[2 * word] == [row, k] and values[2 * word + 1] == [row, k + 1], \
                                (name, tid, rep, step, k8, h)


@pytest.mark.parametrize("tile_rows", [16, 128])
def test_raster_visits_every_item_once_in_expert_groups(tile_rows):
    """The persistent schedules' raster over a plan: every (tile, m-block) item exactly once,
    and the items of one raster group (RASTER_TILES tiles of one expert at most, m-blocks
    slowest) contiguous, so a window of consecutive items shares weight blocks and token tiles."""
    from cute_moe.kernels.grouped_gemm import raster
    from cute_moe.plan import RASTER_TILES
    from cute_moe.reference import reference_plan

    gen = torch.Generator().manual_seed(3)
    ids = torch.stack([torch.randperm(39, generator=gen)[:4] for _ in range(300)]).int()
    ids = ids + (ids >= 7).int()
    ids[:200, 0] = 7  # one expert with more than RASTER_TILES tiles of 16 rows
    plan = reference_plan(ids, 4, 0, 40, tile_rows)
    num_tiles = int(plan.counters[0])
    info = plan.tile_info[:num_tiles].long()
    m_blocks = 3
    seen = [tuple(int(v) for v in raster(w, info, m_blocks)) for w in range(num_tiles * m_blocks)]
    assert sorted(seen) == [(t, mb) for t in range(num_tiles) for mb in range(m_blocks)]
    for w, (tile, mb) in enumerate(seen):
        first = int(info[tile, 3]) // RASTER_TILES
        size = int(info[tile, 3]) % RASTER_TILES + 1
        assert first * m_blocks <= w < (first + size) * m_blocks and size <= RASTER_TILES
        assert len({int(info[u, 0]) for u in range(first, first + size)}) == 1
        assert (tile - first, mb) == ((w - first * m_blocks) % size, (w - first * m_blocks) // size)
    assert (max(int(g) % RASTER_TILES + 1 for g in info[:, 3]) == RASTER_TILES) == (tile_rows == 16)


def test_wgmma_epilogue_takes_bulk_copies_where_the_tile_fits():
    """The bf16 output tile sits next to the ring: FC2 256x128 (66 KiB) fits a 3-stage ring in
    one pass, a 4-stage one in two passes of one m-repeat (128 columns) each, as does the 256x192
    FC2; a gated FC1 stores half the columns; LoRA keeps the float32 passes. Every wgmma tile of
    the selector takes the bulk epilogue, bf16 and MXINT4."""
    def make(op, stages, bn=128, **kw):
        return WgmmaGroupedGemm(op, TileConfig(256, bn, 8, 1, stages, "wgmma"), "persistent", **kw)

    def passes(kernel):
        assert kernel.bulk_store and kernel.pass_cols * kernel.bulk_passes == kernel.out_cols
        assert kernel.tile.smem_bytes - kernel.tile.epilogue_bytes + kernel.bn * kernel.out_stride <= SMEM_LIMIT
        return kernel.bulk_passes

    assert passes(make("fc2", 3)) == 1 and passes(make("fc2", 4)) == 2 and passes(make("fc2", 3, bn=192)) == 2
    assert passes(make("fc1", 4)) == 1 and passes(make("fc1", 3, bn=192)) == 1
    assert passes(make("fc1", 4, activation=RELU2)) == 2
    assert not make("fc1", 3, has_lora=True).bulk_store
    for (variant, bn), (fc1, fc2, _, _) in TILES["sm_90a"].items():
        if variant == "wgmma":
            for kind in ("bf16", "mxint4"):
                assert WgmmaGroupedGemm("fc1", fc1, "persistent", weight_format=kind).bulk_store, (fc1, kind)
                assert WgmmaGroupedGemm("fc2", fc2, "persistent", weight_format=kind).bulk_store, (fc2, kind)


def test_wgmma_bulk_epilogue_pairs_are_neighbouring_output_columns():
    """The SM90 bulk epilogue (``WgmmaGroupedGemm.store_rows``) takes accumulator values
    ``(c, 0, v)`` and ``(c, 1, v)`` as prepared rows ``p`` and ``p + 8`` of one token and writes
    them as unshuffled rows ``r``, ``r + 1`` (``r`` even: two output columns, or the up and gate
    halves of one intermediate): checked against the DSL's partition of the tiled wgmma and the
    layouts module's shuffle, every (row, token) of the tile written once. Accumulator m-repeat
    ``j`` holds unshuffled rows ``[j * rep_rows, (j + 1) * rep_rows)`` only, so a pass of whole
    m-repeats (``bulk_passes`` > 1) stores whole output columns."""
    from cute_moe.kernels.gemm_epilogue import unshuffled_row
    from cute_moe.layouts.row_shuffle import shuffle_source_rows

    tables = mma_layout_tables("wgmma_c", "sm_90a")
    assert len(tables) == 5
    for name, threads in tables.items():
        warpgroups, bm, bn = map(int, name.split("x"))
        rep_rows = 64 * warpgroups
        assert [unshuffled_row(p) for p in range(bm)] == shuffle_source_rows(bm).tolist()
        written = []
        for values in threads:
            per_rep = len(values) // (bm // rep_rows)  # values are listed m-repeat slowest
            for i in range(0, len(values), 4):  # (c, h) of one v: (0, 0), (1, 0), (0, 1), (1, 1)
                for c in range(2):
                    (p, n), (p8, n8) = values[i + c], values[i + 2 + c]
                    assert (p8, n8) == (p + 8, n), (name, p, n)
                    r = unshuffled_row(p)
                    assert r % 2 == 0 and unshuffled_row(p8) == r + 1, (name, p)
                    assert r // rep_rows == i // per_rep, (name, p, i)
                    written += [(r, n), (r + 1, n)]
        assert sorted(written) == [(r, n) for r in range(bm) for n in range(bn)], name


def test_wgmma_narrow_tail_accumulators_are_a_prefix_of_the_tile():
    """An item with fewer token rows runs the wgmma of width ``w`` < bn into a view of the bn-wide
    accumulators (``WgmmaGroupedGemm.narrow_mma``): value ``((c, h, v), rep)`` of the narrow MMA
    must be value ``((c, h, v), rep)`` of the full one for ``v < w / 8``, the same (row, token) of
    the same thread; the epilogue then reads the narrow values with the full tile's meaning."""
    tables = mma_layout_tables("wgmma_c", "sm_90a")
    for bn, widths in ((192, (64, 128)), (128, (64,))):
        assert WgmmaGroupedGemm("fc1", TileConfig(256, bn, 8, 1, 3, "wgmma"), "persistent").tail_widths == widths
        full = tables[f"2x256x{bn}"]
        for w in widths:
            narrow = tables[f"2x256x{w}"]
            for thread, (f_values, n_values) in enumerate(zip(full, narrow)):
                per_rep_full, per_rep_narrow = len(f_values) // 2, len(n_values) // 2  # two m-repeats
                prefix = [f_values[rep * per_rep_full + i] for rep in range(2) for i in range(per_rep_narrow)]
                assert prefix == n_values, (bn, w, thread)
                assert all(n < w for _, n in n_values)


def test_wgmma_register_split_fits_the_launch_registers(monkeypatch):
    """setmaxnreg.inc waits for registers the producer gave back: a split over the CTA's launch
    registers would never return, so it is refused at construction. A 192-row token tile takes
    the wide-gather split (12 gathered rows per producer thread)."""
    from cute_moe.kernels import grouped_gemm_sm90 as sm90

    for warpgroups, split in sm90.REGISTER_SPLIT.items():
        assert sm90.register_split_fits(warpgroups, *split)
    assert sm90.register_split_fits(2, *sm90.WIDE_GATHER_SPLIT)
    assert not sm90.register_split_fits(2, 48, 232)  # 128 * (48 + 2 * 232) = 65536 > 384 * 168
    wide = WgmmaGroupedGemm("fc1", TileConfig(256, 192, 8, 1, 3, "wgmma"), "persistent")
    assert (wide.producer_regs, wide.mma_regs) == sm90.WIDE_GATHER_SPLIT
    monkeypatch.setattr(sm90, "WIDE_GATHER_SPLIT", (48, 232))
    with pytest.raises(ValueError, match="launch registers"):
        WgmmaGroupedGemm("fc1", TileConfig(256, 192, 8, 1, 3, "wgmma"), "persistent")


def test_wgmma_is_sm90_bf16_or_mxint4_only():
    from cute_moe.gemm import fc1_kernel_key, gemm_kernel

    tile = TileConfig(128, 128, 8, 1, 4, "wgmma")
    for arch, kind in (("sm_100a", "bf16"), ("sm_120a", "bf16"), ("sm_100a", "mxint4"), ("sm_90a", "nvfp4")):
        with pytest.raises(ValueError, match="(?i)wgmma"):
            gemm_kernel(fc1_kernel_key(tile, "wgmma", SWIGLU, weight_kind=kind), arch)
        with pytest.raises(ValueError, match="(?i)wgmma"):
            select_config(num_tokens=4096, top_k=8, hidden_size=2048, intermediate_size=768, local_num_experts=128,
                          arch=arch, weight_kind=kind, variant="wgmma")
    with pytest.raises(ValueError, match="(?i)wgmma"):
        WgmmaGroupedGemm("fc1", tile, "persistent", weight_format="nvfp4")
    with pytest.raises(ValueError, match="bn > 16"):
        WgmmaGroupedGemm("fc1", TileConfig(128, 16, 8, 1, 4, "wgmma"), "persistent", weight_format="mxint4")
    with pytest.raises(ValueError, match="(?i)wgmma"):
        WgmmaGroupedGemm("fc1", TileConfig(128, 128, 2, 2, 3), "persistent")
    with pytest.raises(ValueError, match="(?i)wgmma"):
        TileConfig(64, 128, 8, 1, 3, "wgmma")  # two warpgroups need 128 or 256 weight rows
    with pytest.raises(ValueError, match="takes"):
        GemmConfig("dynamic", tile, tile)
    # other arches and NVFP4 never get wgmma from the selector
    kw = dict(num_tokens=16384, top_k=8, hidden_size=2048, intermediate_size=768, local_num_experts=128)
    assert select_config(arch="sm_90a", **kw).variant == "wgmma"
    assert select_config(arch="sm_90a", weight_kind="mxint4", **kw).variant == "wgmma"
    assert select_config(arch="sm_100a", weight_kind="mxint4", **kw).variant == "dynamic"
    assert select_config(arch="sm_120a", **kw).variant == "dynamic"
    assert select_config(arch="sm_90a", weight_kind="nvfp4", **kw).variant == "dynamic"
    with pytest.raises(ValueError, match="(?i)wgmma"):
        select_config(arch="sm_90a", weight_kind="nvfp4", variant="wgmma", **kw)


def test_nvfp4_selector_keeps_decode_tiles_together():
    """NVFP4 experts: micro up to 4 routed rows per expert, the tiles-fastest grid up to 16
    (measured: deepseek-v3 shape, 64 experts, T = 64: 934 us against 1217 for the persistent grid)."""
    kw = dict(top_k=8, hidden_size=7168, intermediate_size=2048, local_num_experts=64, weight_kind="nvfp4",
              arch="sm_90a")
    assert [select_config(num_tokens=t, **kw).variant for t in (1, 8, 32, 64, 128, 512)] == \
        ["micro", "micro", "micro", "static", "static", "dynamic"]


def test_mxint4_selector_keeps_decode_tiles_together():
    """MXINT4 experts: micro up to 8 routed rows per expert, then the tiles-fastest grid (up to 64
    rows, the persistent grid above), on SM90 the wgmma instantiation above 16 rows (measured:
    Kimi-K2 shape, 64 experts, T = 64: 733 us micro against 892 persistent; T = 256: 1218 wgmma
    against 1602 static)."""
    kw = dict(top_k=8, hidden_size=7168, intermediate_size=2048, local_num_experts=64, weight_kind="mxint4")
    for arch in ("sm_90a", "sm_100a", "sm_120a"):
        assert [select_config(num_tokens=t, arch=arch, **kw).variant for t in (1, 64, 128, 512, 1024)] == \
            ["micro", "micro", "static", "wgmma" if arch == "sm_90a" else "static",
             "wgmma" if arch == "sm_90a" else "dynamic"]
        # micro's token tile: 8 rows up to 4 per expert, then 16 (an expert's weights are
        # dequantized once per tile: Kimi-K2 T = 64, 8 rows, 650-668 us against 742-762 with 8)
        assert [select_config(num_tokens=t, arch=arch, **kw).tile_rows for t in (8, 32, 33, 64)] == [8, 8, 16, 16]
        bf16 = {**kw, "weight_kind": "bf16", "variant": "micro"}
        assert select_config(num_tokens=64, arch=arch, **bf16).tile_rows == 8  # bf16 keeps its band


def test_cubin_reader_rejects_a_cubin_without_register_counts():
    # a minimal ELF64 header with one empty section table entry: no .nv.info, no counts
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    struct.pack_into("<Q", header, 0x28, 64)
    struct.pack_into("<HHH", header, 0x3A, 64, 1, 0)
    blob = bytes(header) + bytes(64) + b"\0"
    with pytest.raises(AssertionError):
        cubin_resources(blob)


# --------------------------------------------------------------------------- selector and configs (CPU)


def test_selector_follows_routed_rows_per_expert(monkeypatch):
    monkeypatch.delenv(ENV_VARIANT, raising=False)
    kw = dict(top_k=8, hidden_size=2048, intermediate_size=768, local_num_experts=128, arch="sm_90a")
    decode = select_config(num_tokens=1, **kw)
    prefill = select_config(num_tokens=16384, **kw)
    assert decode.variant == "micro" and decode.tile_rows == 8 and decode.pdl
    # T=1: 24 m-blocks x 8 tiles of FC1 would leave 60 SMs with two CTAs: 32-row CTAs instead
    assert (decode.fc1.bm, decode.fc1.warps_m, decode.fc2.bm) == (32, 2, 64)
    assert select_config(num_tokens=2, **kw).fc1.bm == 64  # 384 CTAs of 64 rows
    assert select_config(num_tokens=1, weight_kind="mxint4", **kw).fc1.bm == 32
    assert select_config(num_tokens=1, **{**kw, "intermediate_size": 2880}).fc1.bm == 64
    assert prefill.variant == "wgmma" and prefill.tile_rows == 192 and not prefill.pdl
    assert select_config(num_tokens=8192, **{**kw, "arch": "sm_120a"}).fc1.fits("sm_120a")
    previous = 0
    for t in (1, 2, 8, 64, 256, 512, 1024):
        c = select_config(num_tokens=t, **kw)
        assert c.tile_rows >= previous, "token tile shrank as the load grew"
        previous = c.tile_rows
        assert c.fc1.bn == c.fc2.bn == c.tile_rows
    # SM90 above 4 rows per expert: wgmma; above 64 rows the measured token tile (select.py): 192
    # rows except at about 256 rows per expert (two tiles of 128); MXINT4 takes the 128-row tiles
    # (A from registers) up to 384 rows
    for t, variant in ((64, "micro"), (65, "wgmma"), (512, "wgmma")):
        assert select_config(num_tokens=t, **kw).variant == variant, t
    for t, bn, int4_bn in ((2048, 192, 128), (4096, 128, 128), (8192, 192, 192), (16384, 192, 192)):
        assert select_config(num_tokens=t, **kw).tile_rows == bn, t
        assert select_config(num_tokens=t, weight_kind="mxint4", **kw).tile_rows == int4_bn, t


def test_selector_forced_variant(monkeypatch):
    kw = dict(num_tokens=4096, top_k=8, hidden_size=2048, intermediate_size=768, local_num_experts=128, arch="sm_90a")
    monkeypatch.delenv(ENV_VARIANT, raising=False)
    assert select_config(variant="micro", **kw).variant == "micro"
    monkeypatch.setenv(ENV_VARIANT, "static")
    assert select_config(**kw).variant == "static"
    assert select_config(variant="dynamic", **kw).variant == "dynamic"  # the argument wins
    monkeypatch.setenv(ENV_VARIANT, "fast")
    with pytest.raises(ValueError, match=ENV_VARIANT):
        select_config(**kw)
    with pytest.raises(ValueError, match="variant"):
        select_config(variant="huge", **{k: v for k, v in kw.items()})


@pytest.mark.parametrize("arch", runtime.TARGET_ARCHS)
def test_every_table_tile_fits_its_arch(arch):
    for (variant, bn), (fc1, fc2, ctas, pdl) in TILES[arch].items():
        assert fc1.bn == fc2.bn == bn
        assert fc1.fits(arch) and fc2.fits(arch), f"{variant} bn={bn} does not fit {arch}"
        # every tile the selector can choose for 4-bit weights fits them
        if bn in {b for _, b in BN_BY_ROWS[variant] + INT4_BN_BY_ROWS.get(variant, ())}:
            assert fc1.fits(arch, int4=True) and fc2.fits(arch, int4=True), f"{variant} bn={bn} int4 exceeds {arch}"
        assert GemmConfig(variant, fc1, fc2, ctas, pdl).tile_rows == bn


def test_warmup_compiles_fc1_and_fc2_once():
    from cute_moe.gemm import warmup

    config = GemmConfig("micro", TileConfig(64, 8, 4, 1, 2), TileConfig(64, 8, 4, 1, 3))
    first = warmup([config], arch="sm_120a")
    assert len(first) == 2 and all(s > 0 for s in first.values())
    again = warmup([config, config], arch="sm_120a")
    assert set(again) == set(first)
    assert sum(again.values()) < 0.5 * sum(first.values())  # served from the kernel cache


def test_tile_config_rejects_bad_tiles():
    with pytest.raises(ValueError, match="bm"):
        TileConfig(96, 8, 4, 1, 4)
    with pytest.raises(ValueError, match="split"):
        TileConfig(64, 8, 2, 2, 4)  # 8 token rows over 2 warps of 8-column MMAs
    with pytest.raises(ValueError, match="shared memory"):
        TileConfig(128, 128, 2, 4, 12)
    with pytest.raises(ValueError, match="wgmma tiles only"):
        TileConfig(256, 192, 4, 2, 3)
    with pytest.raises(ValueError, match="bn must match"):
        GemmConfig("static", TileConfig(64, 8, 4, 1, 4), TileConfig(64, 16, 4, 1, 4))


def test_wrappers_reject_cpu_tensors():
    from cute_moe.gemm import grouped_gemm_fc1
    from cute_moe.reference import reference_plan

    ids = torch.randint(0, 4, (3, 2), dtype=torch.int32)
    plan = reference_plan(ids, 2, 0, 4, 8)
    config = select_config(num_tokens=3, top_k=2, hidden_size=128, intermediate_size=128, local_num_experts=4,
                           arch="sm_90a")
    w1 = torch.zeros(4, 2, 256, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="CUDA"):
        grouped_gemm_fc1(torch.zeros(3, 128, dtype=torch.bfloat16), plan, w1, top_k=2, intermediate_size=128,
                         activation_type=SWIGLU, config=config)


# --------------------------------------------------------------------------- GPU correctness

SHAPES = {"qwen3": (2048, 768), "gptoss": (2880, 2880), "dsv3": (7168, 2048), "relu2": (2048, 1024),
          "tiny": (64, 64)}


@dataclass(frozen=True)
class Case:
    shape: str
    experts: int  # E (global ids are drawn from [0, E))
    top_k: int
    tokens: int
    local: Optional[int] = None  # L (default E)
    offset: int = 0
    activation: int = SWIGLU
    variant: Optional[str] = None
    tile: Optional[Tuple] = None  # (variant, bn) of the selector table or (variant, fc1, fc2, ctas)
    routing: str = "uniform"  # uniform | hot (slot 0 -> one expert) | few (8 experts receive everything)
    lora: bool = False
    oss: Tuple[bool, bool, bool] = (False, False, False)  # alpha, beta, clamp given
    int4: bool = False  # MXINT4 weights

    @property
    def num_local(self) -> int:
        return self.local or self.experts

    def __str__(self):
        parts = [self.shape, f"E{self.experts}", f"L{self.num_local}@{self.offset}", f"k{self.top_k}",
                 f"T{self.tokens}", self.routing]
        if self.variant:
            parts.append(self.variant)
        if self.tile and len(self.tile) == 2:
            parts.append(f"{self.tile[0]}{self.tile[1]}")
        elif self.tile:
            parts.append(f"{self.tile[0]}:{self.tile[1].tag}:{self.tile[2].tag}")
        if self.activation == RELU2:
            parts.append("relu2")
        if self.lora:
            parts.append("lora")
        if any(self.oss):
            parts.append("oss" + "".join("abc"[i] for i in range(3) if self.oss[i]))
        if self.int4:
            parts.append("mxint4")
        return "-".join(parts)


CASES = [
    *[Case("qwen3", 128, 8, t) for t in (1, 3, 16, 128, 1000, 4096)],
    *[Case("qwen3", 64, 4, 200, tile=key) for key in sorted(TILES["sm_90a"])],
    *[Case("gptoss", 32, 4, 700, tile=(v, TileConfig(*a), TileConfig(*b), c)) for v, a, b, c in (
        ("dynamic", (256, 128, 4, 2, 3), (256, 128, 4, 2, 2), 1),
        ("dynamic", (128, 128, 2, 2, 3), (128, 128, 2, 2, 3), 2),
        ("static", (128, 128, 2, 2, 3), (128, 128, 2, 2, 3), 1),
        ("micro", (128, 8, 4, 1, 6), (128, 8, 4, 1, 6), 1))],
    *[Case("gptoss", 32, 4, t, variant=v, oss=(True, True, True)) for t in (1, 128, 1000)
      for v in ("micro", "static", "dynamic")],
    Case("gptoss", 32, 4, 64, oss=(True, False, False)),
    Case("gptoss", 32, 4, 300, oss=(False, True, True), lora=True),
    *[Case("dsv3", 256, 8, t, local=16, offset=32) for t in (1, 64, 1000)],
    Case("dsv3", 64, 8, 333, local=16, offset=48, variant="dynamic"),
    Case("qwen3", 128, 8, 1000, routing="hot"),
    Case("qwen3", 128, 8, 512, routing="hot", variant="static"),
    Case("qwen3", 64, 6, 100, routing="few"),
    Case("qwen3", 128, 8, 128, lora=True),
    Case("qwen3", 128, 8, 2, lora=True, variant="micro"),
    Case("qwen3", 16, 1, 16),
    Case("qwen3", 16, 1, 3000, variant="dynamic"),
    Case("qwen3", 40, 3, 777, local=10, offset=30, variant="static"),
    *[Case("relu2", 16, 2, t, activation=RELU2) for t in (3, 1000)],
    Case("relu2", 16, 2, 200, activation=RELU2, variant="micro"),
    # MXINT4: scales of several 128-row tiles and experts, every variant, the FC1 epilogue options
    *[Case("qwen3", 64, 8, t, int4=True, variant=v) for t in (1, 200, 1000)
      for v in ("micro", "static", "dynamic", "wgmma")],
    Case("qwen3", 16, 8, 700, int4=True, routing="hot", variant="wgmma"),
    Case("qwen3", 64, 8, 300, int4=True, lora=True, oss=(True, True, True), variant="wgmma"),
    *[Case("dsv3", 256, 8, t, local=16, offset=32, int4=True) for t in (1, 64, 1000)],
    Case("qwen3", 64, 8, 128, int4=True, lora=True, oss=(True, True, True)),
    Case("qwen3", 128, 8, 1000, routing="hot", int4=True),
    # 32-row micro tiles (two warps): bf16 and MXINT4, the FC1 epilogue options, a hot expert, K = 64
    *[Case(shape, 32, 4, t, int4=int4, routing=r, lora=lora, oss=(lora,) * 3,
           tile=("micro", TileConfig(32, bn, 2, 1, 8), TileConfig(32, bn, 2, 1, 8), 1))
      for shape, int4 in (("gptoss", False), ("qwen3", True)) for bn in (8, 16)
      for t, r, lora in ((1, "uniform", False), (5, "uniform", True), (40, "hot", False))],
    Case("tiny", 8, 2, 3, tile=("micro", TileConfig(32, 8, 2, 1, 8), TileConfig(32, 8, 2, 1, 8), 1)),
    # SM90 wgmma: partial m-blocks (H = 2880, M = 64 < bm), the smallest K, EP slices, hot / few experts
    *[Case("qwen3", 128, 8, t, variant="wgmma") for t in (1, 3, 128, 1000, 4096)],
    *[Case("gptoss", 32, 4, t, variant="wgmma", oss=(True, True, True)) for t in (1, 1000)],
    *[Case("dsv3", 256, 8, t, local=16, offset=32, variant="wgmma") for t in (1, 1000)],
    Case("qwen3", 128, 8, 2000, routing="hot", variant="wgmma"),
    Case("qwen3", 64, 6, 100, routing="few", variant="wgmma"),
    Case("qwen3", 128, 8, 700, lora=True, variant="wgmma"),
    *[Case("relu2", 16, 2, t, activation=RELU2, variant="wgmma") for t in (3, 1000)],
    *[Case("tiny", 8, 2, t, activation=a, variant="wgmma") for t in (1, 300) for a in (SWIGLU, RELU2)],
    Case("tiny", 8, 2, 300),
    *[Case(shape, 32, 4, t, tile=("wgmma", TileConfig(*a, mma="wgmma"), TileConfig(*a, mma="wgmma"), c))
      for shape, t in (("gptoss", 700), ("tiny", 300)) for a, c in (
          ((256, 128, 8, 1, 3), 1), ((256, 128, 8, 1, 4), 1), ((64, 128, 4, 1, 3), 2), ((256, 64, 8, 1, 5), 1),
          ((128, 128, 4, 1, 3), 1), ((256, 192, 8, 1, 3), 1))],
    # MXINT4 on wgmma: A from registers (bn <= 128: one or two m-repeats per warpgroup, one
    # warpgroup of 128 rows) and from the shared-memory slots (bn = 192); a hot expert
    *[Case("qwen3", 32, 4, t, int4=True, routing=r,
           tile=("wgmma", TileConfig(*a, mma="wgmma"), TileConfig(*a, mma="wgmma"), c))
      for t, r in ((700, "uniform"), (300, "hot"))
      for a, c in (((256, 128, 8, 1, 4), 1), ((256, 128, 8, 1, 3), 1), ((128, 128, 4, 1, 3), 2),
                   ((128, 64, 8, 1, 4), 1), ((256, 64, 8, 1, 5), 1), ((256, 192, 8, 1, 3), 1))],
]

_WEIGHTS = {}


def _weights(shape: str, local: int, activation: int, int4: bool = False):
    """Canonical weights (bf16, or the float32 dequantization of MXINT4) and their prepared forms
    (``(weights, scales)`` pairs for MXINT4, scales None for bf16), one shape resident at a time."""
    from cute_moe.prepare import dequantize_mxint4, prepare_bf16_moe_weights, prepare_mxint4_moe_weights, \
        quantize_mxint4

    key = (shape, local, activation, int4)
    if key not in _WEIGHTS:
        _WEIGHTS.clear()
        h, i = SHAPES[shape]
        m = 2 * i if activation == SWIGLU else i
        w1 = (torch.randn(local, m, h, device="cuda") * h ** -0.5).to(torch.bfloat16)
        w2 = (torch.randn(local, h, i, device="cuda") * i ** -0.5).to(torch.bfloat16)
        if int4:
            (q1, s1), (q2, s2) = quantize_mxint4(w1), quantize_mxint4(w2)
            g1, g1s, g2, g2s = prepare_mxint4_moe_weights(q1, s1, q2, s2)
            _WEIGHTS[key] = (dequantize_mxint4(q1, s1), dequantize_mxint4(q2, s2), (g1, g1s), (g2, g2s))
        else:
            g1, g2 = prepare_bf16_moe_weights(w1, w2, activation)
            _WEIGHTS[key] = (w1, w2, (g1, None), (g2, None))
    return _WEIGHTS[key]


def _routing(case: Case) -> torch.Tensor:
    t, k, e = case.tokens, case.top_k, case.experts
    if case.routing == "few":
        pool = torch.randperm(e, device="cuda")[:8]
        ids = pool[torch.rand(t, 8, device="cuda").argsort(dim=1)[:, :k]]
    else:
        ids = torch.rand(t, e, device="cuda").argsort(dim=1)[:, :k]
    if case.routing == "hot":
        hot = case.offset + 5
        # slot 0 of every token goes to the hot expert; a token that already had it swaps it out
        clash = (ids[:, 1:] == hot)
        ids[:, 1:] = torch.where(clash, ids[:, :1].expand_as(ids[:, 1:]), ids[:, 1:])
        ids[:, 0] = hot
    return ids.to(torch.int32)


def _config(case: Case) -> GemmConfig:
    h, i = SHAPES[case.shape]
    if "wgmma" in (case.variant, case.tile and case.tile[0]) and runtime.arch_of_device() != "sm_90a":
        pytest.skip("the wgmma instantiation runs on SM90")
    if case.tile is not None and len(case.tile) == 4:
        return GemmConfig(*case.tile)
    if case.tile is not None:
        fc1, fc2, ctas, pdl = TILES["sm_90a"][case.tile]
        return GemmConfig(case.tile[0], fc1, fc2, ctas, pdl)
    return select_config(num_tokens=case.tokens, top_k=case.top_k, hidden_size=h, intermediate_size=i,
                         local_num_experts=case.num_local, device=torch.device("cuda"), variant=case.variant,
                         weight_kind="mxint4" if case.int4 else "bf16", activation_type=case.activation)


def _rows_of(plan):
    """(row, local expert, expanded index) of every routed permuted row, and the padding rows of
    tiles (read back on the host: test only)."""
    num_tiles = int(plan.counters[0])
    info = plan.tile_info[:num_tiles].long().cpu()
    rows, experts, pads = [], [], []
    for e, first, n, _ in info.tolist():
        rows.append(torch.arange(first, first + n))
        experts.append(torch.full((n,), e))
        pads.append(torch.arange(first + n, first + plan.shape.tile_rows))
    cat = lambda xs: torch.cat(xs).cuda() if xs else torch.empty(0, dtype=torch.long, device="cuda")  # noqa: E731
    rows, experts, pads = cat(rows), cat(experts), cat(pads)
    return rows, experts, plan.permuted_idx_to_expanded_idx[rows].long(), pads


def _compare(out: torch.Tensor, ref: torch.Tensor, record, what: str):
    out, ref = out.float(), ref.float()
    assert not torch.isnan(out).any(), f"{what}: NaN in routed rows (unwritten or NaN result)"
    diff = out - ref
    rel = (diff.norm() / ref.norm().clamp_min(1e-30)).item() if ref.numel() else 0.0
    max_abs = diff.abs().max().item() if ref.numel() else 0.0
    record(rel, max_abs, gemm=what)
    assert rel <= REL_BOUND, f"{what}: rel err {rel:.3e} > {REL_BOUND}"


def _activation_ref(h: torch.Tensor, case: Case, alpha, beta, limit, experts) -> torch.Tensor:
    if case.activation == RELU2:
        return torch.relu(h) ** 2
    i = h.shape[1] // 2
    up, gate = h[:, :i], h[:, i:]
    if not any(case.oss):
        return F.silu(gate) * up
    pick = lambda v, default: v[experts].unsqueeze(1) if v is not None else default  # noqa: E731
    a, b, c = pick(alpha, 1.0), pick(beta, 0.0), pick(limit, None)
    if c is not None:
        up = torch.minimum(torch.maximum(up, -c), c)
        gate = torch.minimum(gate, c)
    return gate * torch.sigmoid(a * gate) * (up + b)


def _run_case(case: Case, record):
    from cute_moe.gemm import grouped_gemm_fc1, grouped_gemm_fc2
    from cute_moe.reference import reference_plan

    h, i = SHAPES[case.shape]
    w1, w2, (g1, g1s), (g2, g2s) = _weights(case.shape, case.num_local, case.activation, case.int4)
    config = _config(case)
    ids = _routing(case)
    plan = reference_plan(ids, case.top_k, case.offset, case.num_local, config.tile_rows)
    x = torch.randn(case.tokens, h, device="cuda").to(torch.bfloat16)
    rows, experts, expanded, pads = _rows_of(plan)
    p = plan.shape.max_padded_rows
    n = case.num_local
    alpha = (1.0 + torch.rand(n, device="cuda")) if case.oss[0] else None
    beta = torch.rand(n, device="cuda") if case.oss[1] else None
    limit = (0.5 + torch.rand(n, device="cuda")) if case.oss[2] else None
    m = w1.shape[1]
    delta = (0.5 * torch.randn(case.tokens, case.top_k, m, device="cuda")).to(torch.bfloat16) if case.lora else None

    act = torch.full((p, i), float("nan"), dtype=torch.bfloat16, device="cuda")
    grouped_gemm_fc1(x, plan, g1, gemm1_weights_scale=g1s, top_k=case.top_k, intermediate_size=i,
                     activation_type=case.activation, config=config, gemm1_alpha=alpha, gemm1_beta=beta,
                     gemm1_clamp_limit=limit, gemm1_lora_delta=delta, out=act)
    # FC2 on a fresh random input in the same plan rows, so it is checked independently of FC1
    act_in = torch.randn(p, i, device="cuda").to(torch.bfloat16)
    y = torch.full((p, h), float("nan"), dtype=torch.bfloat16, device="cuda")
    grouped_gemm_fc2(act_in, plan, g2, gemm2_weights_scale=g2s, hidden_size=h, config=config, out=y)
    torch.cuda.synchronize()

    tokens = expanded // case.top_k
    h1 = torch.empty(rows.numel(), m, device="cuda")
    y_ref = torch.empty(rows.numel(), h, device="cuda")
    for e in experts.unique().tolist():
        sel = experts == e
        h1[sel] = x[tokens[sel]].float() @ w1[e].float().T
        y_ref[sel] = act_in[rows[sel]].float() @ w2[e].float().T
    if delta is not None:
        h1 = h1 + delta.reshape(-1, m)[expanded].float()
    act_ref = _activation_ref(h1, case, alpha, beta, limit, experts)
    _compare(act[rows], act_ref, record, "fc1")
    _compare(y[rows], y_ref, record, "fc2")
    assert torch.isnan(act[pads].float()).all(), "FC1 stored a padding row"
    assert torch.isnan(y[pads].float()).all(), "FC2 stored a padding row"


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=str)
def test_fc1_fc2_match_float_reference(case, record_error):
    _run_case(case, record_error)


@pytest.mark.gpu
@pytest.mark.parametrize("variant,pdl", [("micro", True), ("static", False), ("dynamic", True), ("wgmma", True)])
def test_cuda_graph_replays_with_new_routing(variant, pdl, record_error):
    from cute_moe.gemm import grouped_gemm_fc1, grouped_gemm_fc2
    from cute_moe.reference import reference_plan

    case = Case("qwen3", 64, 8, 96, variant=variant)
    h, i = SHAPES[case.shape]
    w1, w2, (g1, _), (g2, _) = _weights(case.shape, case.num_local, case.activation)
    config = dataclasses.replace(_config(case), pdl=pdl)
    x = torch.randn(case.tokens, h, device="cuda").to(torch.bfloat16)
    plan = reference_plan(_routing(case), case.top_k, 0, case.num_local, config.tile_rows)
    p = plan.shape.max_padded_rows
    act = torch.empty(p, i, dtype=torch.bfloat16, device="cuda")
    y = torch.empty(p, h, dtype=torch.bfloat16, device="cuda")

    def step():
        grouped_gemm_fc1(x, plan, g1, top_k=case.top_k, intermediate_size=i, activation_type=SWIGLU,
                         config=config, out=act)
        grouped_gemm_fc2(act, plan, g2, hidden_size=h, config=config, out=y)

    step()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(2):
        new = reference_plan(_routing(case), case.top_k, 0, case.num_local, config.tile_rows)
        for name in ("expert_counts", "expert_offsets", "expanded_idx_to_permuted_idx",
                     "permuted_idx_to_expanded_idx", "tile_info", "counters"):
            getattr(plan, name).copy_(getattr(new, name))
        x.copy_(torch.randn_like(x, dtype=torch.float32).to(torch.bfloat16))
        act.fill_(float("nan"))
        y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        rows, experts, expanded, _ = _rows_of(plan)
        tokens = expanded // case.top_k
        y_ref = torch.empty(rows.numel(), h, device="cuda")
        for e in experts.unique().tolist():
            sel = experts == e
            a = F.silu(x[tokens[sel]].float() @ w1[e, i:].float().T) * (x[tokens[sel]].float() @ w1[e, :i].float().T)
            y_ref[sel] = a.to(torch.bfloat16).float() @ w2[e].float().T
        _compare(y[rows], y_ref, record_error, "fc1+fc2")


@pytest.mark.gpu
@pytest.mark.parametrize("variant,tokens", [("micro", 1), ("static", 300), ("dynamic", 2000)])
def test_programmatic_launch_chain(variant, tokens, record_error):
    """FC1 -> FC2 launched as programmatic dependents: FC2 streams weights before FC1 ends and
    must still read FC1's finished act."""
    from cute_moe.gemm import grouped_gemm_fc1, grouped_gemm_fc2
    from cute_moe.reference import reference_plan

    case = Case("qwen3", 128, 8, tokens, variant=variant)
    h, i = SHAPES[case.shape]
    w1, w2, (g1, _), (g2, _) = _weights(case.shape, case.num_local, case.activation)
    config = dataclasses.replace(_config(case), pdl=True)
    plan = reference_plan(_routing(case), case.top_k, 0, case.num_local, config.tile_rows)
    x = torch.randn(tokens, h, device="cuda").to(torch.bfloat16)
    p = plan.shape.max_padded_rows
    act = torch.full((p, i), float("nan"), dtype=torch.bfloat16, device="cuda")
    y = torch.full((p, h), float("nan"), dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        grouped_gemm_fc1(x, plan, g1, top_k=case.top_k, intermediate_size=i, activation_type=SWIGLU,
                         config=config, out=act)
        grouped_gemm_fc2(act, plan, g2, hidden_size=h, config=config, out=y)
    torch.cuda.synchronize()
    rows, experts, expanded, _ = _rows_of(plan)
    tokens_of = expanded // case.top_k
    act_ref = torch.empty(rows.numel(), i, device="cuda")
    y_ref = torch.empty(rows.numel(), h, device="cuda")
    for e in experts.unique().tolist():
        sel = experts == e
        h1 = x[tokens_of[sel]].float() @ w1[e].float().T
        act_ref[sel] = F.silu(h1[:, i:]) * h1[:, :i]
        y_ref[sel] = act[rows[sel]].float() @ w2[e].float().T  # FC2 of the act FC1 wrote
    _compare(act[rows], act_ref, record_error, "fc1")
    _compare(y[rows], y_ref, record_error, "fc2")


# --------------------------------------------------------------------------- SM120 block-scaled FP4 (CPU)

BLOCK_SCALED_PTX = ["mma.sync.aligned.kind::mxf4nvf4.block_scale.scale_vec::4X.m16n8k64.row.col.f32.e2m1.e2m1.f32.ue4m3",
                    "cp.async.cg.shared.global", "cp.async.ca.shared.global", "st.global.v4"]


def _block_scaled_tiles():
    """Every tile the nvfp4 selector can pick on sm_120a, with its schedule."""
    from cute_moe.kernels.gemm_config import SCHEDULE_OF_VARIANT
    from cute_moe.select import _SM120_FP4_TILES, BN_BY_ROWS

    tiles = {}
    for variant in ("micro", "static", "dynamic"):
        for _, bn in BN_BY_ROWS[variant]:
            fc1, fc2, _, _ = _SM120_FP4_TILES[(variant, bn)]
            tiles[(fc1, SCHEDULE_OF_VARIANT[variant])] = None
            tiles[(fc2, SCHEDULE_OF_VARIANT[variant])] = None
    return list(tiles)


@pytest.mark.compile
@pytest.mark.parametrize("tile,schedule", _block_scaled_tiles(), ids=lambda v: getattr(v, "tag", v))
def test_block_scaled_fp4_compiles_for_sm120(tile, schedule):
    """FC1 (silu; relu2 on the first tile) and FC2 of every selectable tile: the block-scaled MMA in
    the PTX, no local memory, no stack."""
    import cutlass.cute as cute

    from cute_moe.kernels.grouped_gemm_sm120 import BlockScaledGroupedGemm

    for op, act in (("fc1", SWIGLU), ("fc1", RELU2), ("fc2", SWIGLU)):
        if act == RELU2 and tile.bm != 64:
            continue
        kernel = BlockScaledGroupedGemm(op, tile, schedule, activation=act)
        compiled = cute.compile(kernel, *example_args("nvfp4", packed_tokens=True),
                                options=f"--gpu-arch sm_120a --keep-ptx --keep-cubin --dump-dir {runtime._dump_dir()}")
        ptx = compiled.artifacts.PTX
        for needle in BLOCK_SCALED_PTX:
            assert needle in ptx, f"{op} {tile.tag}: '{needle}' missing from the PTX"
        assert ".local" not in ptx and "mma.sync.aligned.m16n8k16" not in ptx
        res = cubin_resources(compiled.artifacts.CUBIN)
        assert res["frame"] <= STACK_BUDGET_BYTES and res["regs"] <= 255, f"{op} {tile.tag}: {res}"


def mma_layout_tables(kind: str, arch: str) -> dict:
    """tests/mma_layouts.py's tables for ``kind`` ("fp4" or "bf16"), computed in a subprocess for ``arch``."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    out = subprocess.run([sys.executable, str(here / "mma_layouts.py"), kind], capture_output=True, text=True,
                         env=dict(os.environ, CUTE_DSL_ARCH=arch), cwd=here, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_register_dequant_fragments_match_the_instruction_layouts():
    """The lane-to-k mapping of the register-dequantizing mainloop (4-bit weights, one warp along
    N) is one reduction order for A and B: for every MMA step and every MMA k, the weight pair in
    A and the token pair in B cover the same k of the k-block, the rows are the lane's ``g`` and
    ``g + 8``, the 4 steps cover the 64 k once, and the accumulators are the instruction's."""
    from cute_moe.kernels.grouped_gemm import register_a_pair, register_b_pair, register_pair_k

    tables = mma_layout_tables("bf16", "sm_90a")
    for kk in range(4):
        order = {}  # MMA k -> k of the k-block
        for lane in range(32):
            g, t = lane // 4, lane % 4
            for v, (m, k_mma) in enumerate(tables["A"][lane]):
                h, q = register_a_pair(kk, v // 2)
                assert m == g + 8 * h, ("A row", lane, v)
                assert order.setdefault(k_mma, (t, register_pair_k(t, q) + v % 2)) == (t, register_pair_k(t, q) + v % 2)
            for v, (n, k_mma) in enumerate(tables["B"][lane]):
                assert n == g, ("B row", lane, v)
                assert order[k_mma] == (t, register_pair_k(t, register_b_pair(kk, v // 2)) + v % 2), ("B k", lane, v)
            for i, (m, n) in enumerate(tables["C"][lane]):
                assert (m, n) == (g + 8 * (i // 2), 2 * t + i % 2), ("C", lane, i)
        assert sorted(order) == list(range(16))
        tables.setdefault("steps", []).append(sorted(k for _, k in order.values()))
    assert sorted(k for step in tables["steps"] for k in step) == list(range(64))


def test_block_scaled_fragments_match_the_instruction_layouts():
    """The fragment functions the SM120 kernel loads and stores with agree, lane by lane and value
    by value, with the DSL's thread-value layouts of the m16n8k64 block-scaled MMA (A, B, C and the
    scale operands), computed in a subprocess for sm_120a."""
    from cute_moe.kernels.grouped_gemm_sm120 import a_fragment, b_fragment, c_fragment, sfa_row, sfb_row

    tables = mma_layout_tables("fp4", "sm_120a")
    for lane in range(32):
        for v, (m, k) in enumerate(tables["A"][lane]):  # 8 consecutive k per register, low nibble first
            row, byte = a_fragment(lane, v // 8)
            assert (m, k) == (row, 2 * byte + v % 8), ("A", lane, v)
        for v, (n, k) in enumerate(tables["B"][lane]):
            row, byte = b_fragment(lane, v // 8)
            assert (n, k) == (row, 2 * byte + v % 8), ("B", lane, v)
        for v, (m, n) in enumerate(tables["C"][lane]):
            assert (m, n) == c_fragment(lane, v), ("C", lane, v)
        assert {m for m, _ in tables["SFA"][lane]} == {sfa_row(lane)}
        assert sorted(k for _, k in tables["SFA"][lane]) == list(range(64))  # the whole k-block: one word
        assert {n for n, _ in tables["SFB"][lane]} == {sfb_row(lane)}
        assert sorted(k for _, k in tables["SFB"][lane]) == list(range(64))


def test_block_scaled_runs_nvfp4_on_sm120_only():
    from cute_moe.gemm import fc1_kernel_key, fc2_kernel_key, gemm_kernel

    tile = TileConfig(64, 8, 4, 1, 8)
    for arch, kind in (("sm_90a", "nvfp4"), ("sm_100a", "nvfp4"), ("sm_120a", "mxint4")):
        with pytest.raises(ValueError, match="block-scaled"):
            gemm_kernel(fc2_kernel_key(tile, "micro", kind, has_out_scale=True, token_rows="fp4"), arch)
    with pytest.raises(ValueError, match="token_rows"):
        fc1_kernel_key(tile, "micro", SWIGLU, weight_kind="nvfp4", token_rows="packed")
