"""Top-k pack/unpack kernels against the bit-level definition, on fresh random routings."""

import pytest
import torch

from cute_moe.kernels import topk_pack


def _random_routing(t, k, e, wdtype, device):
    ids = torch.stack([torch.randperm(e, device=device)[:k] for _ in range(t)]) if t else \
        torch.empty(0, k, dtype=torch.int64, device=device)
    w = torch.rand(t, k, device=device, dtype=torch.float32)
    return ids.to(torch.int32), w.to(wdtype)


def _expected_pack(ids, w):
    bits = w.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    return (ids << 16) | bits


@pytest.mark.gpu
@pytest.mark.parametrize("t,k,e", [(0, 8, 256), (1, 1, 8), (7, 4, 64), (4096, 8, 512), (333, 22, 512)])
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float32])
def test_pack_unpack_roundtrip(t, k, e, wdtype):
    ids, w = _random_routing(t, k, e, wdtype, "cuda")
    packed = topk_pack.pack_topk(ids, w)
    torch.testing.assert_close(packed, _expected_pack(ids, w), rtol=0, atol=0)
    ids2, w2 = topk_pack.unpack_topk(packed)
    assert torch.equal(ids2, ids)
    assert torch.equal(w2.view(torch.int16), w.to(torch.bfloat16).view(torch.int16))


@pytest.mark.gpu
def test_pack_rounds_like_torch_on_hard_values():
    # Ties to even, subnormals, infinities, values near bf16 max.
    vals = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 1e-40, -1e-40,
                         float("inf"), -float("inf"), 3.3895e38, 0.0, -0.0, 0.1, 1 / 3],
                        dtype=torch.float32, device="cuda").view(-1, 1)
    ids = torch.arange(vals.numel(), dtype=torch.int32, device="cuda").view(-1, 1)
    assert torch.equal(topk_pack.pack_topk(ids, vals), _expected_pack(ids, vals))


def test_pack_rejects_bad_input_before_launch():
    ids = torch.zeros(4, 2, dtype=torch.int64)
    with pytest.raises(TypeError, match="topk_ids"):
        topk_pack.pack_topk(ids, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="topk_weights"):
        topk_pack.pack_topk(ids.int(), torch.zeros(4, 3))
    with pytest.raises(TypeError, match="topk_weights"):
        topk_pack.pack_topk(ids.int(), torch.zeros(4, 2, dtype=torch.float16))
