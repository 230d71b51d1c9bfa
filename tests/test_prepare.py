"""Weight preparation: bit-exact prepare -> unprepare round trips for every entry point, prepared
elements checked against the documented per-element formulas, and argument checks."""

import pytest
import torch

from cute_moe import layouts as L
from cute_moe import prepare as P
from cute_moe.enums import ActivationType


def _bits(t):
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _random_bf16(shape, gen):
    """Every bf16 bit pattern is possible (NaN, inf, -0.0): preparation only moves bytes."""
    return torch.randint(-2**15, 2**15, shape, dtype=torch.int16, generator=gen).view(torch.bfloat16)


def _prepared_row_source(p, m, gated):
    """Canonical row held by prepared row ``p`` (32-row shuffle, then the gated interleave)."""
    j = 32 * (p // 32) + 4 * (p % 8) + (p % 32) // 8
    if not gated:
        return j
    return j // 2 if j % 2 == 0 else m // 2 + j // 2


# ---------------------------------------------------------------------------------------------
# bf16


@pytest.mark.parametrize("act,tile", [(ActivationType.Swiglu, 128), (ActivationType.Relu2, 128),
                                      (ActivationType.Swiglu, 64), (int(ActivationType.Relu2), 64)])
@pytest.mark.parametrize("e,h,i", [(1, 64, 64), (3, 128, 192), (2, 320, 128)])
def test_bf16_round_trip(act, tile, e, h, i, seeded):
    m = 2 * i if ActivationType(act).is_gated else i
    w1 = _random_bf16((e, m, h), seeded)
    w2 = _random_bf16((e, h, i), seeded)
    g1, g2 = P.prepare_bf16_moe_weights(w1, w2, act, epilogue_tile_m=tile)
    assert g1.shape == (e, h // 64, m, 64) and g2.shape == (e, i // 64, h, 64)
    assert g1.dtype == g2.dtype == torch.bfloat16 and g1.is_contiguous() and g2.is_contiguous()
    b1, b2 = P.unprepare_bf16_moe_weights(g1, g2, act, epilogue_tile_m=tile)
    assert _same_bits(b1, w1) and _same_bits(b2, w2)


@pytest.mark.parametrize("act", [ActivationType.Swiglu, ActivationType.Relu2])
def test_bf16_prepared_elements(act, seeded):
    e, h, i = 2, 128, 64
    gated = act.is_gated
    m = 2 * i if gated else i
    w1 = _random_bf16((e, m, h), seeded)
    w2 = _random_bf16((e, h, i), seeded)
    g1, g2 = P.prepare_bf16_moe_weights(w1, w2, act)
    for p in range(m):
        r = _prepared_row_source(p, m, gated)
        for kb in range(h // 64):
            assert _same_bits(g1[:, kb, p], w1[:, r, 64 * kb:64 * kb + 64])
    for p in range(h):
        r = _prepared_row_source(p, h, False)
        for kb in range(i // 64):
            assert _same_bits(g2[:, kb, p], w2[:, r, 64 * kb:64 * kb + 64])
    if gated:  # prepared row 0 is up row 0, prepared row 1 (interleaved row 4) is up row 2
        assert _same_bits(g1[:, 0, 0], w1[:, 0, :64]) and _same_bits(g1[:, 0, 1], w1[:, 2, :64])
        # prepared row 8 is interleaved row 1: gate row 0
        assert _same_bits(g1[:, 0, 8], w1[:, i, :64])


def test_bf16_rejects_bad_inputs():
    w1 = torch.zeros(2, 128, 64, dtype=torch.bfloat16)
    w2 = torch.zeros(2, 64, 64, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="gemm1: expected dtype torch.bfloat16, got torch.float32"):
        P.prepare_bf16_moe_weights(w1.float(), w2)
    with pytest.raises(ValueError, match="gemm2"):
        P.prepare_bf16_moe_weights(w1, w2[:, :, :32])
    with pytest.raises(ValueError, match="gemm1: expected 64 rows"):
        P.prepare_bf16_moe_weights(w1, w2, ActivationType.Relu2)
    with pytest.raises(ValueError, match="gemm1"):
        P.prepare_bf16_moe_weights(w1[0], w2)
    with pytest.raises(ValueError, match="gemm2: K = I = 96"):
        P.prepare_bf16_moe_weights(torch.zeros(2, 192, 64, dtype=torch.bfloat16),
                                   torch.zeros(2, 64, 96, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="gemm1: rows M = 48"):
        P.prepare_bf16_moe_weights(torch.zeros(1, 48, 64, dtype=torch.bfloat16),
                                   torch.zeros(1, 64, 48, dtype=torch.bfloat16), ActivationType.Relu2)
    with pytest.raises(ValueError, match="activation_type"):
        P.prepare_bf16_moe_weights(w1, w2, 99)
    with pytest.raises(ValueError, match="epilogue_tile_m"):
        P.prepare_bf16_moe_weights(w1, w2, epilogue_tile_m=-1)
    with pytest.raises(ValueError, match="gemm2_weights"):
        P.unprepare_bf16_moe_weights(torch.zeros(2, 1, 128, 64, dtype=torch.bfloat16),
                                     torch.zeros(2, 1, 64, 32, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="gemm1_weights: expected last dim 64"):
        P.unprepare_bf16_moe_weights(torch.zeros(2, 1, 128, 32, dtype=torch.bfloat16),
                                     torch.zeros(2, 1, 64, 64, dtype=torch.bfloat16))


# ---------------------------------------------------------------------------------------------
# MXINT4


def _mxint4_checkpoint(e, h, i, gen):
    """Random signed int4 values and bf16 scales in checkpoint order ([gate; up])."""
    q1 = torch.randint(-8, 8, (e, 2 * i, h), dtype=torch.int8, generator=gen)
    q2 = torch.randint(-8, 8, (e, h, i), dtype=torch.int8, generator=gen)
    s1 = _random_bf16((e, 2 * i, h // 32), gen)
    s2 = _random_bf16((e, h, i // 32), gen)
    return q1, s1, q2, s2


@pytest.mark.parametrize("e,h,i", [(1, 256, 256), (3, 512, 256), (2, 256, 512)])
def test_mxint4_vllm_contract_round_trip(e, h, i, seeded):
    q1, s1, q2, s2 = _mxint4_checkpoint(e, h, i, seeded)
    words1, words2 = L.pack_uint4b8(q1), L.pack_uint4b8(q2)
    bytes1, bytes2 = L.pack_int4(q1), L.pack_int4(q2)
    kept = words1.clone()
    from_words = P.prepare_static_weights_for_trtllm_mxint4_moe(words1, s1, words2, s2)
    assert torch.equal(words1, kept)  # inputs are not modified
    from_bytes = P.prepare_static_weights_for_trtllm_mxint4_moe(bytes1, s1, bytes2, s2)
    shapes = {"gemm1_weights": ((e, h // 256, 2 * i, 128), torch.uint8),
              "gemm1_scales": ((e, 2 * i * h // 32), torch.bfloat16),
              "gemm2_weights": ((e, i // 256, h, 128), torch.uint8),
              "gemm2_scales": ((e, h * i // 32), torch.bfloat16)}
    assert set(from_words) == set(shapes)
    for key, (shape, dtype) in shapes.items():
        assert from_words[key].shape == shape and from_words[key].dtype == dtype
        assert _same_bits(from_words[key], from_bytes[key])
    back_words = P.unprepare_static_weights_for_trtllm_mxint4_moe(**from_words)
    back_bytes = P.unprepare_static_weights_for_trtllm_mxint4_moe(**from_bytes, checkpoint_format="uint8")
    for got, want in ((back_words, (words1, s1, words2, s2)), (back_bytes, (bytes1, s1, bytes2, s2))):
        for key, w in zip(("gemm1_weights", "gemm1_scales", "gemm2_weights", "gemm2_scales"), want):
            assert _same_bits(got[key], w), key


def test_mxint4_prepared_elements(seeded):
    e, h, i = 2, 512, 256
    q1, s1, q2, s2 = _mxint4_checkpoint(e, h, i, seeded)
    out = P.prepare_static_weights_for_trtllm_mxint4_moe(L.pack_uint4b8(q1), s1, L.pack_uint4b8(q2), s2)
    m = 2 * i
    canon_q1 = torch.cat((q1[:, i:], q1[:, :i]), dim=1)  # [up (w3); gate (w1)]
    canon_s1 = torch.cat((s1[:, i:], s1[:, :i]), dim=1)
    cols1, cols2 = h // 32, i // 32
    for p in range(m):
        r = _prepared_row_source(p, m, True)
        for kb in range(h // 256):
            got = L.unpack_int4(out["gemm1_weights"][:, kb, p])  # 128 bytes = 256 values
            assert torch.equal(got, canon_q1[:, r, 256 * kb:256 * kb + 256])
        for c in (0, cols1 - 1):
            pos = (p // 128) * 128 * cols1 + (c // 4) * 512 + (p % 32) * 16 + ((p % 128) // 32) * 4 + c % 4
            assert _same_bits(out["gemm1_scales"][:, pos], canon_s1[:, r, c])
    for p in range(0, h, 7):
        r = _prepared_row_source(p, h, False)
        got = L.unpack_int4(out["gemm2_weights"][:, 0, p])
        assert torch.equal(got, q2[:, r, :256])
        pos = (p // 128) * 128 * cols2 + (p % 32) * 16 + ((p % 128) // 32) * 4
        assert _same_bits(out["gemm2_scales"][:, pos], s2[:, r, 0])


def test_mxint4_canonical_convenience(seeded):
    e, h, i = 2, 256, 256
    w1 = torch.randn(e, 2 * i, h, generator=seeded) * 0.02
    w2 = torch.randn(e, h, i, generator=seeded) * 0.02
    q1, s1 = P.quantize_mxint4(w1)
    q2, s2 = P.quantize_mxint4(w2)
    prepared = P.prepare_mxint4_moe_weights(q1, s1, q2, s2)
    # the same as the checkpoint path given the halves in checkpoint order
    ck1, cs1 = L.reorder_w3w1_to_w1w3(q1, s1)
    via_ckpt = P.prepare_static_weights_for_trtllm_mxint4_moe(ck1, cs1, q2, s2)
    for got, key in zip(prepared, ("gemm1_weights", "gemm1_scales", "gemm2_weights", "gemm2_scales")):
        assert _same_bits(got, via_ckpt[key])
    back = P.unprepare_mxint4_moe_weights(*prepared)
    for got, want in zip(back, (q1, s1, q2, s2)):
        assert _same_bits(got, want)
    # int8 values are packed first
    values = P.prepare_mxint4_moe_weights(L.unpack_int4(q1), s1, L.unpack_int4(q2), s2)
    for a, b in zip(values, prepared):
        assert _same_bits(a, b)
    deq = P.dequantize_mxint4(back[0], back[1])
    assert (deq - w1).abs().max() <= s1.float().max() * 0.51


def test_mxint4_rejects_bad_inputs(seeded):
    q1, s1, q2, s2 = _mxint4_checkpoint(1, 256, 256, seeded)
    w1, w2 = L.pack_uint4b8(q1), L.pack_uint4b8(q2)
    prep = P.prepare_static_weights_for_trtllm_mxint4_moe
    with pytest.raises(TypeError, match="gemm2_weights: expected the dtype of gemm1_weights"):
        prep(w1, s1, L.pack_int4(q2), s2)
    with pytest.raises(TypeError, match="gemm1_weights: expected dtype"):
        prep(w1.to(torch.int64), s1, w2, s2)
    with pytest.raises(TypeError, match="gemm1_scales: expected dtype torch.bfloat16"):
        prep(w1, s1.float(), w2, s2)
    with pytest.raises(ValueError, match="gemm2_scales: expected shape"):
        prep(w1, s1, w2, s2[:, :128])
    with pytest.raises(ValueError, match="gemm1_weights: expected 2I = 512 rows"):
        prep(w1[:, :256], s1[:, :256], w2, s2)
    q1b, s1b, q2b, s2b = _mxint4_checkpoint(1, 128, 256, seeded)
    with pytest.raises(ValueError, match="gemm1_weights: hidden size H = 128 must be a positive multiple of 256"):
        prep(L.pack_uint4b8(q1b), s1b, L.pack_uint4b8(q2b), s2b)
    q1c, s1c, q2c, s2c = _mxint4_checkpoint(1, 256, 128, seeded)
    with pytest.raises(ValueError, match="gemm2_weights: intermediate size I = 128"):
        prep(L.pack_uint4b8(q1c), s1c, L.pack_uint4b8(q2c), s2c)
    out = prep(w1, s1, w2, s2)
    with pytest.raises(ValueError, match="checkpoint_format"):
        P.unprepare_static_weights_for_trtllm_mxint4_moe(**out, checkpoint_format="int4")
    with pytest.raises(ValueError, match="gemm2_scales"):
        P.unprepare_static_weights_for_trtllm_mxint4_moe(out["gemm1_weights"], out["gemm1_scales"],
                                                         out["gemm2_weights"], out["gemm2_scales"][:, 1:])
    with pytest.raises(TypeError, match="gemm1_weights"):
        P.prepare_mxint4_moe_weights(q1.float(), s1, q2, s2)


# ---------------------------------------------------------------------------------------------
# FP4 for b12x


@pytest.mark.parametrize("quant_mode", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("e,h,i,gated", [(2, 256, 128, True), (1, 128, 192, False), (3, 64, 96, True)])
def test_b12x_round_trip(quant_mode, e, h, i, gated, seeded):
    block = 16 if quant_mode == "nvfp4" else 32
    if h % block or i % block:
        pytest.skip("size not a whole number of scale blocks")
    m = 2 * i if gated else i
    w1 = torch.randn(e, m, h, generator=seeded)
    w2 = torch.randn(e, h, i, generator=seeded)
    if quant_mode == "nvfp4":
        p1, s1, _ = P.quantize_nvfp4(w1)
        p2, s2, _ = P.quantize_nvfp4(w2)
    else:
        p1, s1 = P.quantize_mxfp4(w1)
        p2, s2 = P.quantize_mxfp4(w2)
    out = P.prepare_b12x_fp4_moe_weights(p1, s1, p2, s2, quant_mode=quant_mode)
    assert out["w1_weight"].shape == (e, m, h // 2) and out["w1_weight"].dtype == torch.uint8
    rp1, cp1 = L.padded_scale_shape(m, h // block)
    assert out["w1_weight_sf"].shape == (32, 4, rp1 // 128, 4, cp1 // 4, e)
    assert out["w1_weight_sf"].dtype == s1.dtype
    sf = out["w1_weight_sf"]
    for r in range(0, m, 5):
        for c in range(h // block):
            assert _same_bits(sf[r % 32, (r % 128) // 32, r // 128, c % 4, c // 4], s1[:, r, c])
    back = P.unprepare_b12x_fp4_moe_weights(**out, quant_mode=quant_mode)
    for key, want in (("w1_weight", p1), ("w1_scales", s1), ("w2_weight", p2), ("w2_scales", s2)):
        assert _same_bits(back[key], want), key


def test_b12x_rejects_bad_inputs(seeded):
    p1, s1, _ = P.quantize_nvfp4(torch.randn(1, 256, 128, generator=seeded))
    p2, s2, _ = P.quantize_nvfp4(torch.randn(1, 128, 128, generator=seeded))
    prep = P.prepare_b12x_fp4_moe_weights
    with pytest.raises(ValueError, match="quant_mode"):
        prep(p1, s1, p2, s2, quant_mode="fp8")
    with pytest.raises(TypeError, match="w1_scales: expected dtype"):
        prep(p1, s1.float(), p2, s2)
    with pytest.raises(TypeError, match="w1_scales"):
        prep(p1, s1, p2, s2, quant_mode="mxfp4")
    with pytest.raises(ValueError, match="w2_scales: expected shape"):
        prep(p1, s1, p2, s2[:, :, :4])
    with pytest.raises(ValueError, match="w1_weight: expected M"):
        prep(p1[:, :100], s1[:, :100], p2, s2)
    with pytest.raises(TypeError, match="w2_weight"):
        prep(p1, s1, p2.to(torch.int8), s2)
    out = prep(p1, s1, p2, s2)
    with pytest.raises(ValueError, match="w2_weight_sf"):
        P.unprepare_b12x_fp4_moe_weights(out["w1_weight"], out["w1_weight_sf"], out["w2_weight"],
                                         out["w1_weight_sf"])
