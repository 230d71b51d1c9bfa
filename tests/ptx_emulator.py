"""A small interpreter for the straight-line PTX snippets the kernels inline (bit placement,
bf16x2 fused multiply-adds, compare-and-select), so that the exact text a kernel ships can be
checked on the CPU against the library's float rules.

Registers hold 32-bit patterns (``.b16`` values in the low half). Supported: ``mov``, ``and``,
``or``, ``shl``, ``shr.u32``, ``bfe.u32``, ``prmt.b32`` (default mode), ``lop3.b32``,
``fma.rn.bf16x2``, ``setp.{gt,ge,lt,le,eq}.f32``, ``selp``, ``add.{f32,u32}``, ``abs.f32``,
``div.rn.f32``, ``cvt.u32.u16``, ``cvt.rn.satfinite.e4m3x2.f32``, ``cvt.rn.f16x2.e4m3x2``,
``cvt.f32.f16`` and ``mov.b32 {lo, hi}, r`` (unpack).
"""

from __future__ import annotations

import re
import struct
from typing import Dict, List, Sequence

import torch

MASK = 0xFFFFFFFF


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def bits_f32(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b & MASK))[0]


def bf16_bits(x: float) -> int:
    """Round-to-nearest-even bf16 pattern of ``x``."""
    return int(torch.tensor([x], dtype=torch.float32).to(torch.bfloat16).view(torch.int16).item()) & 0xFFFF


def bits_bf16(b: int) -> float:
    return bits_f32((b & 0xFFFF) << 16)


def _imm(tok: str) -> int:
    if tok.startswith("0f"):
        return int(tok[2:], 16)
    return int(tok, 0) & MASK


def run(ptx: str, inputs: Sequence[int]) -> List[int]:
    """Execute ``ptx`` with ``$1 ..`` = ``inputs`` (32-bit patterns); returns the outputs ``$0 ..``
    that the snippet writes, in order."""
    regs: Dict[str, int] = {f"${i + 1}": v & MASK for i, v in enumerate(inputs)}
    preds: Dict[str, bool] = {}
    outputs: Dict[int, int] = {}

    def val(tok: str) -> int:
        tok = tok.strip()
        if tok in regs:
            return regs[tok]
        return _imm(tok)

    def put(dst: str, v: int) -> None:
        regs[dst] = v & MASK
        if dst.startswith("$"):
            outputs[int(dst[1:])] = v & MASK

    for raw in re.split(r"[;\n]", ptx):
        line = raw.strip()
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, _, rest = line.partition(" ")
        args = [a.strip() for a in re.split(r",(?![^{]*})", rest)]
        if op.startswith("mov") and args[0].startswith("{"):  # unpack b32 -> two b16
            lo, hi = [a.strip() for a in args[0].strip("{}").split(",")]
            v = val(args[1])
            put(lo, v & 0xFFFF)
            put(hi, v >> 16)
        elif op.startswith("mov"):
            put(args[0], val(args[1]))
        elif op == "and.b32":
            put(args[0], val(args[1]) & val(args[2]))
        elif op == "or.b32":
            put(args[0], val(args[1]) | val(args[2]))
        elif op == "shl.b32":
            put(args[0], val(args[1]) << val(args[2]))
        elif op == "shr.u32":
            put(args[0], val(args[1]) >> val(args[2]))
        elif op == "bfe.u32":
            put(args[0], (val(args[1]) >> val(args[2])) & ((1 << val(args[3])) - 1))
        elif op == "prmt.b32":
            pool = val(args[1]) | (val(args[2]) << 32)
            sel = val(args[3])
            put(args[0], sum(((pool >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i) for i in range(4)))
        elif op == "lop3.b32":
            a, b, c, lut = (val(x) for x in args[1:5])
            out = 0
            for bit in range(32):
                idx = (((a >> bit) & 1) << 2) | (((b >> bit) & 1) << 1) | ((c >> bit) & 1)
                out |= ((lut >> idx) & 1) << bit
            put(args[0], out)
        elif op == "fma.rn.bf16x2":
            a, b, c = (val(x) for x in args[1:4])
            halves = [bf16_bits(bits_bf16(a >> s) * bits_bf16(b >> s) + bits_bf16(c >> s)) for s in (0, 16)]
            put(args[0], halves[0] | (halves[1] << 16))
        elif op.startswith("setp."):
            cmp = op.split(".")[1]
            x, y = bits_f32(val(args[1])), bits_f32(val(args[2]))
            preds[args[0]] = {"gt": x > y, "ge": x >= y, "lt": x < y, "le": x <= y, "eq": x == y}[cmp]
        elif op.startswith("selp."):
            put(args[0], val(args[1]) if preds[args[3]] else val(args[2]))
        elif op == "add.f32":
            put(args[0], f32_bits(bits_f32(val(args[1])) + bits_f32(val(args[2]))))
        elif op == "add.u32":
            put(args[0], val(args[1]) + val(args[2]))
        elif op == "abs.f32":
            put(args[0], val(args[1]) & 0x7FFFFFFF)
        elif op == "div.rn.f32":
            x = torch.tensor([bits_f32(val(args[1]))], dtype=torch.float32)
            y = torch.tensor([bits_f32(val(args[2]))], dtype=torch.float32)
            put(args[0], f32_bits(float((x / y).item())))
        elif op == "cvt.u32.u16":
            put(args[0], val(args[1]) & 0xFFFF)
        elif op == "cvt.rn.satfinite.e4m3x2.f32":  # d = (e4m3(a) << 8) | e4m3(b)
            def e4m3(v):
                t = torch.tensor([bits_f32(v)], dtype=torch.float32).clamp(-448.0, 448.0)
                return int(t.to(torch.float8_e4m3fn).view(torch.uint8).item())
            put(args[0], (e4m3(val(args[1])) << 8) | e4m3(val(args[2])))
        elif op == "cvt.rn.f16x2.e4m3x2":
            v = val(args[1])
            def f16(byte):
                x = torch.tensor([byte], dtype=torch.uint8).view(torch.float8_e4m3fn).float()
                return int(x.to(torch.float16).view(torch.int16).item()) & 0xFFFF
            put(args[0], f16(v & 0xFF) | (f16((v >> 8) & 0xFF) << 16))
        elif op == "cvt.f32.f16":
            h = torch.tensor([val(args[1]) & 0xFFFF], dtype=torch.int32).to(torch.int16).view(torch.float16)
            put(args[0], f32_bits(float(h.float().item())))
        else:
            raise NotImplementedError(f"ptx_emulator: {op}")
    return [outputs[i] for i in sorted(outputs)]
