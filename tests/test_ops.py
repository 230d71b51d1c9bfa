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
