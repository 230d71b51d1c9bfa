"""One expert's checkpoint tensors <-> its slice of the prepared entry-point tensors.

Source tensors arrive as ``{role: {suffix: tensor}}`` with roles ``gate`` (w1), ``up`` (w3),
``down`` (w2), each ``[N, K]`` as stored (gate/up ``[I, H]``, down ``[H, I]``). Preparation is
the one in :mod:`cute_moe.prepare`, called with ``E = 1``; it is independent per expert, so
stacking per-expert results equals preparing the whole layer at once.

Output names are the entry points' argument names: ``gemm1_weights``, ``gemm2_weights`` and, for
mxint4, ``gemm1_weights_scale``, ``gemm2_weights_scale``.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch

from .. import prepare, validate
from ..enums import ActivationType
from ..layouts import (BLOCK_K_BYTES, DEFAULT_EPILOGUE_TILE_M, SCALE_TILE_COLS, SCALE_TILE_ROWS,
                       reorder_w1w3_to_w3w1, reorder_w3w1_to_w1w3, shuffle_block_size)
from ..layouts.packing import INT4_PER_INT32

Expert = Dict[str, Dict[str, torch.Tensor]]

# Identifies the prepared byte layout written by this version of cute_moe; a reader compares it
# before using a converted checkpoint. Bump the trailing number whenever a layout changes.
LAYOUT_VERSIONS = {
    "bf16": f"trtllm-gen.bf16.epi{DEFAULT_EPILOGUE_TILE_M}.bk{BLOCK_K_BYTES}B.v1",
    "mxint4": (f"trtllm-gen.mxint4.epi{prepare.MXINT4_EPILOGUE_TILE_M}.bk{BLOCK_K_BYTES}B"
               f".sf{SCALE_TILE_ROWS}x{SCALE_TILE_COLS}.v1"),
}

# prepare_static_weights_for_trtllm_mxint4_moe's result keys -> entry-point argument names
_MXINT4_NAMES = {"gemm1_weights": "gemm1_weights", "gemm1_scales": "gemm1_weights_scale",
                 "gemm2_weights": "gemm2_weights", "gemm2_scales": "gemm2_weights_scale"}


def layout_version(fmt: str) -> str:
    return LAYOUT_VERSIONS[fmt]


def supports(fmt: str, activation: ActivationType) -> bool:
    """bf16 takes gated (Swiglu) and ungated (Relu2) FC1; the MXINT4 layout is gated only."""
    return activation == ActivationType.Swiglu or (fmt == "bf16" and activation == ActivationType.Relu2)


def size_multiples(fmt: str) -> Tuple[int, int]:
    """(H, I) must be multiples of these for the prepared layout and for the entry points.

    H is a BlockMajorK K (FC1) and a shuffled row count (FC2); I is a K (FC2) and ``M = 2I`` or ``I`` a shuffled row count.
    """
    block = shuffle_block_size(DEFAULT_EPILOGUE_TILE_M)
    k_block = validate.BF16_K_BLOCK if fmt == "bf16" else validate.MXINT4_K_BLOCK
    return math.lcm(block, k_block), math.lcm(block, k_block, validate.INTERMEDIATE_MULTIPLE)


def check_entry_point_weights(fmt: str, prepared: Dict[str, torch.Tensor], activation: ActivationType,
                              hidden: int, inter: int) -> None:
    """The entry point's own weight checks (shape, dtype, contiguity, alignment) on a prepared layer."""
    num_experts = prepared["gemm1_weights"].shape[0]
    sizes = dict(hidden_size=hidden, intermediate_size=inter, local_num_experts=num_experts)
    if fmt == "bf16":
        validate.validate_bf16_weights(prepared["gemm1_weights"], prepared["gemm2_weights"],
                                       activation_type=activation, **sizes)
    else:
        validate.validate_mxint4_weights(prepared["gemm1_weights"], prepared["gemm1_weights_scale"],
                                         prepared["gemm2_weights"], prepared["gemm2_weights_scale"], **sizes)


