"""``b12x_fused_moe`` end to end on the GPU, against the float reference (cute_moe.reference_b12x).

Weights: fresh random float experts quantized per expert to NVFP4 (cute_moe.layouts.quantize,
global scale 448 * 6 / max|w|) and prepared by cute_moe.prepare.prepare_b12x_fp4_moe_weights.
Both modes (w4a16: bf16 activations; nvfp4: x and FC1's activation quantized per expert), silu and
relu2, T in {0, 1, 7, 64, 1000}, up to 256 experts, expert parallelism, hot and empty experts,
every GEMM variant forced, graph replay with new routing. W4A16 is also compared with the bf16
entry point on the dequantized weights (an independent kernel path). Bound:
``||out - ref|| / ||ref|| <= 1e-2``, no NaN; every measured error is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import cute_moe
from cute_moe.enums import ActivationType
from cute_moe.layouts.quantize import dequantize_nvfp4, quantize_nvfp4
from cute_moe.prepare import prepare_b12x_fp4_moe_weights, prepare_bf16_moe_weights
from cute_moe.reference_b12x import reference_b12x_fused_moe
from moe_checks import check_graph_replay, compare

pytestmark = pytest.mark.gpu


@dataclass(frozen=True)
class Case:
    hidden: int
    inter: int
    experts: int
    top_k: int
    activation: str = "silu"
    local: int = 0  # 0: all experts local
    offset: int = 0

    @property
    def num_local(self) -> int:
        return self.local or self.experts

    @property
    def gated(self) -> bool:
        return self.activation == "silu"


SMALL = Case(1024, 512, 16, 4)
QWEN3 = Case(2048, 768, 128, 8)
WIDE = Case(1024, 256, 256, 8)
RELU2 = Case(1024, 512, 16, 2, "relu2")
EP = Case(1024, 512, 64, 4, local=16, offset=16)

_WEIGHTS = {}


@dataclass
class Experts:
    prepared: dict
    w1_alpha: torch.Tensor  # decode scales 1 / g, float32 [L]
    w2_alpha: torch.Tensor
    w1: torch.Tensor  # the float weights they encode, [L, M, H] / [L, H, I]
    w2: torch.Tensor


def _experts(case: Case) -> Experts:
    if case in _WEIGHTS:
        return _WEIGHTS[case]
    g = torch.Generator(device="cuda").manual_seed(1234 + case.experts)
    m = 2 * case.inter if case.gated else case.inter
    tensors = []
    for rows, cols in ((m, case.hidden), (case.hidden, case.inter)):
        packed, scales, alphas, floats = [], [], [], []
        for _ in range(case.num_local):
            w = torch.randn(rows, cols, generator=g, device="cuda") * cols ** -0.5
            p, s, gs = quantize_nvfp4(w)
            packed.append(p)
            scales.append(s)
            alphas.append(1.0 / gs)
            floats.append(dequantize_nvfp4(p, s, gs))
        tensors.append((torch.stack(packed), torch.stack(scales), torch.stack(alphas).float(), torch.stack(floats)))
    (p1, s1, a1, f1), (p2, s2, a2, f2) = tensors
    prepared = prepare_b12x_fp4_moe_weights(p1, s1, p2, s2)
    _WEIGHTS[case] = Experts(prepared, a1, a2, f1, f2)
    return _WEIGHTS[case]


def _routing(case: Case, t: int, pool=None, generator=None):
    """Distinct global ids per token (from ``pool`` if given) and positive float32 weights."""
    pool = torch.arange(case.experts, device="cuda") if pool is None else torch.as_tensor(pool, device="cuda")
    keys = torch.rand(t, pool.numel(), device="cuda", generator=generator)
    ids = pool[keys.argsort(dim=1)[:, :case.top_k]].to(torch.int32)
    weights = torch.rand(t, case.top_k, device="cuda", generator=generator) + 0.1
    return ids, weights / weights.sum(1, keepdim=True)


def _inputs(case: Case, t: int, x_scale: float = 1.0, pool=None):
    """The case's experts and fresh inputs: bf16 ``x [t, H]``, routing ids and weights."""
    x = (torch.randn(t, case.hidden, device="cuda") * x_scale).to(torch.bfloat16)
    return (_experts(case), x) + _routing(case, t, pool)


