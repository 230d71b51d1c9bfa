"""Bit-level encodings of 4-bit weights and their block scales.

Nibble order (every packed 4-bit format here): byte ``j`` of a row holds value ``2j`` in its low
nibble (bits 0-3) and value ``2j+1`` in its high nibble (bits 4-7)::

    byte[j] = code[2j] | code[2j+1] << 4

Formats:

* signed int4 (MXINT4 prepared weights): ``code = q & 0xF`` for ``q`` in [-8, 7] (two's complement);
* uint4b8 (compressed-tensors ``pack-quantized`` checkpoints): ``q + 8`` in [0, 15], eight per
  int32 word, value ``8w+i`` of a row at bits ``4i`` of word ``w``:
  ``word[w] = sum_i (q[8w+i] + 8) << 4i`` (as a two's-complement int32);
* e2m1 (NVFP4 / MXFP4 values): sign bit 3, magnitude code 0..7 -> 0, 0.5, 1, 1.5, 2, 3, 4, 6;
* ue4m3 (NVFP4 block scale, one per 16 values): a non-negative ``float8_e4m3fn``;
* ue8m0 (MXFP4 block scale, one per 32 values): a uint8 biased exponent, value ``2**(b - 127)``,
  ``b = 255`` is NaN.

Because int32 words are little-endian, ``uint4b8_to_int4(words)`` equals reading the words'
bytes after subtracting 8 from every nibble: the byte stream of a converted word *is* the packed
signed-int4 row. Every function is pure torch and keeps the tensor's device.
"""

from __future__ import annotations

import torch

INT4_MIN, INT4_MAX = -8, 7
UINT4B8_BIAS = 8
INT4_PER_INT32 = 8
E2M1_MAX = 6.0
UE4M3_MAX = 448.0
UE8M0_BIAS = 127
UE8M0_NAN = 255

# Magnitude of each e2m1 code 0..7; codes 8..15 are the same with the sign bit set.
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_VALUES = E2M1_MAGNITUDES + tuple(-m for m in E2M1_MAGNITUDES)

_INT32_BYTES = 4


def _require(cond: bool, exc, msg: str) -> None:
    if not cond:
        raise exc(msg)


def _require_last_dim_multiple(x: torch.Tensor, name: str, multiple: int) -> None:
    _require(x.dim() >= 1, ValueError, f"{name}: expected at least 1 dimension, got a scalar")
    _require(x.shape[-1] % multiple == 0, ValueError,
             f"{name}: last dimension must be a multiple of {multiple}, got shape {tuple(x.shape)}")


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes ``[..., 2n]`` (integers 0..15) -> uint8 ``[..., n]``,
    ``byte[j] = code[2j] | code[2j+1] << 4``."""
    _require(not codes.is_floating_point() and codes.dtype != torch.bool, TypeError,
             f"codes: expected an integer tensor, got {codes.dtype}")
    _require_last_dim_multiple(codes, "codes", 2)
    c = codes.to(torch.int16)
    _require(bool(((c >= 0) & (c <= 15)).all()), ValueError, "codes: values must lie in [0, 15]")
    pairs = c.unflatten(-1, (-1, 2))
    return (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., n]`` -> uint8 codes ``[..., 2n]``; inverse of :func:`pack_nibbles`."""
    _require(packed.dtype == torch.uint8, TypeError, f"packed: expected torch.uint8, got {packed.dtype}")
    _require(packed.dim() >= 1, ValueError, "packed: expected at least 1 dimension, got a scalar")
    low = packed & 0xF
    high = packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Signed int4 values ``q [..., 2n]`` (int8 in [-8, 7]) -> uint8 ``[..., n]``,
    ``byte[j] = (q[2j] & 0xF) | (q[2j+1] & 0xF) << 4``."""
    _require(q.dtype == torch.int8, TypeError, f"q: expected torch.int8 values in [-8, 7], got {q.dtype}")
    _require(bool(((q >= INT4_MIN) & (q <= INT4_MAX)).all()), ValueError, "q: values must lie in [-8, 7]")
    return pack_nibbles(q & 0xF)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., n]`` -> int8 ``[..., 2n]`` in [-8, 7]: ``q = (code ^ 8) - 8`` (sign extension);
    inverse of :func:`pack_int4`."""
    codes = unpack_nibbles(packed).to(torch.int8)
    return (codes ^ 8) - 8


