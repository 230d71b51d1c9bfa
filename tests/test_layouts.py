"""Layout transforms: exact inverses on random tensors, and agreement with expectations written
out by hand from the documented formulas (FlashInfer's maps, the 128x4 interleave, nibble order)."""

import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cute_moe import layouts as L

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.bfloat16, torch.float32, torch.uint8, torch.int32, torch.float8_e4m3fn]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Integer view of the same bytes, so equality is bit equality (NaN, -0.0 included)."""
    by_size = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.view(by_size[t.element_size()])


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _random(shape, dtype, gen):
    """Random bytes reinterpreted as ``dtype``: every bit pattern, NaNs and -0.0 included."""
    size = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, tuple(shape) + (size,), dtype=torch.uint8, generator=gen)
    return raw.view(dtype).squeeze(-1) if size > 1 else raw.squeeze(-1).view(dtype)


# ---------------------------------------------------------------------------------------------
# row shuffle

# Written out from FlashInfer's srcToDstBlk32RowMap / srcToDstBlk16RowMap tables.
MAP32 = [0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27,
         4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31]
MAP16 = [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]


def test_shuffle_maps_match_the_tables():
    assert list(L.shuffle_row_map(32)) == MAP32
    assert list(L.shuffle_row_map(16)) == MAP16
    assert L.shuffle_block_size(128) == 32 and L.shuffle_block_size(256) == 32
    assert L.shuffle_block_size(64) == 16


def test_shuffle_destination_rows_first_blocks():
    dst32 = L.shuffle_destination_rows(96, epilogue_tile_m=128).tolist()
    assert dst32[:32] == MAP32
    assert dst32[32:64] == [32 + v for v in MAP32]
    assert dst32[64:] == [64 + v for v in MAP32]
    dst16 = L.shuffle_destination_rows(32, epilogue_tile_m=64).tolist()
    assert dst16 == MAP16 + [16 + v for v in MAP16]


def test_shuffle_source_rows_invert_the_tables():
    # FlashInfer builds row_indices[new_row] = old_row with new_row = 32*(r//32) + map[r%32].
    for table, tile in ((MAP32, 128), (MAP16, 64)):
        b = len(table)
        m = 3 * b
        expected = [0] * m
        for r in range(m):
            expected[b * (r // b) + table[r % b]] = r
        assert L.shuffle_source_rows(m, epilogue_tile_m=tile).tolist() == expected
    # docs/internals.md: prepared row p of a 32-row block holds row 32*(p//32) + 4*(p%8) + (p%32)//8.
    assert L.shuffle_source_rows(64).tolist() == [32 * (p // 32) + 4 * (p % 8) + (p % 32) // 8 for p in range(64)]


@SETTINGS
@given(tile=st.sampled_from([64, 128]), blocks=st.integers(0, 5), k=st.integers(1, 9),
       lead=st.lists(st.integers(1, 3), max_size=2), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_shuffle_round_trip(tile, blocks, k, lead, dtype, seed):
    m = blocks * L.shuffle_block_size(tile)
    x = _random(lead + [m, k], dtype, torch.Generator().manual_seed(seed))
    y = L.shuffle_rows(x, tile)
    assert _same_bits(L.unshuffle_rows(y, tile), x)
    dst = L.shuffle_destination_rows(m, tile)
    for r in range(m):  # row r moved to dst[r]
        assert _same_bits(y[..., dst[r], :], x[..., r, :])


def test_shuffle_rejects_bad_rows():
    with pytest.raises(ValueError, match="num_rows"):
        L.shuffle_rows(torch.zeros(48, 4), 128)
    with pytest.raises(ValueError, match="num_rows"):
        L.shuffle_source_rows(24, 64)
    with pytest.raises(ValueError, match="epilogue_tile_m"):
        L.shuffle_source_rows(32, 0)
    with pytest.raises(ValueError, match="x"):
        L.shuffle_rows(torch.zeros(32), 128)
    with pytest.raises(ValueError, match="block_size"):
        L.shuffle_row_map(8)


# ---------------------------------------------------------------------------------------------
# gated interleave, half swap, combined FC1 map


def test_gated_interleave_small_example():
    x = torch.arange(8).view(8, 1)  # top half 0..3, bottom half 4..7
    assert L.interleave_gated_rows(x).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert L.gated_interleave_source_rows(8).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert L.gated_interleave_destination_rows(8).tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert L.FC1_HALVES == ("up", "gate") and L.CHECKPOINT_FC1_HALVES == ("gate", "up")


def test_reorder_w1w3_swaps_halves_of_weight_and_scale():
    w = torch.arange(12).view(6, 2)
    s = torch.arange(6).view(6, 1) * 10
    w2, s2 = L.reorder_w1w3_to_w3w1(w, s)
    assert w2[:, 0].tolist() == [6, 8, 10, 0, 2, 4]
    assert s2.flatten().tolist() == [30, 40, 50, 0, 10, 20]
    assert L.reorder_w1w3_to_w3w1(w)[1] is None
    w3, s3 = L.reorder_w3w1_to_w1w3(w2, s2)
    assert torch.equal(w3, w) and torch.equal(s3, s)
    # along another dim
    assert L.swap_halves(torch.arange(4).view(1, 4), dim=-1).tolist() == [[2, 3, 0, 1]]


@SETTINGS
@given(half=st.integers(0, 40), k=st.integers(1, 6), lead=st.lists(st.integers(1, 3), max_size=2),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_interleave_and_swap_round_trip(half, k, lead, dtype, seed):
    x = _random(lead + [2 * half, k], dtype, torch.Generator().manual_seed(seed))
    y = L.interleave_gated_rows(x)
    for i in range(half):
        assert _same_bits(y[..., 2 * i, :], x[..., i, :])
        assert _same_bits(y[..., 2 * i + 1, :], x[..., half + i, :])
    assert _same_bits(L.deinterleave_gated_rows(y), x)
    assert _same_bits(L.swap_halves(L.swap_halves(x)), x)


def test_odd_rows_rejected():
    with pytest.raises(ValueError, match="x"):
        L.interleave_gated_rows(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="x"):
        L.swap_halves(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="num_rows"):
        L.gated_interleave_source_rows(7)


@pytest.mark.parametrize("m", [32, 64, 256])
def test_fc1_source_rows_gated_formula(m):
    src = L.fc1_source_rows(m, gated=True).tolist()
    for p in range(m):
        j = 32 * (p // 32) + 4 * (p % 8) + (p % 32) // 8  # interleaved row
        assert src[p] == (j // 2 if j % 2 == 0 else m // 2 + j // 2)
    assert L.fc1_source_rows(m, gated=False).tolist() == L.shuffle_source_rows(m).tolist()
    dst = L.fc1_destination_rows(m, gated=True)
    assert torch.equal(dst[torch.tensor(src)], torch.arange(m))


# ---------------------------------------------------------------------------------------------
# BlockMajorK


@pytest.mark.parametrize("dtype,bk", [(torch.bfloat16, 64), (torch.uint8, 128), (torch.float32, 32)])
def test_block_major_element_formula(dtype, bk, seeded):
    m, k = 5, 3 * bk
    x = _random([m, k], dtype, seeded)
    y = L.to_block_major_k(x)
    assert y.shape == (k // bk, m, bk) and y.is_contiguous()
    assert L.block_k_elements(dtype) == bk
    for kb in range(k // bk):
        for row in range(m):
            assert _same_bits(y[kb, row], x[row, kb * bk:(kb + 1) * bk])


@SETTINGS
@given(m=st.integers(0, 9), kb=st.integers(1, 4), lead=st.lists(st.integers(1, 3), max_size=2),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_block_major_round_trip(m, kb, lead, dtype, seed):
    bk = L.block_k_elements(dtype)
    x = _random(lead + [m, kb * bk], dtype, torch.Generator().manual_seed(seed))
    y = L.to_block_major_k(x)
    assert tuple(y.shape) == tuple(lead) + (kb, m, bk)
    assert _same_bits(L.from_block_major_k(y), x)


def test_block_major_rejects_partial_block():
    with pytest.raises(ValueError, match="x: K = 96"):
        L.to_block_major_k(torch.zeros(4, 96, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="block_bytes"):
        L.to_block_major_k(torch.zeros(4, 64, dtype=torch.bfloat16), block_bytes=3)


# ---------------------------------------------------------------------------------------------
# 128x4 block-scale interleave


def _offset_by_hand(r, c, cols):
    # fp4Op.cpp computeSFIndex (SWIZZLED_128x4), typed out independently.
    padded_cols = (cols + 3) // 4 * 4
    return (c % 4 + (c // 4) * (4 * 128) + (r % 32) * 16 + ((r % 128) // 32) * 4
            + (r // 128) * (128 * padded_cols))


def test_interleave_hand_computed_positions():
    rows, cols = 130, 5  # padded to 256 x 8
    sf = torch.arange(1, rows * cols + 1, dtype=torch.int32).view(rows, cols).to(torch.bfloat16)
    out = L.block_scale_interleave(sf)
    assert out.shape == (256 * 8,) and out.dtype == torch.bfloat16
    literal = {(0, 0): 0, (0, 3): 3, (0, 4): 512, (1, 0): 16, (32, 0): 4, (33, 1): 21,
               (127, 3): 511, (128, 0): 1024, (129, 4): 1552, (96, 2): 14}
    for (r, c), pos in literal.items():
        assert _offset_by_hand(r, c, cols) == pos
        assert out[pos] == sf[r, c]
    hit = torch.zeros(out.numel(), dtype=torch.bool)
    for r in range(rows):
        for c in range(cols):
            pos = _offset_by_hand(r, c, cols)
            assert out[pos] == sf[r, c]
            hit[pos] = True
    assert bool((out[~hit] == 0).all())  # padding is zero
    assert torch.equal(L.interleaved_scale_offsets(rows, cols),
                       torch.tensor([[_offset_by_hand(r, c, cols) for c in range(cols)] for r in range(rows)]))


def test_interleave_experts_are_stacked():
    sf = torch.randint(0, 255, (3, 40, 6), dtype=torch.uint8)
    out = L.block_scale_interleave(sf)
    size = L.interleaved_scale_size(40, 6)
    assert size == 128 * 8 and out.shape == (3 * size,)
    for e in range(3):
        assert torch.equal(out[e * size:(e + 1) * size], L.block_scale_interleave(sf[e]))


@SETTINGS
@given(rows=st.integers(1, 300), cols=st.integers(1, 11), experts=st.sampled_from([None, 1, 2, 3]),
       dtype=st.sampled_from([torch.bfloat16, torch.uint8, torch.float8_e4m3fn]), seed=st.integers(0, 2**31))
def test_interleave_round_trip(rows, cols, experts, dtype, seed):
    shape = [rows, cols] if experts is None else [experts, rows, cols]
    sf = _random(shape, dtype, torch.Generator().manual_seed(seed))
    flat = L.block_scale_interleave(sf)
    size = L.interleaved_scale_size(rows, cols)
    assert flat.shape == ((experts or 1) * size,)
    back = L.block_scale_deinterleave(flat, rows, cols)
    expect = sf if (experts or 1) > 1 or experts is None else sf[0]
    assert _same_bits(back, expect)
    # [E, size] input keeps the leading dim
    assert _same_bits(L.block_scale_deinterleave(flat.view(-1, size), rows, cols), sf.reshape(-1, rows, cols))


def test_deinterleave_rejects_wrong_size():
    with pytest.raises(ValueError, match="swizzled"):
        L.block_scale_deinterleave(torch.zeros(100), 128, 4)
    with pytest.raises(ValueError, match="swizzled"):
        L.block_scale_deinterleave(torch.zeros(2, 600), 128, 4)
    with pytest.raises(ValueError, match="rows"):
        L.block_scale_deinterleave(torch.zeros(512), 0, 4)
    with pytest.raises(ValueError, match="sf"):
        L.block_scale_interleave(torch.zeros(4))


def test_mma_view_elements_and_inverse(seeded):
    e, rows, cols = 2, 200, 6  # padded 256 x 8
    sf = _random([e, rows, cols], torch.uint8, seeded)
    view = L.scale_mma_view(L.block_scale_interleave(sf), rows, cols, e)
    assert view.shape == (32, 4, 2, 4, 2, e)
    for _ in range(200):
        r0, r1, mt, c0, kt, ex = (int(torch.randint(0, n, (1,), generator=seeded)) for n in view.shape)
        r, c = 128 * mt + 32 * r1 + r0, 4 * kt + c0
        expected = sf[ex, r, c] if (r < rows and c < cols) else 0
        assert view[r0, r1, mt, c0, kt, ex] == expected
    storage = L.scale_mma_storage(view)
    assert storage.shape == (e, 256 * 8)
    assert torch.equal(L.block_scale_deinterleave(storage, rows, cols), sf)


# ---------------------------------------------------------------------------------------------
# int4 / uint4b8 / e2m1 packing and scale encodings


def test_int4_hand_built_bytes():
    q = torch.tensor([3, -2, -8, 7, 0, -1], dtype=torch.int8)
    # low nibble = even index, high nibble = odd index, two's complement
    assert L.pack_int4(q).tolist() == [0xE3, 0x78, 0xF0]
    assert L.unpack_int4(torch.tensor([0xE3, 0x78, 0xF0], dtype=torch.uint8)).tolist() == q.tolist()


def test_uint4b8_hand_built_words():
    q = torch.tensor([-8, -7, 0, 7, 1, -1, 3, -4], dtype=torch.int8)
    # q + 8 = 0, 1, 8, 15, 9, 7, 11, 4; value i at bits 4i
    assert L.pack_uint4b8(q).tolist() == [0x4B79F810]
    q_neg = torch.tensor([0, 0, 0, 0, 0, 0, 0, 7], dtype=torch.int8)  # top nibble 15: negative int32
    assert L.pack_uint4b8(q_neg).tolist() == [0xF8888888 - 2**32]
    words = torch.tensor([0x4B79F810], dtype=torch.int32)
    assert L.unpack_uint4b8(words).tolist() == q.tolist()
    # nibble ^ 8: bytes 0x10^0x88, 0xF8^0x88, 0x79^0x88, 0x4B^0x88
    assert L.uint4b8_to_int4(words).tolist() == [0x98, 0x70, 0xF1, 0xC3]
    assert L.uint4b8_to_int4(words).tolist() == L.pack_int4(q).tolist()


def _vllm_style_convert(words: torch.Tensor) -> torch.Tensor:
    """Per-nibble ``(nib - 8) & 0xF`` in place in the int32 words, then the words' bytes."""
    t = words.clone()
    for i in range(8):
        shift = 4 * i
        nib = (t >> shift) & 0xF
        t &= ~(0xF << shift)
        t |= ((nib - 8) & 0xF) << shift
    return t.view(torch.uint8)