def _args(case: Case, ex: Experts, x, ids, w):
    """b12x_fused_moe's positional arguments."""
    return (x, ex.prepared["w1_weight"], ex.prepared["w1_weight_sf"], ex.prepared["w2_weight"],
            ex.prepared["w2_weight_sf"], ids, w, case.experts, case.top_k)


def _kwargs(case: Case, ex: Experts, mode: str, **extra):
    kw = dict(w1_alpha=ex.w1_alpha, w2_alpha=ex.w2_alpha, num_local_experts=case.num_local,
              local_expert_offset=case.offset, activation=case.activation, quant_mode=mode)
    if mode == "nvfp4":
        # global scales that put x (~N(0, 1)) and FC1's activation well inside NVFP4's range; they
        # fold into the GEMMs' multipliers as a ModelOpt checkpoint folds its input scales
        kw["input_global_scale"] = torch.full((case.num_local,), 0.01, device="cuda")
        kw["fc2_input_scale"] = torch.full((case.num_local,), 0.01, device="cuda")
        kw["w2_alpha"] = ex.w2_alpha * 0.01
    kw.update(extra)
    return kw


def _run(case: Case, t: int, mode: str, record, x_scale: float = 1.0, **extra):
    ex, x, ids, w = _inputs(case, t, x_scale)
    args = _args(case, ex, x, ids, w)
    kw = _kwargs(case, ex, mode, **extra)
    out = cute_moe.b12x_fused_moe(*args, **kw)
    assert out.shape == (t, case.hidden) and out.dtype == torch.bfloat16
    ref = reference_b12x_fused_moe(*args, **{k: v for k, v in kw.items() if k != "gemm_variant"})
    if t:
        # nvfp4 often matches bit for bit (quantized operands: the float32 sums are exact), so
        # make sure there is something to match
        assert ref.output.float().norm() > 0
        compare(out, ref.output, record, mode=mode)
    return out, ref, args, kw


@pytest.mark.parametrize("mode", ["w4a16", "nvfp4"])
@pytest.mark.parametrize("case,tokens", [
    *[(SMALL, t) for t in (0, 1, 7, 64, 1000)],
    *[(QWEN3, t) for t in (1, 64, 1000)],
    *[(WIDE, t) for t in (7, 1000)],
    *[(RELU2, t) for t in (1, 7, 64, 1000)],
], ids=lambda v: f"{v.hidden}x{v.inter}e{v.experts}k{v.top_k}{v.activation}" if isinstance(v, Case) else f"T{v}")
def test_b12x_matches_reference(mode, case, tokens, record_error):
    _run(case, tokens, mode, record_error)


@pytest.mark.parametrize("mode", ["w4a16", "nvfp4"])
@pytest.mark.parametrize("variant", ["micro", "static", "dynamic"])
def test_b12x_every_variant(mode, variant, record_error):
    _run(SMALL, 200, mode, record_error, gemm_variant=variant)
    _run(RELU2, 33, mode, record_error, gemm_variant=variant)


@pytest.mark.parametrize("mode", ["w4a16", "nvfp4"])
def test_b12x_expert_parallel_slice(mode, record_error):
    """Global ids over 64 experts, 16 local ones from 16: the others contribute nothing."""
    out, ref, *_ = _run(EP, 300, mode, record_error)
    assert bool((ref.y.float().abs().sum(-1) == 0).any())  # some pairs are not local


@pytest.mark.parametrize("mode", ["w4a16", "nvfp4"])
def test_b12x_hot_and_empty_experts(mode, record_error):
    """Every token on expert 3 (slot 0) plus experts 0..4: 11 of 16 experts are empty."""
    case = SMALL
    t = 513
    ex, x, ids, w = _inputs(case, t, pool=[0, 1, 2, 4])
    ids[:, 0] = 3
    args = _args(case, ex, x, ids, w)
    kw = _kwargs(case, ex, mode)
    compare(cute_moe.b12x_fused_moe(*args, **kw), reference_b12x_fused_moe(*args, **kw).output, record_error)