def _to_int32_bits(words64: torch.Tensor) -> torch.Tensor:
    """int64 holding an unsigned 32-bit pattern -> int32 with the same bits."""
    return torch.where(words64 >= 2**31, words64 - 2**32, words64).to(torch.int32)


def pack_uint4b8(q: torch.Tensor) -> torch.Tensor:
    """Signed int4 values ``q [..., 8n]`` (int8 in [-8, 7]) -> int32 ``[..., n]`` uint4b8 words,
    ``word[w] = sum_i (q[8w+i] + 8) << 4i`` (bits reinterpreted as int32)."""
    _require(q.dtype == torch.int8, TypeError, f"q: expected torch.int8 values in [-8, 7], got {q.dtype}")
    _require_last_dim_multiple(q, "q", INT4_PER_INT32)
    _require(bool(((q >= INT4_MIN) & (q <= INT4_MAX)).all()), ValueError, "q: values must lie in [-8, 7]")
    u = (q.to(torch.int64) + UINT4B8_BIAS).unflatten(-1, (-1, INT4_PER_INT32))
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=q.device)
    return _to_int32_bits((u << shifts).sum(-1))


def unpack_uint4b8(words: torch.Tensor) -> torch.Tensor:
    """int32 uint4b8 words ``[..., n]`` -> int8 ``[..., 8n]``,
    ``q[8w+i] = ((word[w] >> 4i) & 0xF) - 8``; inverse of :func:`pack_uint4b8`."""
    _require(words.dtype == torch.int32, TypeError, f"words: expected torch.int32, got {words.dtype}")
    _require(words.dim() >= 1, ValueError, "words: expected at least 1 dimension, got a scalar")
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=words.device)
    nibbles = (words.to(torch.int64).unsqueeze(-1) >> shifts) & 0xF
    return (nibbles - UINT4B8_BIAS).to(torch.int8).flatten(-2)


def uint4b8_to_int4(words: torch.Tensor) -> torch.Tensor:
    """int32 uint4b8 words ``[..., n]`` -> packed signed int4 uint8 ``[..., 4n]``.

    ``out[4w+b] = ((word[w] >> 8b) & 0xFF) ^ 0x88``: subtracting the bias 8 from a 4-bit field
    is ``xor 8``; byte ``b`` of a word holds values ``8w+2b`` (low) and ``8w+2b+1`` (high), the
    :func:`pack_int4` order. Equals vLLM's in-place conversion followed by ``.view(torch.uint8)``.
    """
    _require(words.dtype == torch.int32, TypeError, f"words: expected torch.int32, got {words.dtype}")
    _require(words.dim() >= 1, ValueError, "words: expected at least 1 dimension, got a scalar")
    shifts = torch.arange(0, 32, 8, dtype=torch.int64, device=words.device)
    b = (words.to(torch.int64).unsqueeze(-1) >> shifts) & 0xFF
    return (b ^ 0x88).to(torch.uint8).flatten(-2)


def int4_to_uint4b8(packed: torch.Tensor) -> torch.Tensor:
    """Packed signed int4 uint8 ``[..., 4n]`` -> int32 uint4b8 words ``[..., n]``,
    ``word[w] = sum_b (packed[4w+b] ^ 0x88) << 8b``; inverse of :func:`uint4b8_to_int4`."""
    _require(packed.dtype == torch.uint8, TypeError, f"packed: expected torch.uint8, got {packed.dtype}")
    _require_last_dim_multiple(packed, "packed", _INT32_BYTES)
    b = (packed.to(torch.int64) ^ 0x88).unflatten(-1, (-1, _INT32_BYTES))
    shifts = torch.arange(0, 32, 8, dtype=torch.int64, device=packed.device)
    return _to_int32_bits((b << shifts).sum(-1))


