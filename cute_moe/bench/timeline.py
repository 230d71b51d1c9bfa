"""Where one fused call's time goes: its kernels on the GPU timeline under CUDA-graph replay.

The call is captured once per input set (as ``measure.time_graph`` does) and replayed under the
torch profiler (CUPTI). Each call launches the same kernels in the same order, so the kernel
records split into calls by count; per kernel position the median start offset from the call's
first kernel, duration and the gap to the previous kernel's end are reported, with the call's
span (first start to last end). Negative gaps are overlap (programmatic dependent launches).
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence

import torch

from .measure import capture_graph


@dataclass(frozen=True)
class KernelSpan:
    name: str
    start_us: float  # from the call's first kernel start
    duration_us: float
    gap_us: float  # from the previous kernel's end (negative: overlap)


_NAME_PARTS = ("RouteTopk", "UnpackTopk", "PlanSingleCta", "PlanCount", "PlanScan", "PlanScatter", "Wgmma",
               "GroupedGemm", "CombineRows", "Quantize")


def short_name(kernel: str) -> str:
    """A CuTe DSL kernel name (module path, class and argument signature mangled in) shortened to
    the kernel class."""
    for part in _NAME_PARTS:
        if part in kernel:
            return part
    return re.sub(r"^kernel_cutlass_", "", kernel)[:40]


def _kernel_records(trace: dict) -> List[dict]:
    return sorted((e for e in trace.get("traceEvents", []) if e.get("cat") == "kernel"), key=lambda e: e["ts"])


def call_timeline(calls: Sequence[Callable[[], None]], reps: int = 20) -> List[KernelSpan]:
    """Median kernel spans of one call (see the module docstring); ``calls`` as for time_graph."""
    from torch.profiler import ProfilerActivity, profile

    graph = capture_graph(calls)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        records = _kernel_records(json.loads(path.read_text()))
    return spans_of(records, reps * len(calls), len(calls))


def spans_of(records: List[dict], num_calls: int, num_sets: int = 1) -> List[KernelSpan]:
    """Median spans per kernel position over ``num_calls`` calls, from kernel records (``name``,
    ``ts``, ``dur`` in us) sorted by start, then the call span; with ``num_sets`` input sets
    (call ``i`` runs set ``i % num_sets``) also the call span of each set, and the median time
    from a call's last kernel end to the next call's first start (the graph's own gaps between
    calls; a median, so the boundaries between replays, one in ``num_sets``, do not move it)."""
    per_call = len(records) // num_calls if num_calls else 0
    if per_call == 0 or len(records) % num_calls:
        raise RuntimeError(f"{len(records)} kernel records do not split into {num_calls} calls")
    chunks = [records[i:i + per_call] for i in range(0, len(records), per_call)]
    spans = []
    for j in range(per_call):
        starts = [c[j]["ts"] - c[0]["ts"] for c in chunks]
        durs = [c[j]["dur"] for c in chunks]
        gaps = [c[j]["ts"] - (c[j - 1]["ts"] + c[j - 1]["dur"]) if j else 0.0 for c in chunks]
        spans.append(KernelSpan(short_name(chunks[0][j]["name"]), statistics.median(starts),
                                statistics.median(durs), statistics.median(gaps)))
    ends = [max(e["ts"] + e["dur"] for e in c) for c in chunks]
    span = statistics.median(end - c[0]["ts"] for c, end in zip(chunks, ends))
    spans.append(KernelSpan("(call span)", 0.0, span, 0.0))
    if num_sets > 1:
        for s in range(num_sets):
            own = [end - c[0]["ts"] for i, (c, end) in enumerate(zip(chunks, ends)) if i % num_sets == s]
            spans.append(KernelSpan(f"(set {s} span)", 0.0, statistics.median(own), 0.0))
        if len(chunks) > 1:
            between = [chunks[i + 1][0]["ts"] - ends[i] for i in range(len(chunks) - 1)]
            spans.append(KernelSpan("(to next call)", 0.0, statistics.median(between), 0.0))
    return spans


def format_timeline(spans: List[KernelSpan]) -> str:
    return "\n".join(f"  {s.name:<16}start {s.start_us:7.1f}  dur {s.duration_us:7.1f}  gap {s.gap_us:6.1f} us"
                     for s in spans)
