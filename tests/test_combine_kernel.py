"""The GPU weighted combine against a float64 reference, bitwise reproducibility, ``out=`` in place."""

import pytest
import torch

from cute_moe.reference import reference_plan
from cute_moe.routing import combine

BF16_EPS = 2.0 ** -8  # relative spacing of bf16 values


def _routing_case(t, k, num_experts, offset, num_local, hidden, wdtype, gen):
    """(gemm2_output [P, H], weights [T, K], perm [T*K]) from a random routing with non-local slots."""
    ids = torch.rand(t, num_experts, generator=gen).argsort(dim=1)[:, :k].to(torch.int32)
    plan = reference_plan(ids, k, offset, num_local, 8)
    rows = max(int(plan.counters[1]), 1)
    g2 = torch.randn(rows, hidden, generator=gen).to(torch.bfloat16)
    w = (torch.rand(t, k, generator=gen) + 0.05).to(wdtype)
    perm = plan.expanded_idx_to_permuted_idx[: t * k].clone()
    return g2.cuda(), w.cuda(), perm.cuda()


def _reference(g2, w, perm):
    t, k = w.shape
    rows = g2.double()[perm.long().clamp(min=0)].reshape(t, k, -1)
    mask = (perm.reshape(t, k) >= 0).double().unsqueeze(-1)
    return (rows * mask * w.double().unsqueeze(-1)).sum(dim=1)


def _check_close(out, ref):
    """One rounding of an (almost exact) float32 sum: within one bf16 ulp of the float64 value."""
    err = (out.double() - ref).abs()
    bound = BF16_EPS * ref.abs() + 1e-5 * ref.abs().max().clamp(min=1e-30)
    worst = (err - bound).max()
    assert worst <= 0, f"max excess over one bf16 ulp: {worst:.3e}"
    rel = (out.double() - ref).norm() / ref.norm()
    assert rel < 4e-3, f"relative error {rel:.3e}"


@pytest.mark.gpu
@pytest.mark.parametrize("t,k,hidden", [(1, 8, 7168), (7, 1, 64), (33, 4, 2880), (300, 8, 8192), (2048, 8, 4096)])
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float32])
def test_combine_matches_float_reference(t, k, hidden, wdtype, seeded):
    g2, w, perm = _routing_case(t, k, 64, 8, 40, hidden, wdtype, seeded)
    out = torch.full((t, hidden), float("nan"), dtype=torch.bfloat16, device="cuda")
    res = combine(g2, w, perm, out=out)
    assert res is out
    assert not torch.isnan(out).any()
    _check_close(out, _reference(g2, w, perm))
    no_local = (perm.reshape(t, k) < 0).all(dim=1)
    assert bool((out[no_local] == 0).all())


@pytest.mark.gpu
def test_combine_is_bitwise_reproducible(seeded):
    g2, w, perm = _routing_case(1000, 8, 256, 0, 256, 7168, torch.bfloat16, seeded)
    a = combine(g2, w, perm)
    b = combine(g2, w, perm)
    assert torch.equal(a.view(torch.int16), b.view(torch.int16))


@pytest.mark.gpu
def test_combine_accepts_2d_perm_and_no_local_token(seeded):
    g2, w, perm = _routing_case(16, 4, 64, 0, 64, 128, torch.bfloat16, seeded)
    perm = perm.reshape(16, 4).clone()
    perm[3] = -1  # token 3 routed only to other devices' experts
    out = combine(g2, w, perm)
    assert bool((out[3] == 0).all())
    _check_close(out, _reference(g2, w, perm.reshape(-1)))


@pytest.mark.gpu
def test_combine_empty_token_batch():
    g2 = torch.randn(8, 64, device="cuda").to(torch.bfloat16)
    out = combine(g2, torch.empty(0, 8, dtype=torch.bfloat16, device="cuda"),
                  torch.empty(0, dtype=torch.int32, device="cuda"))
    assert out.shape == (0, 64)


def test_combine_rejects_bad_input():
    g2 = torch.zeros(16, 64, dtype=torch.bfloat16)
    w = torch.zeros(4, 2, dtype=torch.bfloat16)
    perm = torch.zeros(8, dtype=torch.int32)
    with pytest.raises(TypeError, match="gemm2_output"):
        combine(g2.float(), w, perm)
    with pytest.raises(TypeError, match="topk_weights"):
        combine(g2, w.half(), perm)
    with pytest.raises(TypeError, match="expanded_idx_to_permuted_idx"):
        combine(g2, w, perm.long())
    with pytest.raises(ValueError, match="expanded_idx_to_permuted_idx"):
        combine(g2, w, perm[:7])
    with pytest.raises(ValueError, match="multiple of 8"):
        combine(torch.zeros(16, 60, dtype=torch.bfloat16), w, perm)
    with pytest.raises(ValueError, match="CUDA"):
        combine(g2, w, perm)
    with pytest.raises(ValueError, match="gemm2_output"):
        combine(g2.t(), w, perm)
