"""The inline PTX of the 4-bit conversions and of the NVFP4 activation quantizer, run by a small
interpreter (tests/ptx_emulator.py) on every code and a spread of scales: the exact text the
kernels ship computes the library's float rules (cute_moe.layouts.packing) bit for bit.

* NVFP4 weights (kernels/fp4_convert.py): ``e2m1 * ue4m3`` exactly, for all 16 codes x every
  finite ue4m3 scale, at each byte position;
* MXINT4 weights (kernels/int4_convert.py): ``bf16(q * s)``, rounded once;
* the quantizer (kernels/fp4_quantize.py): ue4m3 rounding and e2m1 rounding / codes, ties included.
"""

from __future__ import annotations

import random

import pytest
import torch

from cute_moe.kernels import fp4_convert, fp4_quantize, int4_convert
from cute_moe.layouts.packing import decode_e2m1, decode_ue4m3, encode_e2m1, encode_ue4m3
from ptx_emulator import bf16_bits, bits_bf16, bits_f32, f32_bits, run

E2M1 = decode_e2m1(torch.arange(16, dtype=torch.uint8)).tolist()
UE4M3 = decode_ue4m3(torch.arange(256, dtype=torch.uint8)).tolist()
FINITE_SCALES = [b for b in range(0x7F)]  # unsigned scales: 0x7F is NaN, bit 7 unused


def _other_bytes(j: int, rng: random.Random) -> int:
    return rng.getrandbits(32) & ~(0xFF << (8 * j))


@pytest.mark.parametrize("j", range(4))
def test_fp4_scale_pair_is_the_ue4m3_value(j):
    rng = random.Random(j)
    for b in FINITE_SCALES:
        (pair,) = run(fp4_convert.scale_pair_ptx(j), [(b << (8 * j)) | _other_bytes(j, rng)])
        assert bits_bf16(pair) == bits_bf16(pair >> 16) == UE4M3[b], (b, hex(pair))


@pytest.mark.parametrize("j", range(4))
def test_fp4_scaled_pair_is_exact(j):
    rng = random.Random(10 + j)
    scales = [0x00, 0x01, 0x07, 0x08, 0x38, 0x7E] + rng.sample(FINITE_SCALES, 12)
    for s in scales:
        (scale2,) = run(fp4_convert.scale_pair_ptx(0), [s])
        for byte in range(256):
            word = (byte << (8 * j)) | _other_bytes(j, rng)
            (pair,) = run(fp4_convert.scaled_pair_ptx(j), [word, word >> 4, scale2])
            want = (E2M1[byte & 15] * UE4M3[s], E2M1[byte >> 4] * UE4M3[s])
            assert all(bits_bf16(bf16_bits(w)) == w for w in want)  # the products are exact in bf16
            assert (bits_bf16(pair), bits_bf16(pair >> 16)) == want, (s, byte, hex(pair))


@pytest.mark.parametrize("j", range(4))
def test_int4_scaled_pair_rounds_once(j):
    rng = random.Random(20 + j)
    for _ in range(24):
        s = bits_bf16(bf16_bits(rng.uniform(-3, 3) * 2.0 ** rng.randint(-12, 6)))
        scale2 = bf16_bits(s) * 0x10001
        for byte in range(256):
            word = (byte << (8 * j)) | _other_bytes(j, rng)
            (pair,) = run(int4_convert.scaled_pair_ptx(j), [word, word >> 4, scale2])
            q = [((byte & 15) ^ 8) - 8, ((byte >> 4) ^ 8) - 8]
            assert (pair & 0xFFFF, pair >> 16) == (bf16_bits(q[0] * s), bf16_bits(q[1] * s)), (s, byte)


@pytest.mark.parametrize("j", range(4))
def test_int4_scaled_byte_is_scaled_pair_with_the_selector_in_a_register(j):
    """The register-fed wgmma's conversion (``scaled_byte``): byte ``j`` picked by the selector
    operand ``byte_selector(j)`` gives the constant-selector pair, bit for bit."""
    rng = random.Random(50 + j)
    for _ in range(256):
        word = rng.getrandbits(32)
        scale2 = bf16_bits(rng.uniform(-3, 3)) * 0x10001
        (want,) = run(int4_convert.scaled_pair_ptx(j), [word, word >> 4, scale2])
        (got,) = run(int4_convert.SCALED_BYTE_PTX, [word, word >> 4, scale2, int4_convert.byte_selector(j)])
        assert got == want, (j, hex(word))


def test_int4_scale_pair_broadcasts_the_chosen_scale():
    rng = random.Random(40)
    for _ in range(64):
        lo, hi = rng.getrandbits(16), rng.getrandbits(16)
        for which, want in ((0, lo), (1, hi)):
            (pair,) = run(int4_convert.SCALE_PAIR_PTX, [lo | (hi << 16), 0x1010 + which * 0x2222])
            assert pair == want * 0x10001


def _quantizer_inputs():
    rng = random.Random(30)
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    values = [0.0, -0.0, 6.0, 7.0, 100.0, 1e-8] + ties + [-t for t in ties]
    values += [t * (1 + d) for t in ties for d in (2.0 ** -20, -(2.0 ** -20))]
    values += [rng.uniform(-8, 8) for _ in range(200)]
    return values


def test_quantizer_e2m1_matches_the_reference_rule():
    for denom in (1.0, 0.37, 3.0):
        for v in _quantizer_inputs():
            x = torch.tensor([v], dtype=torch.float32) / torch.tensor([denom], dtype=torch.float32)
            code = int(encode_e2m1(x).item())
            (value,) = run(fp4_quantize._e2m1_ptx(), [f32_bits(v), f32_bits(denom)])
            (got_code,) = run(fp4_quantize._e2m1_code_ptx(), [f32_bits(v), f32_bits(denom)])
            assert got_code == code, (v, denom)
            assert bits_f32(value) == E2M1[code] and (value >> 31) == (code >> 3), (v, denom)


def test_quantizer_ue4m3_matches_the_reference_rule():
    rng = random.Random(40)
    xs = [0.0, 448.0, 447.9, 2.0 ** -9, 2.0 ** -10, 1.5 * 2.0 ** -10, 2.0 ** -6, 0.0625 * 1.0625]
    xs += [rng.uniform(0, 448) for _ in range(200)] + [2.0 ** rng.uniform(-12, 0) for _ in range(200)]
    for x in xs:
        want = int(encode_ue4m3(torch.tensor([x])).view(torch.uint8).item())
        (bits,) = run(fp4_quantize.UE4M3_BITS_PTX, [f32_bits(x)])
        (value,) = run(fp4_quantize.UE4M3_ROUND_PTX, [f32_bits(x)])
        assert bits == want, (x, bits, want)
        assert bits_f32(value) == UE4M3[want], x