# Decision boundaries between consecutive e2m1 magnitudes (midpoints of E2M1_MAGNITUDES).
_E2M1_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def encode_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Float tensor -> uint8 e2m1 codes (0..15), round to nearest, ties to the even code,
    saturating at +-6; the sign bit (8) is ``signbit(x)``, so -0.0 and small negatives give 8.

    ``code = 8*signbit(x) + #{k : |x| > b_k} + #{k : |x| == b_k and k even}`` with boundaries
    ``b_1..b_7 = 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5`` (``b_k`` lies between codes ``k-1`` and ``k``).
    """
    _require(x.is_floating_point(), TypeError, f"x: expected a floating tensor, got {x.dtype}")
    _require(bool(torch.isfinite(x).all()), ValueError, "x: values must be finite")
    a = x.float().abs()
    code = torch.zeros(x.shape, dtype=torch.int16, device=x.device)
    for k, bound in enumerate(_E2M1_BOUNDS, start=1):
        code += (a > bound).to(torch.int16)
        if k % 2 == 0:
            code += (a == bound).to(torch.int16)
    code += torch.signbit(x).to(torch.int16) * 8
    return code.to(torch.uint8)


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """uint8 e2m1 codes -> float32 values ``E2M1_VALUES[code]`` (code 8 is -0.0)."""
    _require(codes.dtype == torch.uint8, TypeError, f"codes: expected torch.uint8, got {codes.dtype}")
    _require(bool((codes <= 15).all()), ValueError, "codes: values must lie in [0, 15]")
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=codes.device)
    return table[codes.long()]


def encode_ue4m3(scale: torch.Tensor) -> torch.Tensor:
    """Non-negative float scales -> ``float8_e4m3fn``, round to nearest even, saturating at 448."""
    _require(scale.is_floating_point(), TypeError, f"scale: expected a floating tensor, got {scale.dtype}")
    s = scale.float()
    _require(bool((torch.isfinite(s) & (s >= 0)).all()), ValueError, "scale: values must be finite and >= 0")
    return s.clamp(max=UE4M3_MAX).to(torch.float8_e4m3fn)


def decode_ue4m3(scale: torch.Tensor) -> torch.Tensor:
    """``float8_e4m3fn`` (or its uint8 bytes) -> float32."""
    if scale.dtype == torch.uint8:
        scale = scale.view(torch.float8_e4m3fn)
    _require(scale.dtype == torch.float8_e4m3fn, TypeError,
             f"scale: expected torch.float8_e4m3fn or torch.uint8, got {scale.dtype}")
    return scale.float()


def encode_ue8m0(scale: torch.Tensor) -> torch.Tensor:
    """Non-negative float scales -> uint8 ue8m0, rounding *up* to a power of two:
    ``b = ((bits(float32(s)) + 0x7FFFFF) & 0x7F800000) >> 23`` (FlashInfer's reference rule), and
    ``b = 0`` (``2**-127``) for ``s <= 2**-127``, so that ``encode(decode(b)) == b`` for every finite code."""
    _require(scale.is_floating_point(), TypeError, f"scale: expected a floating tensor, got {scale.dtype}")
    s = scale.float()
    _require(bool((torch.isfinite(s) & (s >= 0)).all()), ValueError, "scale: values must be finite and >= 0")
    bits = s.view(torch.int32).to(torch.int64)
    b = ((bits + 0x7FFFFF) & 0x7F800000) >> 23
    b = torch.where(s <= 2.0**-127, torch.zeros_like(b), b)
    _require(bool((b < UE8M0_NAN).all()), ValueError, "scale: values above 2**127 have no ue8m0 code")
    return b.to(torch.uint8)


def decode_ue8m0(scale: torch.Tensor) -> torch.Tensor:
    """uint8 ue8m0 -> float32 ``2**(b - 127)`` (exact, ``b = 0`` is the subnormal ``2**-127``),
    ``b = 255`` -> NaN."""
    if hasattr(torch, "float8_e8m0fnu") and scale.dtype == torch.float8_e8m0fnu:
        scale = scale.view(torch.uint8)
    _require(scale.dtype == torch.uint8, TypeError, f"scale: expected torch.uint8, got {scale.dtype}")
    b = scale.to(torch.int32)
    bits = torch.where(b == 0, torch.full_like(b, 0x00400000), b << 23)
    bits = torch.where(b == UE8M0_NAN, torch.full_like(b, 0x7FC00000), bits)
    return bits.view(torch.float32)
