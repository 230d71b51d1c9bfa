"""One expert's checkpoint tensors <-> its slice of the prepared entry-point tensors.

Source tensors arrive as ``{role: {suffix: tensor}}`` with roles ``gate`` (w1), ``up`` (w3),
``down`` (w2), each ``[N, K]`` as stored (gate/up ``[I, H]``, down ``[H, I]``). Preparation is
the one in :mod:`cute_moe.prepare`, called with ``E = 1``; it is independent per expert, so
stacking per-expert results equals preparing the whole layer at once.

Output names are the entry points' argument names: ``gemm1_weights``, ``gemm2_weights`` and, for
mxint4, ``gemm1_weights_scale``, ``gemm2_weights_scale``. For nvfp4 (ModelOpt) they are
``b12x_fused_moe``'s (cute_moe.reference_b12x states its rules):

* ``w1_weight [E, M, H/2]`` rows ``[up; gate]`` (gated) or ``up``, ``w2_weight [E, H, I/2]``: the
  packed e2m1 bytes as stored;
* ``w1_weight_sf``, ``w2_weight_sf``: the 128x4-interleaved e4m3 scales as their storage
  ``[E, Rp * Cp]``; the argument is ``cute_moe.layouts.scale_mma_view(t, rows, K / 16, E)``;
* ``w1_alpha = weight_scale_2`` (gate and up must agree), ``input_global_scale = input_scale`` of
  gate / up (b12x quantizes x with it and folds it into FC1), ``fc2_input_scale = input_scale`` of
  down, ``w2_alpha = fc2_input_scale * weight_scale_2`` of down (float32 product: FC2's input is
  quantized divided by ``fc2_input_scale``), each ``[E]`` float32.
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
from ..layouts.quantize import NVFP4_BLOCK
from ..layouts.scale_interleave import scale_mma_storage, scale_mma_view

Expert = Dict[str, Dict[str, torch.Tensor]]

# Identifies the prepared byte layout written by this version of cute_moe; a reader compares it
# before using a converted checkpoint. Bump the trailing number whenever a layout changes.
LAYOUT_VERSIONS = {
    "bf16": f"trtllm-gen.bf16.epi{DEFAULT_EPILOGUE_TILE_M}.bk{BLOCK_K_BYTES}B.v1",
    "mxint4": (f"trtllm-gen.mxint4.epi{prepare.MXINT4_EPILOGUE_TILE_M}.bk{BLOCK_K_BYTES}B"
               f".sf{SCALE_TILE_ROWS}x{SCALE_TILE_COLS}.v1"),
    "nvfp4": f"b12x.nvfp4.sf{SCALE_TILE_ROWS}x{SCALE_TILE_COLS}.v1",
}

# prepare_static_weights_for_trtllm_mxint4_moe's result keys -> entry-point argument names
_MXINT4_NAMES = {"gemm1_weights": "gemm1_weights", "gemm1_scales": "gemm1_weights_scale",
                 "gemm2_weights": "gemm2_weights", "gemm2_scales": "gemm2_weights_scale"}


def layout_version(fmt: str) -> str:
    return LAYOUT_VERSIONS[fmt]


def supports(fmt: str, activation: ActivationType) -> bool:
    """bf16 and nvfp4 take gated (Swiglu) and ungated (Relu2) FC1; the MXINT4 layout is gated only."""
    return activation == ActivationType.Swiglu or (fmt in ("bf16", "nvfp4") and activation == ActivationType.Relu2)


def shared_fc1_values(fmt: str) -> Tuple[str, ...]:
    """Per-projection values that the fused FC1 takes once for gate and up."""
    return ("weight_scale_2", "input_scale") if fmt == "nvfp4" else ()


def size_multiples(fmt: str) -> Tuple[int, int]:
    """(H, I) must be multiples of these for the prepared layout and for the entry points.

    H is a BlockMajorK K (FC1) and a shuffled row count (FC2); I is a K (FC2) and ``M = 2I`` or ``I`` a shuffled row count.
    nvfp4 keeps rows as stored and pads the scale tiles: one 16-value scale block.
    """
    if fmt == "nvfp4":
        return NVFP4_BLOCK, NVFP4_BLOCK
    block = shuffle_block_size(DEFAULT_EPILOGUE_TILE_M)
    k_block = validate.BF16_K_BLOCK if fmt == "bf16" else validate.MXINT4_K_BLOCK
    return math.lcm(block, k_block), math.lcm(block, k_block, validate.INTERMEDIATE_MULTIPLE)


def check_entry_point_weights(fmt: str, prepared: Dict[str, torch.Tensor], activation: ActivationType,
                              hidden: int, inter: int) -> None:
    """The entry point's own weight checks (shape, dtype, contiguity, alignment) on a prepared layer."""
    num_experts = prepared["w1_weight" if fmt == "nvfp4" else "gemm1_weights"].shape[0]
    sizes = dict(hidden_size=hidden, intermediate_size=inter, local_num_experts=num_experts)
    if fmt == "bf16":
        validate.validate_bf16_weights(prepared["gemm1_weights"], prepared["gemm2_weights"],
                                       activation_type=activation, **sizes)
    elif fmt == "nvfp4":
        m = prepared["w1_weight"].shape[1]
        validate.validate_b12x_weights(
            w1_weight=prepared["w1_weight"], w2_weight=prepared["w2_weight"],
            w1_weight_sf=scale_mma_view(prepared["w1_weight_sf"], m, hidden // NVFP4_BLOCK, num_experts),
            w2_weight_sf=scale_mma_view(prepared["w2_weight_sf"], hidden, inter // NVFP4_BLOCK, num_experts),
            w1_alpha=prepared["w1_alpha"], w2_alpha=prepared["w2_alpha"], hidden_size=hidden,
            local_num_experts=num_experts, gated=activation.is_gated, device=prepared["w1_weight"].device)
        for name in ("fc2_input_scale", "input_global_scale"):
            validate.check_tensor(prepared[name], name, dtypes=(torch.float32,), shape=(num_experts,))
    else:
        validate.validate_mxint4_weights(prepared["gemm1_weights"], prepared["gemm1_weights_scale"],
                                         prepared["gemm2_weights"], prepared["gemm2_weights_scale"], **sizes)


def _fc1_checkpoint_rows(src: Expert, suffix: str) -> torch.Tensor:
    """``[gate (w1); up (w3)]`` rows as checkpoints fuse them."""
    return torch.cat([src["gate"][suffix], src["up"][suffix]], dim=0)


def _nvfp4_expert(src: Expert, activation: ActivationType) -> Dict[str, torch.Tensor]:
    fc1 = ("up", "gate") if activation.is_gated else ("up",)  # b12x's w1 rows are [up; gate]
    w1 = torch.cat([src[r]["weight"] for r in fc1], dim=0)
    s1 = torch.cat([src[r]["weight_scale"] for r in fc1], dim=0)
    p = prepare.prepare_b12x_fp4_moe_weights(w1[None], s1[None], src["down"]["weight"][None],
                                             src["down"]["weight_scale"][None])
    value = lambda role, suffix: src[role][suffix].reshape(1).to(torch.float32)  # noqa: E731
    fc2_input_scale = value("down", "input_scale")
    return {"w1_weight": p["w1_weight"], "w1_weight_sf": scale_mma_storage(p["w1_weight_sf"]),
            "w2_weight": p["w2_weight"], "w2_weight_sf": scale_mma_storage(p["w2_weight_sf"]),
            "w1_alpha": value("up", "weight_scale_2"), "w2_alpha": fc2_input_scale * value("down", "weight_scale_2"),
            "fc2_input_scale": fc2_input_scale, "input_global_scale": value("up", "input_scale")}


def _nvfp4_unprepare(prepared: Dict[str, torch.Tensor], activation: ActivationType) -> Expert:
    w1, w2 = prepared["w1_weight"], prepared["w2_weight"]
    m, h, i = w1.shape[1], w2.shape[1], 2 * w2.shape[2]
    back = prepare.unprepare_b12x_fp4_moe_weights(
        w1, scale_mma_view(prepared["w1_weight_sf"], m, h // NVFP4_BLOCK, 1),
        w2, scale_mma_view(prepared["w2_weight_sf"], h, i // NVFP4_BLOCK, 1))
    w1, s1 = back["w1_weight"][0], back["w1_scales"][0]
    shared = {"weight_scale_2": prepared["w1_alpha"][0], "input_scale": prepared["input_global_scale"][0]}
    out = {"down": {"weight": back["w2_weight"][0], "weight_scale": back["w2_scales"][0],
                    "input_scale": prepared["fc2_input_scale"][0], "weight_scale_2": None}}  # in w2_alpha
    if activation.is_gated:
        (w_up, w_gate), (s_up, s_gate) = w1.chunk(2, dim=0), s1.chunk(2, dim=0)
        out["gate"] = {"weight": w_gate, "weight_scale": s_gate, **shared}
        out["up"] = {"weight": w_up, "weight_scale": s_up, **shared}
    else:
        out["up"] = {"weight": w1, "weight_scale": s1, **shared}
    return out


def prepare_expert(fmt: str, src: Expert, activation: ActivationType) -> Dict[str, torch.Tensor]:
    """One expert's source tensors -> ``{name: prepared tensor [1, ...]}``."""
    if fmt == "nvfp4":
        return _nvfp4_expert(src, activation)
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
    """Inverse of :func:`prepare_expert` on one expert's slices ``[1, ...]`` -> ``{role: {suffix: [N, K]}}``
    (a value the format only holds combined with another, nvfp4's down ``weight_scale_2``, is None)."""
    if fmt == "nvfp4":
        return _nvfp4_unprepare(prepared, activation)
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
    elif fmt == "nvfp4":
        src = {r: {"weight": torch.zeros(n, k // 2, dtype=torch.uint8),
                   "weight_scale": torch.zeros(n, k // NVFP4_BLOCK, dtype=torch.float8_e4m3fn),
                   "weight_scale_2": torch.ones(()), "input_scale": torch.ones(())} for r, (n, k) in dims.items()}
    else:
        src = {r: {"weight_packed": torch.zeros(n, k // INT4_PER_INT32, dtype=torch.int32),
                   "weight_scale": torch.zeros(n, k // prepare.MXINT4_GROUP, dtype=torch.bfloat16)}
               for r, (n, k) in dims.items()}
    one = prepare_expert(fmt, src, activation)
    return {name: ((num_experts,) + tuple(t.shape[1:]), t.dtype) for name, t in one.items()}
