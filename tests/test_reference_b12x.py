"""The b12x float reference (cute_moe.reference_b12x) and b12x argument validation, on the CPU.

* W4A16 equals the bf16 reference MoE on the dequantized weights (an independent code path), with
  expert parallelism, for silu and relu2; "compressed_tensors" is "modelopt" with inverted scales;
* nvfp4 on activations that the quantizer represents exactly gives the same FC1 activations as W4A16
  on unit scales (the global scale divides, then multiplies back), and with ``input_global_scale``
  the same as W4A16 on the same ``w1_alpha`` (the scale folds into FC1);
* the activation quantizer's rounding (ties to even, saturation, empty blocks);
* every argument check names its argument.
"""

from __future__ import annotations

import pytest
import torch

from cute_moe.enums import ActivationType
from cute_moe.layouts.quantize import dequantize_nvfp4, quantize_nvfp4
from cute_moe.prepare import prepare_b12x_fp4_moe_weights
from cute_moe.reference import reference_moe_canonical
from cute_moe.reference_b12x import quantize_nvfp4_activations, reference_b12x_fused_moe


def _experts(e: int, h: int, i: int, gated: bool, seed: int = 0, global_scale=None):
    """Random FP4 experts: prepared tensors, per-expert decode scales (1/g) and the float weights
    they encode (``global_scale`` None: g = 448 * 6 / max|w| per expert)."""
    gen = torch.Generator().manual_seed(seed)
    m = 2 * i if gated else i
    w1 = torch.randn(e, m, h, generator=gen) * h ** -0.5
    w2 = torch.randn(e, h, i, generator=gen) * i ** -0.5
    packed, scales, alphas, floats = [], [], [], []
    for w in (w1, w2):
        q = [quantize_nvfp4(w[x], global_scale) for x in range(e)]
        packed.append(torch.stack([p for p, _, _ in q]))
        scales.append(torch.stack([s for _, s, _ in q]))
        alphas.append(torch.stack([1.0 / g for _, _, g in q]).float())
        floats.append(torch.stack([dequantize_nvfp4(p, s, g) for p, s, g in q]))
    prepared = prepare_b12x_fp4_moe_weights(packed[0], scales[0], packed[1], scales[1])
    return prepared, alphas, floats


def _routing(t: int, k: int, num_experts: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(num_experts, generator=gen)[:k] for _ in range(t)]).to(torch.int32)
    w = torch.rand(t, k, generator=gen) + 0.1
    return ids, (w / w.sum(-1, keepdim=True)).float()


def _call(prepared, x, ids, w, num_experts, alphas, **kw):
    return reference_b12x_fused_moe(
        x, prepared["w1_weight"], prepared["w1_weight_sf"], prepared["w2_weight"], prepared["w2_weight_sf"],
        ids, w, num_experts, ids.shape[1], w1_alpha=alphas[0], w2_alpha=alphas[1], **kw)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("local,offset", [(8, 0), (4, 3)])
def test_w4a16_equals_the_bf16_reference_on_dequantized_weights(gated, local, offset):
    num_experts, h, i, t, k = 8, 64, 48, 37, 3
    prepared, alphas, floats = _experts(local, h, i, gated)
    x = torch.randn(t, h).to(torch.bfloat16)
    ids, w = _routing(t, k, num_experts)
    out = _call(prepared, x, ids, w, num_experts, alphas, quant_mode="w4a16", activation="silu" if gated else "relu2",
                num_local_experts=local, local_expert_offset=offset)
    act = ActivationType.Swiglu if gated else ActivationType.Relu2
    ref = reference_moe_canonical(x, ids, w, floats[0], floats[1], act, offset, local)
    assert _rel(out.output_f32, ref.output_f32) < 1e-3
    # tokens whose slots all miss the local experts come out exactly zero
    miss = ((ids.long() < offset) | (ids.long() >= offset + local)).all(-1)
    assert bool((out.output[miss] == 0).all())
    assert bool((out.y[(ids.long() < offset) | (ids.long() >= offset + local)] == 0).all())


def test_compressed_tensors_scales_are_inverted():
    prepared, alphas, _ = _experts(4, 32, 32, True)
    x = torch.randn(9, 32).to(torch.bfloat16)
    ids, w = _routing(9, 2, 4)
    modelopt = _call(prepared, x, ids, w, 4, alphas, quant_mode="w4a16")
    inverted = [1.0 / a for a in alphas]
    compressed = _call(prepared, x, ids, w, 4, inverted, quant_mode="w4a16", source_format="compressed_tensors")
    assert _rel(compressed.output_f32, modelopt.output_f32) < 1e-5
    assert _rel(modelopt.output_f32, torch.zeros_like(modelopt.output_f32) + 1e-3) > 0.5  # not trivially zero