@SETTINGS
@given(rows=st.integers(0, 6), words=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_int4_formats_round_trip_and_agree(rows, words, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(-8, 8, (rows, 8 * words), dtype=torch.int8, generator=gen)
    packed = L.pack_int4(q)
    w = L.pack_uint4b8(q)
    assert packed.shape == (rows, 4 * words) and w.shape == (rows, words)
    assert torch.equal(L.unpack_int4(packed), q)
    assert torch.equal(L.unpack_uint4b8(w), q)
    assert torch.equal(L.uint4b8_to_int4(w), packed)
    assert torch.equal(L.int4_to_uint4b8(packed), w)
    if sys.byteorder == "little":
        assert torch.equal(_vllm_style_convert(w), packed)
    raw = torch.randint(0, 256, (rows, 4 * words), dtype=torch.uint8, generator=gen)
    assert torch.equal(L.pack_nibbles(L.unpack_nibbles(raw)), raw)
    assert torch.equal(L.uint4b8_to_int4(L.int4_to_uint4b8(raw)), raw)


def test_packing_rejects_bad_input():
    with pytest.raises(ValueError, match="q"):
        L.pack_int4(torch.tensor([8, 0], dtype=torch.int8))
    with pytest.raises(TypeError, match="q"):
        L.pack_int4(torch.tensor([1, 0], dtype=torch.int32))
    with pytest.raises(ValueError, match="q"):
        L.pack_uint4b8(torch.zeros(7, dtype=torch.int8))
    with pytest.raises(TypeError, match="words"):
        L.uint4b8_to_int4(torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="packed"):
        L.int4_to_uint4b8(torch.zeros(6, dtype=torch.uint8))


def test_e2m1_codes():
    values = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    codes = torch.arange(16, dtype=torch.uint8)
    decoded = L.decode_e2m1(codes)
    assert decoded[:8].tolist() == values and decoded[8:].abs().tolist() == values
    assert bool(torch.signbit(decoded[8:]).all())
    assert torch.equal(L.encode_e2m1(decoded), codes)
    # ties go to the even code; beyond 6 saturates; sign from signbit
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.01, 7.0, 1e6, -0.0, -0.1, -2.6, 0.26])
    assert L.encode_e2m1(x).tolist() == [0, 2, 2, 4, 4, 6, 6, 7, 7, 7, 8, 8, 13, 1]
    # two codes per byte, low nibble first
    assert L.pack_nibbles(L.encode_e2m1(torch.tensor([1.0, -6.0]))).tolist() == [0x2 | (0xF << 4)]


