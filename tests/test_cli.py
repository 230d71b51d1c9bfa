"""The two user-facing programs that run without a GPU: the demo's CPU path and the benchmark's
no-GPU exit and GPU-comparison mode."""

import json

import pytest
import torch

from cute_moe.cli import bench, demo
from cute_moe.kernels.runtime import gpu_available


def test_cpu_demo_converts_and_verifies(tmp_path):
    assert demo.cpu_demo(tmp_path) == 0
    for fmt in ("mxint4", "bf16"):
        manifest = json.loads((tmp_path / f"prepared_{fmt}" / "manifest.json").read_text())
        assert manifest["format"] == fmt and manifest["num_layers"] == 2


@pytest.mark.skipif(gpu_available(), reason="checks the message printed without a GPU")
def test_bench_without_gpu_exits_nonzero_with_a_clear_message(capsys):
    assert bench.main(["--tokens", "1"]) == 2
    assert "no NVIDIA GPU" in capsys.readouterr().err


def _rows(device, scale):
    return [{"device": device, "preset": "qwen3-30b-a3b", "impl": impl, "tokens": t,
             "time_us": scale * base * t ** 0.5, "byte_floor_ratio": 0.5, "flop_floor_ratio": 0.1}
            for impl, base in (("cute_bf16", 10.0), ("torch_grouped_mm", 30.0)) for t in (1, 64)]


def test_compare_lines_up_matching_points(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps(r) for r in _rows("GPU-A", 1.0)))
    b.write_text("\n".join(json.dumps(r) for r in _rows("GPU-B", 2.0)))
    assert bench.main(["--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "A = GPU-A" in out and "B = GPU-B" in out
    ratios = [line.split()[-1] for line in out.splitlines() if line.startswith("qwen3")]
    assert ratios == ["2.00"] * 4


def test_table_reports_speedup_over_the_torch_pipeline():
    rows = [dict(r, error=None) for r in _rows("GPU-A", 1.0)]
    table = bench.format_table(rows)
    line = next(x for x in table.splitlines() if "cute_bf16" in x and x.split()[1] == "64")
    assert line.split()[-2:] == ["3.00x", "1.00x"]  # vs torch, vs the bf16 path (itself)


@pytest.mark.parametrize("preset", ["qwen3-30b-a3b", "deepseek-v3", "gpt-oss-120b", "kimi-k2", "mixtral-8x7b"])
def test_peer_routing_agrees_with_the_reference(preset):
    from cute_moe.bench.peers import _route
    from cute_moe.bench.presets import PRESETS
    from cute_moe.routing_ref import route_reference

    s = PRESETS[preset]
    logits = torch.randn(64, s.num_experts)
    bias = (torch.randn(s.num_experts) * 0.1).to(torch.bfloat16) if s.routing_method.name == "DeepSeekV3" else None
    ids, w = _route(s, logits, bias)
    ref_ids, ref_w = route_reference(logits, bias, s.top_k, s.routing_method, n_group=s.n_group,
                                     topk_group=s.topk_group, routed_scaling_factor=s.routed_scaling_factor)
    assert torch.equal(ids.int(), ref_ids)
    torch.testing.assert_close(w.float(), ref_w, rtol=8e-3, atol=1e-3)
