"""Comparisons shared by the end-to-end GPU tests of the public entry points."""

from __future__ import annotations

from typing import Callable

import torch

REL_BOUND = 1e-2


def compare(out, ref, record, mask=None, **extra) -> float:
    """``||out - ref|| / ||ref|| <= REL_BOUND`` (rows ``mask`` only when given), no NaN; the
    measured error goes to ``record`` (the record_error fixture)."""
    out, ref = out.float(), ref.float()
    if mask is not None:
        out, ref = out[mask], ref[mask]
    assert not torch.isnan(out).any(), "NaN in the output"
    diff = out - ref
    rel = (diff.norm() / ref.norm().clamp_min(1e-30)).item() if ref.numel() else 0.0
    record(rel, diff.abs().max().item() if ref.numel() else 0.0, **extra)
    assert rel <= REL_BOUND, f"rel err {rel:.3e} > {REL_BOUND}"
    return rel


def check_graph_replay(run: Callable[[], object], out, refresh: Callable[[], None],
                       eager: Callable[[], torch.Tensor], reference: Callable[[], torch.Tensor], record,
                       replays: int = 2) -> None:
    """Capture ``run()`` (which writes ``out``; ``out=None``: the tensor the captured call returns,
    allocated in the graph's pool) in a CUDA graph after one warm-up on a side stream; then per
    replay: ``refresh()`` the inputs in place (new routing), replay, and require ``out`` to equal
    ``eager()`` bit for bit and ``reference()`` within the bound."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    if out is None:
        out = captured
    for _ in range(replays):
        refresh()
        graph.replay()
        torch.cuda.synchronize()
        replayed = out.clone()
        assert torch.equal(replayed, eager()), "graph replay differs from the eager call"
        compare(replayed, reference(), record)