def test_ue4m3_and_ue8m0():
    codes = torch.arange(0x7F, dtype=torch.uint8)  # every non-negative finite e4m3 value
    vals = L.decode_ue4m3(codes)
    assert torch.equal(L.encode_ue4m3(vals).view(torch.uint8), codes)
    assert L.decode_ue4m3(L.encode_ue4m3(torch.tensor([1000.0]))).item() == 448.0
    b = torch.arange(255, dtype=torch.uint8)
    pow2 = L.decode_ue8m0(b)
    assert pow2[127].item() == 1.0 and pow2[128].item() == 2.0 and pow2[0].item() == 2.0**-127
    assert torch.equal(L.encode_ue8m0(pow2), b)
    assert bool(torch.isnan(L.decode_ue8m0(torch.tensor([255], dtype=torch.uint8))).all())
    # rounded up to a power of two
    assert L.encode_ue8m0(torch.tensor([3.0, 4.0, 0.3, 0.0])).tolist() == [129, 129, 126, 0]
    with pytest.raises(ValueError, match="scale"):
        L.encode_ue8m0(torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="scale"):
        L.encode_ue4m3(torch.tensor([float("nan")]))


# ---------------------------------------------------------------------------------------------
# quantizers


def test_mxint4_quantizer(seeded):
    w = torch.randn(6, 128, generator=seeded) * 0.05
    w[0, :32] = 0.0  # an all-zero group
    packed, scales = L.quantize_mxint4(w)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 64)
    assert scales.dtype == torch.bfloat16 and scales.shape == (6, 4)
    q = L.unpack_int4(packed).float().view(6, 4, 32)
    g = w.view(6, 4, 32)
    expect_scale = torch.maximum(g.amax(-1) / 7, -g.amin(-1) / 8).to(torch.bfloat16)
    assert torch.equal(scales, expect_scale)
    s = scales.float().unsqueeze(-1)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    assert torch.equal(q, torch.where(s > 0, (g / safe).round().clamp(-8, 7), torch.zeros_like(g)))
    deq = L.dequantize_mxint4(packed, scales)
    assert torch.equal(deq, (q * s).view(6, 128))
    assert bool(((deq - w).abs() <= 0.5 * s.view(6, 4).repeat_interleave(32, 1) * 1.02 + 1e-12).all())
    assert bool((deq[0, :32] == 0).all())