def _fc1_checkpoint_rows(src: Expert, suffix: str) -> torch.Tensor:
    """``[gate (w1); up (w3)]`` rows as checkpoints fuse them."""
    return torch.cat([src["gate"][suffix], src["up"][suffix]], dim=0)


def prepare_expert(fmt: str, src: Expert, activation: ActivationType) -> Dict[str, torch.Tensor]:
    """One expert's source tensors -> ``{name: prepared tensor [1, ...]}``."""
    if fmt == "bf16":
        if activation.is_gated:
            gemm1 = reorder_w1w3_to_w3w1(_fc1_checkpoint_rows(src, "weight"))[0]
        else:
            gemm1 = src["up"]["weight"]
        g1, g2 = prepare.prepare_bf16_moe_weights(gemm1[None], src["down"]["weight"][None], activation)
        return {"gemm1_weights": g1, "gemm2_weights": g2}
    out = prepare.prepare_static_weights_for_trtllm_mxint4_moe(
        _fc1_checkpoint_rows(src, "weight_packed")[None], _fc1_checkpoint_rows(src, "weight_scale")[None],
        src["down"]["weight_packed"][None], src["down"]["weight_scale"][None])
    return {_MXINT4_NAMES[k]: v for k, v in out.items()}


def unprepare_expert(fmt: str, prepared: Dict[str, torch.Tensor], activation: ActivationType) -> Expert:
    """Inverse of :func:`prepare_expert` on one expert's slices ``[1, ...]`` -> ``{role: {suffix: [N, K]}}``."""
    if fmt == "bf16":
        gemm1, gemm2 = prepare.unprepare_bf16_moe_weights(prepared["gemm1_weights"], prepared["gemm2_weights"],
                                                          activation)
        out = {"down": {"weight": gemm2[0]}}
        if activation.is_gated:
            gate, up = reorder_w3w1_to_w1w3(gemm1[0])[0].chunk(2, dim=0)
            out.update(gate={"weight": gate}, up={"weight": up})
        else:
            out["up"] = {"weight": gemm1[0]}
        return out
    back = {v: k for k, v in _MXINT4_NAMES.items()}
    ckpt = prepare.unprepare_static_weights_for_trtllm_mxint4_moe(
        **{back[k]: v for k, v in prepared.items()}, checkpoint_format="int32")
    w_gate, w_up = ckpt["gemm1_weights"][0].chunk(2, dim=0)
    s_gate, s_up = ckpt["gemm1_scales"][0].chunk(2, dim=0)
    return {"gate": {"weight_packed": w_gate, "weight_scale": s_gate},
            "up": {"weight_packed": w_up, "weight_scale": s_up},
            "down": {"weight_packed": ckpt["gemm2_weights"][0], "weight_scale": ckpt["gemm2_scales"][0]}}


def prepared_shapes(fmt: str, activation: ActivationType, num_experts: int, hidden: int, inter: int
                    ) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    """``{name: (shape, dtype)}`` of a layer's prepared tensors, from preparing one all-zero expert."""
    dims = {"gate": (inter, hidden), "up": (inter, hidden), "down": (hidden, inter)}
    if fmt == "bf16":
        src = {r: {"weight": torch.zeros(n, k, dtype=torch.bfloat16)} for r, (n, k) in dims.items()}
    else:
        src = {r: {"weight_packed": torch.zeros(n, k // INT4_PER_INT32, dtype=torch.int32),
                   "weight_scale": torch.zeros(n, k // prepare.MXINT4_GROUP, dtype=torch.bfloat16)}
               for r, (n, k) in dims.items()}
    one = prepare_expert(fmt, src, activation)
    return {name: ((num_experts,) + tuple(t.shape[1:]), t.dtype) for name, t in one.items()}