def test_nvfp4_on_representable_activations_matches_w4a16_fc1():
    """x blocks of q * sf * gs with max |q| = 6 and e4m3 sf are quantized exactly; with gs = w1_alpha
    a power of two FC1 is w1_alpha * ((x / gs) @ W^T) = x @ W^T, W4A16's FC1 at unit scales (the
    weights quantized with a unit global scale, as FlashInfer's own nvfp4 preparation does)."""
    e, h, i, t, k = 4, 64, 32, 11, 2
    prepared, _, _ = _experts(e, h, i, True, global_scale=1.0)
    gen = torch.Generator().manual_seed(3)
    magnitudes = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    q = magnitudes[torch.randint(0, 8, (t, h // 16, 16), generator=gen)]
    q = q * torch.where(torch.rand(q.shape, generator=gen) < 0.5, -1.0, 1.0)
    q[..., 0] = 6.0
    sf = torch.tensor([0.25, 0.5, 1.0, 1.125, 2.0])[torch.randint(0, 5, (t, h // 16, 1), generator=gen)]
    gs = 2.0 ** -3
    x = (q * sf * gs).flatten(-2).to(torch.bfloat16)
    assert torch.equal(quantize_nvfp4_activations(x.float(), torch.tensor(gs)) * gs, x.float())
    ids, w = _routing(t, k, e)
    ones = torch.ones(e)
    nv = _call(prepared, x, ids, w, e, (ones * gs, ones), fc2_input_scale=torch.ones(1))
    w4 = _call(prepared, x, ids, w, e, (ones, ones), quant_mode="w4a16")
    assert torch.equal(nv.act, w4.act)
    # FC2's input is quantized under nvfp4 only: the outputs differ by that quantization's error
    assert 0 < _rel(nv.output_f32, w4.output_f32) < 0.2


@pytest.mark.parametrize("scale", [0.5, 4.0])
def test_input_global_scale_quantizes_x_and_folds_into_fc1(scale):
    """With input_global_scale g, x is quantized with g and FC1 multiplied by w1_alpha * g: on x that
    g represents exactly, FC1 equals W4A16's with the same w1_alpha (ModelOpt's weight_scale_2)."""
    e, h, i, t, k = 4, 32, 32, 7, 2
    prepared, alphas, _ = _experts(e, h, i, True)
    gen = torch.Generator().manual_seed(5)
    q = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])[torch.randint(0, 8, (t, h // 16, 16), generator=gen)]
    q[..., 0] = -6.0
    x = (q * 0.5 * scale).flatten(-2).to(torch.bfloat16)  # sf = 0.5
    ids, w = _routing(t, k, e)
    nv = _call(prepared, x, ids, w, e, alphas, fc2_input_scale=torch.ones(1),
               input_global_scale=torch.full((e,), scale))
    w4 = _call(prepared, x, ids, w, e, alphas, quant_mode="w4a16")
    assert _rel(nv.act, w4.act) < 1e-6


def test_activation_quantizer_rounding():
    blk = torch.tensor([12.0, 0.5, -0.5, 1.5, 2.5, 3.5, 10.0, -12.0, 0.0, 1.0, 2.0, 5.0, 7.0, 9.0, 11.0, 6.0])
    # amax 12, gs 1: sf = 2; v / 2 -> 6, .25 -> 0 (tie, even), -.25 -> -0, .75 -> 1 (tie), 1.25 -> 1,
    # 1.75 -> 2, 5 -> 4 (tie), -6, 0, .5, 1, 2.5 -> 2, 3.5 -> 4, 4.5 -> 4, 5.5 -> 6, 3
    expect = torch.tensor([6.0, 0.0, -0.0, 1.0, 1.0, 2.0, 4.0, -6.0, 0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 6.0, 3.0]) * 2
    got = quantize_nvfp4_activations(blk[None], torch.tensor(1.0))[0]
    assert torch.equal(got, expect)
    # the global scale divides: the same block at gs = 4 has sf = 0.5 and the same codes
    assert torch.equal(quantize_nvfp4_activations(blk[None], torch.tensor(4.0))[0] * 4, expect)
    # an all-zero block stays zero; a block past 448 * 6 * gs saturates the scale at 448 and the codes at 6
    assert torch.equal(quantize_nvfp4_activations(torch.zeros(1, 16), torch.tensor(1.0)), torch.zeros(1, 16))
    big = torch.full((1, 16), 448.0 * 6 * 3)
    assert torch.equal(quantize_nvfp4_activations(big, torch.tensor(1.0)), torch.full((1, 16), 448.0 * 6))
    # one global scale per row
    rows = torch.stack([blk, blk])
    two = quantize_nvfp4_activations(rows, torch.tensor([1.0, 4.0]))
    assert torch.equal(two[0], expect) and torch.equal(two[1] * 4, expect)


def test_output_argument_receives_the_result():
    prepared, alphas, _ = _experts(2, 32, 16, True)
    x = torch.randn(5, 32).to(torch.bfloat16)
    ids, w = _routing(5, 1, 2)
    out = torch.full((5, 32), float("nan"), dtype=torch.bfloat16)
    res = _call(prepared, x, ids, w, 2, alphas, fc2_input_scale=torch.ones(2), output=out)
    assert torch.equal(out, res.output)
    empty = _call(prepared, x[:0], ids[:0], w[:0], 2, alphas, fc2_input_scale=torch.ones(1))
    assert empty.output.shape == (0, 32)


@pytest.mark.parametrize("change,match", [
    (dict(x=torch.zeros(5, 32)), "x"),
    (dict(quant_mode="mxfp4"), "quant_mode"),
    (dict(quant_mode="int8"), "quant_mode"),
    (dict(quant_mode=None, activation_precision="fp8"), "activation_precision"),
    (dict(source_format="compressed_tensors"), "source_format"),
    (dict(source_format="gguf", quant_mode="w4a16"), "source_format"),
    (dict(activation="gelu"), "activation"),
    (dict(activation="relu2"), "w1_weight"),
    (dict(fc2_input_scale=None), "fc2_input_scale"),
    (dict(fc2_input_scale=torch.ones(3)), "fc2_input_scale"),
    (dict(input_global_scale=torch.ones(2, 2)), "input_global_scale"),
    (dict(input_global_scale=torch.ones(1), quant_mode="w4a16"), "input_global_scale"),
    (dict(w1_alpha=torch.ones(2, dtype=torch.float64)), "w1_alpha"),
    (dict(w2_alpha=torch.ones(3)), "w2_alpha"),
    (dict(token_final_scales=torch.ones(5, 3)), "token_final_scales"),
    (dict(token_final_scales=torch.ones(5, 2, dtype=torch.float16)), "token_final_scales"),
    (dict(token_selected_experts=torch.zeros(5, 2, dtype=torch.int64)), "token_selected_experts"),
    (dict(token_selected_experts=torch.full((5, 2), 7, dtype=torch.int32)), "token_selected_experts"),
    (dict(num_local_experts=3), "w1_weight"),
    (dict(num_local_experts=2, local_expert_offset=3), "num_local_experts"),
    (dict(top_k=5), "top_k"),
    (dict(output=torch.zeros(5, 32)), "output"),
    (dict(output_dtype=torch.float16), "output_dtype"),
    (dict(w1_weight_sf="scales"), "w1_weight_sf"),
])
def test_arguments_are_checked(change, match):
    prepared, alphas, _ = _experts(4, 32, 16, True)
    ids, w = _routing(5, 2, 4)
    args = dict(x=torch.randn(5, 32).to(torch.bfloat16), w1_weight=prepared["w1_weight"],
                w1_weight_sf=prepared["w1_weight_sf"], w2_weight=prepared["w2_weight"],
                w2_weight_sf=prepared["w2_weight_sf"], token_selected_experts=ids, token_final_scales=w,
                num_experts=4, top_k=2, w1_alpha=alphas[0], w2_alpha=alphas[1], fc2_input_scale=torch.ones(1))
    args.update(change)
    if "top_k" in change:
        args["token_selected_experts"] = torch.zeros(5, 5, dtype=torch.int32)
        args["token_final_scales"] = torch.ones(5, 5)
    positional = [args.pop(n) for n in ("x", "w1_weight", "w1_weight_sf", "w2_weight", "w2_weight_sf",
                                        "token_selected_experts", "token_final_scales", "num_experts", "top_k")]
    with pytest.raises((ValueError, TypeError), match=match):
        reference_b12x_fused_moe(*positional, **args)