def test_b12x_global_scales_and_formats(record_error):
    """nvfp4 with per-expert input_global_scale, with [1] scales, and without input_global_scale
    (w1_alpha quantizes x: x scaled into its range); w4a16 with compressed_tensors scales
    (reciprocals of modelopt's)."""
    ex = _experts(SMALL)
    igs = (torch.rand(SMALL.num_local, device="cuda") + 0.5) * 0.01
    _run(SMALL, 77, "nvfp4", record_error, input_global_scale=igs)
    _run(SMALL, 77, "nvfp4", record_error, input_global_scale=igs[:1].clone(),
         fc2_input_scale=torch.full((1,), 0.02, device="cuda"))
    _run(SMALL, 77, "nvfp4", record_error, input_global_scale=None, x_scale=float(ex.w1_alpha.mean()) * 300)
    _run(SMALL, 77, "w4a16", record_error, source_format="compressed_tensors",
         w1_alpha=1.0 / ex.w1_alpha, w2_alpha=1.0 / ex.w2_alpha)


def test_b12x_w4a16_matches_bf16_entry_on_dequantized_weights(record_error):
    """W4A16 against trtllm_bf16_routed_moe on bf16(dequantized weights): independent kernels."""
    case = QWEN3
    t = 300
    ex, x, ids, w = _inputs(case, t)
    out = cute_moe.b12x_fused_moe(*_args(case, ex, x, ids, w), **_kwargs(case, ex, "w4a16"))
    g1, g2 = prepare_bf16_moe_weights(ex.w1.to(torch.bfloat16), ex.w2.to(torch.bfloat16), ActivationType.Swiglu)
    bf16 = cute_moe.trtllm_bf16_routed_moe((ids, w), x, g1, g2, case.experts, case.top_k, None, None, case.inter, 0,
                                           case.experts)
    compare(out, bf16, record_error, against="bf16 entry on dequantized weights")


@pytest.mark.parametrize("mode", ["w4a16", "nvfp4"])
@pytest.mark.parametrize("preallocated", [True, False])
def test_b12x_graph_replay_with_new_routing(mode, preallocated, record_error):
    case = SMALL
    t = 96
    ex, x, ids, w = _inputs(case, t)
    args = _args(case, ex, x, ids, w)
    kw = _kwargs(case, ex, mode)
    out = torch.empty(t, case.hidden, dtype=torch.bfloat16, device="cuda") if preallocated else None
    gen = torch.Generator(device="cuda").manual_seed(7)

    def run():  # without a preallocated output, the graph replays into the captured call's tensor
        return cute_moe.b12x_fused_moe(*args, output=out, **kw)

    def refresh():
        new_ids, new_w = _routing(case, t, generator=gen)
        ids.copy_(new_ids)
        w.copy_(new_w)
        x.copy_(torch.randn(t, case.hidden, device="cuda", generator=gen).to(torch.bfloat16))

    check_graph_replay(run, out, refresh, lambda: cute_moe.b12x_fused_moe(*args, **kw),
                       lambda: reference_b12x_fused_moe(*args, **kw).output, record_error)


@pytest.mark.parametrize("mode", ["w4a16", "nvfp4"])
def test_b12x_under_torch_compile(mode, record_error):
    """torch.compile traces the call (through the cute_moe::fused_moe custom op) in one graph."""
    case = SMALL
    t = 45
    ex, x, ids, w = _inputs(case, t)
    weights = (ex.prepared["w1_weight"], ex.prepared["w1_weight_sf"], ex.prepared["w2_weight"],
               ex.prepared["w2_weight_sf"])
    kw = _kwargs(case, ex, mode)
    fn = torch.compile(lambda x, ids, w: cute_moe.b12x_fused_moe(x, *weights, ids, w, case.experts, case.top_k, **kw),
                       fullgraph=True)
    out = fn(x, ids, w)
    compare(out, reference_b12x_fused_moe(x, *weights, ids, w, case.experts, case.top_k, **kw).output, record_error)
