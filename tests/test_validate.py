"""Argument checks: valid calls pass, each class of bad argument is rejected by name (CPU only)."""

import math
from types import SimpleNamespace

import pytest
import torch

from cute_moe import validate
from cute_moe.enums import ActivationType, RoutingInputMode, RoutingMethodType, WeightLayout

BF16 = torch.bfloat16


def _int(gen, lo, hi):
    """Uniform int in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def _pick(gen, options):
    return options[_int(gen, 0, len(options) - 1)]


def _topk(gen, t, k, e):
    ids = torch.rand(t, e, generator=gen).argsort(dim=1)[:, :k].to(torch.int32)
    weights = torch.rand(t, k, generator=gen).to(BF16)
    return ids, weights


def _packed(ids, weights):
    return (ids << 16) | (weights.view(torch.int16).to(torch.int32) & 0xFFFF)


def _geometry(gen, h_options, i_options):
    e = _pick(gen, [8, 16, 32])
    local = _int(gen, 1, e)
    return SimpleNamespace(t=_int(gen, 0, 9), e=e, k=_int(gen, 1, min(8, e)), local=local,
                           offset=_int(gen, 0, e - local), h=_pick(gen, h_options), i=_pick(gen, i_options))


def _routing(gen, g, routing):
    """Routing arguments of one call: from logits, packed top-k, or an (ids, weights) pair."""
    if routing == "logits":
        return dict(routing_logits=torch.randn(g.t, g.e, generator=gen),
                    routing_bias=torch.randn(g.e, generator=gen).to(BF16))
    ids, weights = _topk(gen, g.t, g.k, g.e)
    return dict(topk_ids=_packed(ids, weights) if routing == "packed" else (ids, weights))


def bf16_args(gen, routing="logits", act=ActivationType.Swiglu):
    g = _geometry(gen, h_options=[64, 128, 192], i_options=[128, 256])
    m = 2 * g.i if act == ActivationType.Swiglu else g.i
    args = dict(
        hidden_states=torch.randn(g.t, g.h, generator=gen).to(BF16),
        # Weight values are never read by the checks; only their metadata matters.
        gemm1_weights=torch.empty(g.local, g.h // 64, m, 64, dtype=BF16),
        gemm2_weights=torch.empty(g.local, g.i // 64, g.h, 64, dtype=BF16),
        num_experts=g.e, top_k=g.k, n_group=None, topk_group=None, intermediate_size=g.i,
        local_expert_offset=g.offset, local_num_experts=g.local,
        routing_method_type=RoutingMethodType.Renormalize, activation_type=act, require_cuda=False,
    )
    args.update(_routing(gen, g, routing))
    return args, g


def mxint4_args(gen, routing="logits"):
    g = _geometry(gen, h_options=[256, 512], i_options=[256, 512])
    args = dict(
        hidden_states=torch.randn(g.t, g.h, generator=gen).to(BF16),
        gemm1_weights=torch.empty(g.local, g.h // 256, 2 * g.i, 128, dtype=torch.uint8),
        gemm1_weights_scale=torch.empty(g.local, 2 * g.i * g.h // 32, dtype=BF16),
        gemm2_weights=torch.empty(g.local, g.i // 256, g.h, 128, dtype=torch.uint8),
        gemm2_weights_scale=torch.empty(g.local, g.h * g.i // 32, dtype=BF16),
        num_experts=g.e, top_k=g.k, n_group=None, topk_group=None, intermediate_size=g.i,
        local_expert_offset=g.offset, local_num_experts=g.local,
        routing_method_type=RoutingMethodType.Renormalize, require_cuda=False,
    )
    args.update(_routing(gen, g, routing))
    return args, g


def _misaligned(shape, dtype):
    """A contiguous view whose data pointer sits one element past a 16-byte boundary."""
    flat = torch.zeros(math.prod(shape) + 1, dtype=dtype)
    view = flat[1:].view(shape)
    assert view.is_contiguous() and view.data_ptr() % 16
    return view


# ---------------------------------------------------------------------------------------------
# Valid calls pass
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", [ActivationType.Swiglu, ActivationType.Relu2])
@pytest.mark.parametrize("routing,mode", [("logits", RoutingInputMode.FromLogits),
                                          ("packed", RoutingInputMode.PackedPrecomputed),
                                          ("pair", RoutingInputMode.UnpackedPrecomputed)])
def test_bf16_valid_call_passes(seeded, act, routing, mode):
    args, g = bf16_args(seeded, routing, act)
    args["output"] = torch.empty(g.t, g.h, dtype=BF16)
    args["routing_replay_out"] = torch.empty(g.t + _int(seeded, 0, 5), g.k, dtype=torch.int16)
    if act == ActivationType.Swiglu:
        for name in ("gemm1_alpha", "gemm1_beta", "gemm1_clamp_limit"):
            args[name] = torch.rand(g.local, generator=seeded)
        if routing != "logits":
            args["gemm1_lora_delta"] = torch.randn(g.t, g.k, 2 * g.i, generator=seeded).to(BF16)
    assert validate.validate_bf16_moe_args(**args) == mode


@pytest.mark.parametrize("routing,mode", [("logits", RoutingInputMode.FromLogits),
                                          ("packed", RoutingInputMode.PackedPrecomputed)])
def test_mxint4_valid_call_passes(seeded, routing, mode):
    args, g = mxint4_args(seeded, routing)
    args["output"] = torch.empty(g.t, g.h, dtype=BF16)
    args["gemm1_alpha"] = torch.rand(g.local, generator=seeded)
    if routing == "packed":
        args["gemm1_lora_delta"] = torch.randn(g.t, g.k, 2 * g.i, generator=seeded).to(BF16)
    assert validate.validate_mxint4_moe_args(**args) == mode


def test_deepseek_grouped_routing_passes(seeded):
    args, g = bf16_args(seeded)
    e = _pick(seeded, [64, 128, 256])
    n_group = 8
    topk_group = _int(seeded, 1, 4)
    k = _int(seeded, 1, min(8, topk_group * e // n_group))
    args.update(num_experts=e, top_k=k, n_group=n_group, topk_group=topk_group, local_expert_offset=0,
                local_num_experts=g.local, routing_method_type=RoutingMethodType.DeepSeekV3,
                routing_logits=torch.randn(g.t, e, generator=seeded),
                routing_bias=torch.randn(e, generator=seeded), routed_scaling_factor=2.5)
    assert validate.validate_bf16_moe_args(**args) == RoutingInputMode.FromLogits


@pytest.mark.parametrize("act", [ActivationType.Swiglu, ActivationType.Relu2])
def test_prepared_bf16_weights_pass(seeded, act):
    from cute_moe.prepare import prepare_bf16_moe_weights

    args, g = bf16_args(seeded, "packed", act)
    m = 2 * g.i if act == ActivationType.Swiglu else g.i
    w1, w2 = prepare_bf16_moe_weights(torch.randn(g.local, m, g.h, generator=seeded).to(BF16),
                                      torch.randn(g.local, g.h, g.i, generator=seeded).to(BF16), act)
    args.update(gemm1_weights=w1, gemm2_weights=w2)
    assert validate.validate_bf16_moe_args(**args) == RoutingInputMode.PackedPrecomputed


def test_prepared_mxint4_weights_pass(seeded):
    from cute_moe.prepare import prepare_mxint4_moe_weights, quantize_mxint4

    args, g = mxint4_args(seeded, "packed")
    q1, s1 = quantize_mxint4(torch.randn(g.local, 2 * g.i, g.h, generator=seeded))
    q2, s2 = quantize_mxint4(torch.randn(g.local, g.h, g.i, generator=seeded))
    w1, w1s, w2, w2s = prepare_mxint4_moe_weights(q1, s1, q2, s2)
    args.update(gemm1_weights=w1, gemm1_weights_scale=w1s, gemm2_weights=w2, gemm2_weights_scale=w2s)
    assert validate.validate_mxint4_moe_args(**args) == RoutingInputMode.PackedPrecomputed


def test_checks_never_read_tensor_values():
    # Meta tensors carry shapes and dtypes but no data: any value read would raise.
    meta = torch.device("meta")
    t, h, i, e, k, local = 3, 128, 128, 16, 4, 8
    args = dict(
        hidden_states=torch.empty(t, h, dtype=BF16, device=meta),
        gemm1_weights=torch.empty(local, h // 64, 2 * i, 64, dtype=BF16, device=meta),
        gemm2_weights=torch.empty(local, i // 64, h, 64, dtype=BF16, device=meta),
        num_experts=e, top_k=k, n_group=4, topk_group=2, intermediate_size=i, local_expert_offset=8,
        local_num_experts=local, routing_method_type=RoutingMethodType.DeepSeekV3,
        topk_ids=torch.empty(t, k, dtype=torch.int32, device=meta),
        routing_replay_out=torch.empty(t, k, dtype=torch.int16, device=meta),
        gemm1_lora_delta=torch.empty(t, k, 2 * i, dtype=BF16, device=meta),
        output=torch.empty(t, h, dtype=BF16, device=meta), require_cuda=False,
    )
    assert validate.validate_bf16_moe_args(**args) == RoutingInputMode.PackedPrecomputed


def test_validate_moe_call_dispatches_on_weight_kind(seeded):
    args, g = bf16_args(seeded, "pair")
    ids, weights = args["topk_ids"]
    call = SimpleNamespace(
        mode=RoutingInputMode.UnpackedPrecomputed, hidden_states=args["hidden_states"],
        weights=SimpleNamespace(kind="bf16", gemm1=args["gemm1_weights"], gemm2=args["gemm2_weights"],
                                gemm1_scale=None, gemm2_scale=None),
        num_experts=g.e, top_k=g.k, n_group=None, topk_group=None, intermediate_size=g.i,
        local_expert_offset=g.offset, local_num_experts=g.local, routed_scaling_factor=None,
        routing_method_type=1, activation_type=3, norm_topk_prob=True, routing_logits=None,
        routing_bias=None, topk_ids=ids, topk_weights=weights, routing_replay_out=None,
        gemm1_lora_delta=None, gemm1_alpha=None, gemm1_beta=None, gemm1_clamp_limit=None,
        do_finalize=True, output=None, gemm_variant=None)
    assert validate.validate_moe_call(call, require_cuda=False) == RoutingInputMode.UnpackedPrecomputed
    with pytest.raises(ValueError, match="hidden_states: expected a tensor on a CUDA device"):
        validate.validate_moe_call(call)
    call.weights = SimpleNamespace(kind="fp8", gemm1=None, gemm2=None)
    with pytest.raises(ValueError, match="weights"):
        validate.validate_moe_call(call, require_cuda=False)


# ---------------------------------------------------------------------------------------------
# Tensors: dtype, shape, device, contiguity, alignment
# ---------------------------------------------------------------------------------------------


def test_rejects_wrong_dtype(seeded):
    args, g = bf16_args(seeded)
    args["hidden_states"] = args["hidden_states"].half()
    with pytest.raises(TypeError, match=r"hidden_states: expected dtype torch.bfloat16, got torch.float16"):
        validate.validate_bf16_moe_args(**args)
    args, g = bf16_args(seeded)
    args["routing_logits"] = args["routing_logits"].half()
    with pytest.raises(TypeError, match="routing_logits"):
        validate.validate_bf16_moe_args(**args)
    args, g = mxint4_args(seeded)
    args["gemm1_weights"] = args["gemm1_weights"].to(torch.int8)
    with pytest.raises(TypeError, match="gemm1_weights: expected dtype torch.uint8"):
        validate.validate_mxint4_moe_args(**args)
    args, g = mxint4_args(seeded)
    args["gemm2_weights_scale"] = args["gemm2_weights_scale"].float()
    with pytest.raises(TypeError, match="gemm2_weights_scale"):
        validate.validate_mxint4_moe_args(**args)


def test_rejects_wrong_bf16_weight_shape(seeded):
    args, g = bf16_args(seeded)
    good = tuple(args["gemm1_weights"].shape)
    args["gemm1_weights"] = torch.empty(*good[:3], 32, dtype=BF16)
    want = rf"gemm1_weights: expected shape \[L, H/64, 2I, 64\] = \[{', '.join(map(str, good))}\], got \("
    with pytest.raises(ValueError, match=want):
        validate.validate_bf16_moe_args(**args)
    # The leading dim is the number of local experts, not num_experts.
    args, g = bf16_args(seeded)
    w2 = args["gemm2_weights"]
    args["gemm2_weights"] = torch.empty(g.local + 1, *w2.shape[1:], dtype=BF16)
    with pytest.raises(ValueError, match=r"gemm2_weights: expected shape \[L, I/64, H, 64\]"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_relu2_weights_with_gated_rows(seeded):
    args, g = bf16_args(seeded, act=ActivationType.Swiglu)
    args["activation_type"] = ActivationType.Relu2
    with pytest.raises(ValueError, match=r"gemm1_weights: expected shape \[L, H/64, I, 64\]"):
        validate.validate_bf16_moe_args(**args)


@pytest.mark.parametrize("name", ["gemm1_weights", "gemm1_weights_scale", "gemm2_weights",
                                  "gemm2_weights_scale"])
def test_rejects_wrong_mxint4_weight_shape(seeded, name):
    args, g = mxint4_args(seeded)
    t = args[name]
    args[name] = t[..., :-1].contiguous()
    with pytest.raises(ValueError, match=rf"{name}: expected shape"):
        validate.validate_mxint4_moe_args(**args)


def test_rejects_mxint4_scales_in_checkpoint_shape(seeded):
    args, g = mxint4_args(seeded)
    args["gemm1_weights_scale"] = args["gemm1_weights_scale"].view(g.local, 2 * g.i, g.h // 32)
    with pytest.raises(ValueError, match=r"gemm1_weights_scale: expected shape \[L, 2I\*H/32\]"):
        validate.validate_mxint4_moe_args(**args)


def test_rejects_cpu_tensors_for_gpu_entry(seeded):
    args, g = bf16_args(seeded)
    args["require_cuda"] = True
    with pytest.raises(ValueError, match="hidden_states: expected a tensor on a CUDA device, got a tensor on cpu$"):
        validate.validate_bf16_moe_args(**args)
    args, g = mxint4_args(seeded)
    args["require_cuda"] = True
    with pytest.raises(ValueError, match="hidden_states: expected a tensor on a CUDA device"):
        validate.validate_mxint4_moe_args(**args)


@pytest.mark.parametrize("name", ["gemm1_weights", "gemm2_weights", "routing_logits", "routing_bias"])
def test_rejects_tensor_on_another_device(seeded, name):
    args, g = bf16_args(seeded)
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=rf"{name}: expected a tensor on cpu, got a tensor on meta"):
        validate.validate_bf16_moe_args(**args)


@pytest.mark.parametrize("name", ["gemm1_weights_scale", "gemm2_weights"])
def test_rejects_mxint4_tensor_on_another_device(seeded, name):
    args, g = mxint4_args(seeded, "packed")
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=rf"{name}: expected a tensor on cpu"):
        validate.validate_mxint4_moe_args(**args)


def test_rejects_pair_weights_on_another_device(seeded):
    args, g = bf16_args(seeded, "pair")
    ids, weights = args["topk_ids"]
    args["topk_ids"] = (ids, weights.to("meta"))
    with pytest.raises(ValueError, match="topk_weights: expected a tensor on cpu"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_non_contiguous(seeded):
    args, g = bf16_args(seeded)
    args["routing_logits"] = torch.randn(g.e, g.t, generator=seeded).t()
    if g.t > 1:
        with pytest.raises(ValueError, match="routing_logits: expected a contiguous tensor"):
            validate.validate_bf16_moe_args(**args)
    args, g = bf16_args(seeded)
    w = args["gemm2_weights"]
    args["gemm2_weights"] = torch.empty(w.shape[0], w.shape[1], w.shape[3], w.shape[2], dtype=BF16).transpose(2, 3)
    with pytest.raises(ValueError, match="gemm2_weights: expected a contiguous tensor"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_misaligned_view(seeded):
    args, g = bf16_args(seeded)
    args["hidden_states"] = _misaligned((max(g.t, 1), g.h), BF16)
    args["routing_logits"] = torch.randn(max(g.t, 1), g.e, generator=seeded)
    with pytest.raises(ValueError, match="hidden_states: expected a data pointer aligned to 16 bytes"):
        validate.validate_bf16_moe_args(**args)
    args, g = bf16_args(seeded)
    args["gemm1_weights"] = _misaligned(tuple(args["gemm1_weights"].shape), BF16)
    with pytest.raises(ValueError, match="gemm1_weights: expected a data pointer aligned"):
        validate.validate_bf16_moe_args(**args)
    args, g = mxint4_args(seeded)
    args["gemm2_weights_scale"] = _misaligned(tuple(args["gemm2_weights_scale"].shape), BF16)
    with pytest.raises(ValueError, match="gemm2_weights_scale: expected a data pointer aligned"):
        validate.validate_mxint4_moe_args(**args)


# ---------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------


def test_rejects_num_experts_not_matching_logits(seeded):
    args, g = bf16_args(seeded)
    args["num_experts"] = g.e + _int(seeded, 1, 8)
    with pytest.raises(ValueError, match=rf"routing_logits: expected shape \[num_tokens, num_experts\] "
                                         rf"= \[{g.t}, {args['num_experts']}\]"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_logits_token_count_mismatch(seeded):
    args, g = bf16_args(seeded)
    args["routing_logits"] = torch.randn(g.t + 1, g.e, generator=seeded)
    with pytest.raises(ValueError, match="routing_logits: expected shape"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_routing_bias_shape(seeded):
    args, g = bf16_args(seeded)
    args["routing_bias"] = torch.randn(g.e - 1, generator=seeded)
    with pytest.raises(ValueError, match=r"routing_bias: expected shape \[num_experts\]"):
        validate.validate_bf16_moe_args(**args)


@pytest.mark.parametrize("routing", ["logits", "packed"])
def test_rejects_top_k_above_num_experts(seeded, routing):
    args, g = bf16_args(seeded, routing)
    args["top_k"] = g.e + _int(seeded, 1, 4)
    with pytest.raises(ValueError, match=rf"top_k: expected 1 <= top_k <= num_experts = {g.e}"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_top_k_below_one(seeded):
    args, g = bf16_args(seeded)
    args["top_k"] = 0
    with pytest.raises(ValueError, match="top_k: expected an int >= 1"):
        validate.validate_bf16_moe_args(**args)


@pytest.mark.parametrize("routing", ["packed", "pair"])
def test_rejects_top_k_mismatch_with_topk_ids(seeded, routing):
    args, g = bf16_args(seeded, routing)
    if g.k == 1:
        args["top_k"] = 2
    else:
        args["top_k"] = g.k - 1
    with pytest.raises(ValueError, match=rf"topk_ids: expected shape .* \(top_k = {args['top_k']}\), "
                                         rf"got \({g.t}, {g.k}\)"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_pair_weights_shape(seeded):
    args, g = bf16_args(seeded, "pair")
    ids, _ = args["topk_ids"]
    args["topk_ids"] = (ids, torch.rand(g.t, g.k + 1, generator=seeded))
    with pytest.raises(ValueError, match="topk_weights: expected shape"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_topk_ids_token_count_mismatch(seeded):
    args, g = bf16_args(seeded, "packed")
    args["topk_ids"] = torch.zeros(g.t + 1, g.k, dtype=torch.int32)
    with pytest.raises(ValueError, match="topk_ids: expected shape"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_wrong_topk_ids_dtype(seeded):
    args, g = bf16_args(seeded, "packed")
    args["topk_ids"] = args["topk_ids"].long()
    with pytest.raises(TypeError, match="topk_ids: expected dtype torch.int32"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_pair_for_mxint4(seeded):
    args, g = mxint4_args(seeded, "packed")
    ids, weights = _topk(seeded, g.t, g.k, g.e)
    args["topk_ids"] = (ids, weights)
    with pytest.raises(TypeError, match="topk_ids: expected a packed int32 tensor"):
        validate.validate_mxint4_moe_args(**args)


def test_rejects_two_routing_sources(seeded):
    args, g = bf16_args(seeded)
    args["topk_ids"] = _packed(*_topk(seeded, g.t, g.k, g.e))
    with pytest.raises(ValueError, match="topk_ids: expected None when routing_logits is given"):
        validate.validate_bf16_moe_args(**args)
    args, g = bf16_args(seeded, "packed")
    args["routing_bias"] = torch.randn(g.e, generator=seeded)
    with pytest.raises(ValueError, match="routing_bias: expected None with precomputed topk_ids"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_missing_routing(seeded):
    args, g = bf16_args(seeded)
    args["routing_logits"] = None
    with pytest.raises(TypeError, match="routing_logits: expected a torch.Tensor"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_expert_window_outside_num_experts(seeded):
    args, g = bf16_args(seeded)
    args["local_expert_offset"] = -1
    with pytest.raises(ValueError, match="local_expert_offset: expected an int >= 0"):
        validate.validate_bf16_moe_args(**args)
    args, g = bf16_args(seeded)
    args["local_expert_offset"] = g.e - g.local + 1
    with pytest.raises(ValueError, match="local_expert_offset: expected local_expert_offset \\+ local_num_experts"):
        validate.validate_bf16_moe_args(**args)
    args, g = bf16_args(seeded, "packed")
    args["local_num_experts"] = 0
    with pytest.raises(ValueError, match="local_num_experts: expected an int >= 1"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_non_int_sizes(seeded):
    args, g = bf16_args(seeded)
    args["num_experts"] = float(g.e)
    with pytest.raises(TypeError, match="num_experts: expected an int"):
        validate.validate_bf16_moe_args(**args)


def _deepseek(seeded, routing="logits", e=64, n_group=8, topk_group=4, k=8):
    args, g = bf16_args(seeded, routing)
    args.update(num_experts=e, top_k=k, n_group=n_group, topk_group=topk_group, local_expert_offset=0,
                local_num_experts=g.local, routing_method_type=RoutingMethodType.DeepSeekV3)
    if routing == "logits":
        args.update(routing_logits=torch.randn(g.t, e, generator=seeded), routing_bias=None)
    else:
        args["topk_ids"] = _packed(*_topk(seeded, g.t, k, e))
    return args


@pytest.mark.parametrize("routing", ["logits", "packed"])
def test_rejects_n_group_not_dividing_num_experts(seeded, routing):
    args = _deepseek(seeded, routing, e=_pick(seeded, [40, 64, 128]), n_group=3, topk_group=2, k=4)
    with pytest.raises(ValueError, match=rf"n_group: expected a divisor of num_experts = {args['num_experts']}"):
        validate.validate_bf16_moe_args(**args)


@pytest.mark.parametrize("routing", ["logits", "packed"])
def test_rejects_topk_group_above_n_group(seeded, routing):
    args = _deepseek(seeded, routing, n_group=2, topk_group=3, k=4)
    with pytest.raises(ValueError, match=r"topk_group: expected 1 <= topk_group <= min\(n_group, 4\) = 2"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_grouped_routing_limits(seeded):
    with pytest.raises(ValueError, match=r"topk_group: expected 1 <= topk_group <= min\(n_group, 4\) = 4"):
        validate.validate_bf16_moe_args(**_deepseek(seeded, n_group=8, topk_group=5))
    with pytest.raises(ValueError, match="topk_group: expected 1 <= topk_group"):
        validate.validate_bf16_moe_args(**_deepseek(seeded, n_group=8, topk_group=None))
    with pytest.raises(ValueError, match="top_k: expected top_k <= 22"):
        validate.validate_bf16_moe_args(**_deepseek(seeded, e=256, k=23))
    with pytest.raises(ValueError, match=r"top_k: expected top_k <= topk_group \* num_experts / n_group "
                                         r"= 1 \* 64 / 8 = 8"):
        validate.validate_bf16_moe_args(**_deepseek(seeded, topk_group=1, k=9))
    with pytest.raises(ValueError, match="n_group: expected n_group <= 8"):
        validate.validate_bf16_moe_args(**_deepseek(seeded, e=256, n_group=16, topk_group=4))
    with pytest.raises(ValueError, match=r"n_group: expected num_experts / n_group <= 32 \(n_group >= 8"):
        validate.validate_bf16_moe_args(**_deepseek(seeded, e=256, n_group=4, topk_group=4))
    with pytest.raises(ValueError, match="num_experts: expected a multiple of 4"):
        validate.validate_bf16_moe_args(**_deepseek(seeded, e=42, n_group=2, topk_group=2, k=4))


def test_routed_skips_routing_kernel_capacity_limits(seeded):
    # Capacity limits of the logits->top-k kernels do not apply to precomputed routing.
    args = _deepseek(seeded, "packed", e=256, n_group=4, topk_group=4)
    assert validate.validate_bf16_moe_args(**args) == RoutingInputMode.PackedPrecomputed
    args, g = bf16_args(seeded, "packed")
    e = 4096
    args.update(num_experts=e, topk_ids=_packed(*_topk(seeded, g.t, g.k, e)))
    assert validate.validate_bf16_moe_args(**args) == RoutingInputMode.PackedPrecomputed
    args.update(routing_logits=torch.randn(g.t, e, generator=seeded), topk_ids=None)
    with pytest.raises(ValueError, match="num_experts: expected num_experts <= 2048 for Renormalize routing"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_ungrouped_top_k_above_32(seeded):
    args, g = bf16_args(seeded)
    e = 64
    args.update(num_experts=e, top_k=33, routing_logits=torch.randn(g.t, e, generator=seeded),
                routing_bias=None, routing_method_type=RoutingMethodType.TopK)
    with pytest.raises(ValueError, match="top_k: expected top_k <= 32 for TopK routing"):
        validate.validate_bf16_moe_args(**args)


@pytest.mark.parametrize("routing", ["logits", "packed"])
def test_rejects_llama4_top_k_above_one(seeded, routing):
    args, g = bf16_args(seeded, routing)
    args["routing_method_type"] = RoutingMethodType.Llama4
    if g.k == 1:
        args["top_k"] = 2
        if routing == "packed":
            args["topk_ids"] = _packed(*_topk(seeded, g.t, 2, g.e))
    with pytest.raises(ValueError, match="top_k: expected top_k == 1 for Llama4 routing"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_llama4_too_many_experts(seeded):
    args, g = bf16_args(seeded)
    e = 256
    args.update(num_experts=e, top_k=1, routing_method_type=RoutingMethodType.Llama4,
                routing_logits=torch.randn(g.t, e, generator=seeded), routing_bias=None)
    with pytest.raises(ValueError, match="num_experts: expected num_experts <= 128 for Llama4 routing"):
        validate.validate_bf16_moe_args(**args)


@pytest.mark.parametrize("value,got", [(10, "Unspecified=10"), (42, "42"), (-1, "-1")])
@pytest.mark.parametrize("routing", ["logits", "packed"])
def test_rejects_bad_routing_method_type(seeded, value, got, routing):
    args, g = bf16_args(seeded, routing)
    args["routing_method_type"] = value
    with pytest.raises(ValueError, match=rf"routing_method_type: expected one of Default=0, .*, got {got}$"):
        validate.validate_bf16_moe_args(**args)


@pytest.mark.parametrize("method", list(validate.ROUTING_METHODS))
def test_every_routing_method_accepted(seeded, method):
    args, g = bf16_args(seeded)
    args["routing_method_type"] = int(method)
    if method == RoutingMethodType.Llama4:
        args["top_k"] = 1
    assert validate.validate_bf16_moe_args(**args) == RoutingInputMode.FromLogits


def test_rejects_non_finite_routed_scaling_factor(seeded):
    args, g = bf16_args(seeded)
    args["routed_scaling_factor"] = float("nan")
    with pytest.raises(ValueError, match="routed_scaling_factor: expected a finite float"):
        validate.validate_bf16_moe_args(**args)
    args["routed_scaling_factor"] = "2.5"
    with pytest.raises(TypeError, match="routed_scaling_factor"):
        validate.validate_bf16_moe_args(**args)


@pytest.mark.parametrize("routing", ["logits", "pair"])
def test_rejects_routing_replay_out_too_small(seeded, routing):
    args, g = bf16_args(seeded, routing)
    if g.t == 0:
        args["hidden_states"] = torch.randn(2, g.h, generator=seeded).to(BF16)
        args.update(_routing(seeded, SimpleNamespace(t=2, e=g.e, k=g.k), routing))
        g.t = 2
    args["routing_replay_out"] = torch.empty(g.t - 1, g.k, dtype=torch.int16)
    with pytest.raises(ValueError, match=rf"routing_replay_out: expected shape \[>= num_tokens, top_k\] "
                                         rf"= \[>= {g.t}, {g.k}\]"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_routing_replay_out_wrong_columns(seeded):
    args, g = mxint4_args(seeded)
    args["routing_replay_out"] = torch.empty(g.t, g.k + 1, dtype=torch.int16)
    with pytest.raises(ValueError, match="routing_replay_out: expected shape"):
        validate.validate_mxint4_moe_args(**args)


def test_rejects_routing_replay_out_wrong_dtype(seeded):
    args, g = bf16_args(seeded)
    args["routing_replay_out"] = torch.empty(g.t, g.k, dtype=torch.int32)
    with pytest.raises(TypeError, match="routing_replay_out: expected dtype torch.int16, got torch.int32"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_routing_replay_out_non_contiguous(seeded):
    args, g = bf16_args(seeded, "packed")
    args["routing_replay_out"] = torch.empty(g.t + 2, g.k + 1, dtype=torch.int16)[:, :g.k]
    with pytest.raises(ValueError, match="routing_replay_out: expected a contiguous tensor"):
        validate.validate_bf16_moe_args(**args)


# ---------------------------------------------------------------------------------------------
# FC1 activation, layout flags, sizes, LoRA, output
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,got", [(ActivationType.Geglu, "Geglu=4"), (ActivationType.Silu, "Silu=2"),
                                       (99, "99")])
def test_rejects_bad_activation_type(seeded, value, got):
    args, g = bf16_args(seeded)
    args["activation_type"] = value
    with pytest.raises(ValueError, match=rf"activation_type: expected one of Swiglu=3, Relu2=6, got {got}"):
        validate.validate_bf16_moe_args(**args)


@pytest.mark.parametrize("name", ["gemm1_alpha", "gemm1_beta", "gemm1_clamp_limit"])
def test_rejects_swiglu_params_with_relu2(seeded, name):
    args, g = bf16_args(seeded, act=ActivationType.Relu2)
    args[name] = torch.rand(g.local, generator=seeded)
    with pytest.raises(ValueError, match=rf"{name}: expected None unless activation_type is Swiglu"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_swiglu_param_shape_and_dtype(seeded):
    args, g = bf16_args(seeded)
    args["gemm1_alpha"] = torch.rand(g.e + 1, generator=seeded)
    with pytest.raises(ValueError, match=rf"gemm1_alpha: expected shape \[local_num_experts\] = \[{g.local}\]"):
        validate.validate_bf16_moe_args(**args)
    args, g = mxint4_args(seeded)
    args["gemm1_clamp_limit"] = torch.rand(g.local, generator=seeded).to(BF16)
    with pytest.raises(TypeError, match="gemm1_clamp_limit: expected dtype torch.float32"):
        validate.validate_mxint4_moe_args(**args)


def test_rejects_wrong_weight_layout(seeded):
    for layout in (WeightLayout.MajorK, WeightLayout.MajorMn, 3):
        args, g = bf16_args(seeded)
        args["weight_layout"] = layout
        with pytest.raises(ValueError, match="weight_layout: expected one of BlockMajorK=2"):
            validate.validate_bf16_moe_args(**args)
    with pytest.raises(ValueError, match="use_shuffled_weight: expected True"):
        validate.validate_bf16_layout_flags(False, WeightLayout.BlockMajorK)
    validate.validate_bf16_layout_flags(True, int(WeightLayout.BlockMajorK))


@pytest.mark.parametrize("bad_i", [32, 96, 200])
def test_rejects_intermediate_size_off_tile(seeded, bad_i):
    args, g = bf16_args(seeded)
    args["intermediate_size"] = bad_i
    with pytest.raises(ValueError, match=rf"intermediate_size: expected a multiple of 64 \(64-value K block\), "
                                         rf"got {bad_i}"):
        validate.validate_bf16_moe_args(**args)


def test_intermediate_tile_is_a_parameter(seeded):
    args, g = bf16_args(seeded, act=ActivationType.Relu2)
    i = 64 * _int(seeded, 1, 3)
    args.update(intermediate_size=i, gemm1_weights=torch.empty(g.local, g.h // 64, i, 64, dtype=BF16),
                gemm2_weights=torch.empty(g.local, i // 64, g.h, 64, dtype=BF16), intermediate_multiple=64)
    assert validate.validate_bf16_moe_args(**args) == RoutingInputMode.FromLogits


def test_rejects_hidden_size_off_k_block(seeded):
    args, g = bf16_args(seeded)
    h = g.h + 32
    args["hidden_states"] = torch.randn(g.t, h, generator=seeded).to(BF16)
    with pytest.raises(ValueError, match=rf"hidden_size: expected a multiple of 64 \(FC1 K blocks of 64 bf16\), "
                                         rf"got {h}"):
        validate.validate_bf16_moe_args(**args)
    args, g = mxint4_args(seeded)
    h = g.h + 128
    args["hidden_states"] = torch.randn(g.t, h, generator=seeded).to(BF16)
    with pytest.raises(ValueError, match=rf"hidden_size: expected a multiple of 256 \(FC1 K blocks of 256 "
                                         rf"int4\), got {h}"):
        validate.validate_mxint4_moe_args(**args)
    args, g = mxint4_args(seeded)
    args["intermediate_size"] = 384
    with pytest.raises(ValueError, match="intermediate_size: expected a multiple of 256"):
        validate.validate_mxint4_moe_args(**args)


@pytest.mark.parametrize("routing", ["packed", "pair"])
def test_rejects_lora_delta_shape(seeded, routing):
    args, g = bf16_args(seeded, routing)
    args["gemm1_lora_delta"] = torch.randn(g.t, g.k, g.i, generator=seeded).to(BF16)
    with pytest.raises(ValueError, match=rf"gemm1_lora_delta: expected shape \[num_tokens, top_k, "
                                         rf"2 \* intermediate_size\] = \[{g.t}, {g.k}, {2 * g.i}\]"):
        validate.validate_bf16_moe_args(**args)
    args["gemm1_lora_delta"] = torch.randn(g.t, g.k, 2 * g.i, generator=seeded)
    with pytest.raises(TypeError, match="gemm1_lora_delta: expected dtype torch.bfloat16"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_lora_delta_with_relu2(seeded):
    args, g = bf16_args(seeded, "packed", act=ActivationType.Relu2)
    args["gemm1_lora_delta"] = torch.randn(g.t, g.k, g.i, generator=seeded).to(BF16)
    with pytest.raises(ValueError, match="gemm1_lora_delta: expected None unless the activation is gated"):
        validate.validate_bf16_moe_args(**args)


def test_rejects_output_wrong_shape(seeded):
    args, g = bf16_args(seeded)
    args["output"] = torch.empty(g.t + 1, g.h, dtype=BF16)
    with pytest.raises(ValueError, match=rf"output: expected shape \[num_tokens, hidden_size\] = \[{g.t}, {g.h}\]"):
        validate.validate_bf16_moe_args(**args)
    # Without do_finalize the output buffer is not written, so it is not checked.
    args["do_finalize"] = False
    assert validate.validate_bf16_moe_args(**args) == RoutingInputMode.FromLogits


def test_rejects_output_wrong_dtype(seeded):
    args, g = mxint4_args(seeded, "packed")
    args["output"] = torch.empty(g.t, g.h, dtype=torch.float32)
    with pytest.raises(TypeError, match="output: expected dtype torch.bfloat16"):
        validate.validate_mxint4_moe_args(**args)


# ---------------------------------------------------------------------------------------------
# Building blocks kernels call directly
# ---------------------------------------------------------------------------------------------


def test_topk_pair_and_packed_checks(seeded):
    t, k = _int(seeded, 1, 9), _int(seeded, 1, 8)
    ids, weights = _topk(seeded, t, k, 16)
    validate.check_topk_pair(ids, weights)
    validate.check_packed_topk(_packed(ids, weights))
    with pytest.raises(ValueError, match="topk_weights: expected shape"):
        validate.check_topk_pair(ids, weights[:, :-1])
    with pytest.raises(TypeError, match="topk_ids: expected dtype torch.int32"):
        validate.check_packed_topk(ids.long())


def test_validate_routed_topk_standalone(seeded):
    t, k, e = _int(seeded, 1, 9), _int(seeded, 1, 8), 32
    ids, weights = _topk(seeded, t, k, e)
    assert validate.validate_routed_topk((ids, weights), k, e) == RoutingInputMode.UnpackedPrecomputed
    packed = _packed(ids, weights)
    assert validate.validate_routed_topk(packed, k, e, num_tokens=t) == RoutingInputMode.PackedPrecomputed
    with pytest.raises(ValueError, match=rf"topk_ids: expected shape \[num_tokens, top_k\] = \[{t}, {k + 1}\]"):
        validate.validate_routed_topk(ids, k + 1, e)
    with pytest.raises(ValueError, match="topk_ids: expected a packed tensor or an"):
        validate.validate_routed_topk((ids, weights, weights), k, e)


def test_validate_routing_args_standalone(seeded):
    t, e, k = _int(seeded, 0, 9), 64, _int(seeded, 1, 8)
    logits = torch.randn(t, e, generator=seeded)
    method = validate.validate_routing_args(logits, None, e, k, 8, 4, RoutingMethodType.DeepSeekV3, 1.0)
    assert method is RoutingMethodType.DeepSeekV3
    with pytest.raises(ValueError, match="routing_logits: expected shape"):
        validate.validate_routing_args(logits, None, e, k, None, None, 1, num_tokens=t + 1)