def test_fp4_quantizers(seeded):
    w = torch.randn(4, 64, generator=seeded)
    packed, scales, g = L.quantize_nvfp4(w)
    assert packed.shape == (4, 32) and scales.shape == (4, 4) and scales.dtype == torch.float8_e4m3fn
    assert g.item() == pytest.approx(448 * 6 / w.abs().max().item(), rel=1e-6)
    deq = L.dequantize_nvfp4(packed, scales, g)
    rel = (deq - w).norm() / w.norm()
    assert rel < 0.15
    # decoding is exactly e2m1 * s / g
    vals = L.decode_e2m1(L.unpack_nibbles(packed)).view(4, 4, 16)
    assert torch.equal(deq, (vals * L.decode_ue4m3(scales).unsqueeze(-1)).view(4, 64) / g)
    packed, scales = L.quantize_mxfp4(w)
    assert packed.shape == (4, 32) and scales.shape == (4, 2) and scales.dtype == torch.uint8
    s = L.decode_ue8m0(scales)
    amax = w.view(4, 2, 32).abs().amax(-1)
    assert bool((s >= amax / 6).all()) and bool((s < amax / 3).all())  # the power of two at or above amax/6
    assert (L.dequantize_mxfp4(packed, scales) - w).norm() / w.norm() < 0.2
