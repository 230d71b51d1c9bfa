"""The fused MoE custom op under torch.compile, checked on the CPU: the graph traces through the
op (fake implementation, functionalized mutations) and only the real call, at run time, meets the
CUDA-device check."""

import pytest
import torch

import cute_moe
import cute_moe.ops  # noqa: F401  (registers cute_moe::fused_moe)


def test_op_is_functionalizable():
    from torch._higher_order_ops.auto_functionalize import can_auto_functionalize

    op = torch.ops.cute_moe.fused_moe.default
    assert can_auto_functionalize(op)
    mutated = {a.name for a in op._schema.arguments if a.alias_info is not None and a.alias_info.is_write}
    assert mutated == {"output", "routing_replay_out"}


def test_torch_compile_traces_the_whole_call_into_one_graph():
    e, k, h, i = 4, 2, 256, 128
    g1 = torch.zeros(e, h // 64, 2 * i, 64, dtype=torch.bfloat16)
    g2 = torch.zeros(e, i // 64, h, 64, dtype=torch.bfloat16)
    kw = dict(num_experts=e, top_k=k, n_group=None, topk_group=None, intermediate_size=i,
              local_expert_offset=0, local_num_experts=e, routing_method_type=1)
    fn = torch.compile(lambda x, logits: cute_moe.trtllm_bf16_moe(logits, None, x, g1, g2, **kw),
                       fullgraph=True, backend="aot_eager")
    x, logits = torch.randn(8, h).to(torch.bfloat16), torch.randn(8, e)
    with pytest.raises(ValueError, match="hidden_states: expected a tensor on a CUDA device"):
        fn(x, logits)


def test_eager_calls_skip_the_op_and_traced_calls_take_it():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from cute_moe.ops import traced

    assert not traced(torch.zeros(2, 256, dtype=torch.bfloat16))
    with FakeTensorMode():
        assert traced(torch.zeros(2, 256, dtype=torch.bfloat16))


def _b12x_experts(e=4, h=256, i=128):
    from cute_moe.layouts.quantize import quantize_nvfp4
    from cute_moe.prepare import prepare_b12x_fp4_moe_weights

    gen = torch.Generator().manual_seed(0)
    q1 = [quantize_nvfp4(torch.randn(2 * i, h, generator=gen)) for _ in range(e)]
    q2 = [quantize_nvfp4(torch.randn(h, i, generator=gen)) for _ in range(e)]
    return prepare_b12x_fp4_moe_weights(torch.stack([p for p, _, _ in q1]), torch.stack([s for _, s, _ in q1]),
                                        torch.stack([p for p, _, _ in q2]), torch.stack([s for _, s, _ in q2]))


@pytest.mark.parametrize("mode", ["w4a16", "nvfp4"])
def test_b12x_traces_into_one_graph_and_checks_at_run_time(mode):
    """b12x_fused_moe under torch.compile: its string arguments are checked while tracing, the
    tensors (here on the CPU) by the custom op when it runs."""
    e, k = 4, 2
    b = _b12x_experts(e)
    ones = torch.ones(e)
    kw = dict(w1_alpha=ones, w2_alpha=ones, quant_mode=mode)
    if mode == "nvfp4":
        kw["fc2_input_scale"] = ones
    fn = torch.compile(lambda x, ids, w: cute_moe.b12x_fused_moe(
        x, b["w1_weight"], b["w1_weight_sf"], b["w2_weight"], b["w2_weight_sf"], ids, w, e, k, **kw),
        fullgraph=True, backend="aot_eager")
    x, ids, w = torch.randn(8, 256).to(torch.bfloat16), torch.zeros(8, k, dtype=torch.int32), torch.rand(8, k)
    with pytest.raises(ValueError, match="hidden_states: expected a tensor on a CUDA device"):
        fn(x, ids, w)
    bad = torch.compile(lambda x, ids, w: cute_moe.b12x_fused_moe(
        x, b["w1_weight"], b["w1_weight_sf"], b["w2_weight"], b["w2_weight_sf"], ids, w, e, k, w1_alpha=ones,
        w2_alpha=ones, quant_mode="nvfp4"), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="fc2_input_scale"):
        bad(x, ids, w)


def test_b12x_eager_checks_name_the_argument():
    e, k = 4, 2
    b = _b12x_experts(e)
    args = (torch.randn(3, 256).to(torch.bfloat16), b["w1_weight"], b["w1_weight_sf"], b["w2_weight"],
            b["w2_weight_sf"], torch.zeros(3, k, dtype=torch.int32), torch.rand(3, k), e, k)
    ones = torch.ones(e)
    with pytest.raises(ValueError, match="^x: expected a tensor on a CUDA device"):
        cute_moe.b12x_fused_moe(*args, w1_alpha=ones, w2_alpha=ones, quant_mode="w4a16")
    with pytest.raises(ValueError, match="quant_mode"):
        cute_moe.b12x_fused_moe(*args, w1_alpha=ones, w2_alpha=ones, quant_mode="int8")
    with pytest.raises(ValueError, match="activation"):
        cute_moe.b12x_fused_moe(*args, w1_alpha=ones, w2_alpha=ones, quant_mode="w4a16", activation="gelu")
