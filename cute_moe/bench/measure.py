"""Timing on the GPU: ceilings of the device and median times of CUDA-graph replays.

Times come from CUDA events around graph replays (launch gaps removed), after warm-up,
median of many repetitions. Callers pass several input sets; one replay runs the function
once per set, so weights and activations that would otherwise stay in L2 are rotated out.

Warm-up is a number of runs and then synchronized runs until ``MIN_WARMUP_S`` has passed: right
after a preset's weights were created, the first ~10 ms of decode replays once ran 16% slower
than every later one (mixtral-8x7b T=1 on an H100: 283.8 us a call, then 244.1 and 243.7 from the
same weights), longer than five replays of a 0.5 ms graph last.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class Ceilings:
    copy_bytes_per_s: float  # device-to-device copy, bytes read + written per second
    bf16_flops_per_s: float  # dense bf16 matmul (torch / cuBLAS), 8192^3


MIN_WARMUP_S = 0.1


def warm_up(fn: Callable[[], None], runs: int, min_seconds: float, sync: Callable[[], None],
            clock: Callable[[], float] = time.perf_counter) -> int:
    """Run ``fn`` ``runs`` times, then on, one synchronized run at a time, until ``min_seconds``
    have passed since the start; returns the number of runs."""
    start = clock()
    for _ in range(runs):
        fn()
    sync()
    done = runs
    while clock() - start < min_seconds:
        fn()
        sync()
        done += 1
    return done


def _median_ms(fn: Callable[[], None], reps: int, warmup: int) -> float:
    warm_up(fn, warmup, MIN_WARMUP_S, torch.cuda.synchronize)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def measure_ceilings(copy_bytes: int = 2 << 30, matmul_n: int = 8192) -> Ceilings:
    src = torch.empty(copy_bytes // 2, dtype=torch.bfloat16, device="cuda").uniform_()
    dst = torch.empty_like(src)
    copy_ms = _median_ms(lambda: dst.copy_(src), reps=30, warmup=5)
    src = dst = None  # free 4 GiB before the matmul
    a = torch.randn(matmul_n, matmul_n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn_like(a)
    mm_ms = _median_ms(lambda: torch.mm(a, b), reps=30, warmup=5)
    return Ceilings(copy_bytes_per_s=2 * copy_bytes / (copy_ms * 1e-3),
                    bf16_flops_per_s=2 * matmul_n**3 / (mm_ms * 1e-3))


def capture_graph(calls: Sequence[Callable[[], None]]) -> "torch.cuda.CUDAGraph":
    """A CUDA graph that runs every call once per replay (after one eager round on a side stream)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:  # eager warm-up: compiles kernels, allocates pools
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    return graph


def time_graph(calls: Sequence[Callable[[], None]], reps: int = 50, warmup: int = 5) -> float:
    """Median microseconds of one call, from a CUDA graph that runs every call once per replay."""
    graph = capture_graph(calls)
    return _median_ms(graph.replay, reps=reps, warmup=warmup) * 1e3 / len(calls)


def time_eager(calls: Sequence[Callable[[], None]], reps: int = 20, warmup: int = 3) -> float:
    """Median microseconds of one call, eager (for code that synchronizes with the host)."""

    def run_all():
        for call in calls:
            call()

    return _median_ms(run_all, reps=reps, warmup=warmup) * 1e3 / len(calls)


def time_host(calls: Sequence[Callable[[], None]], reps: int = 40, warmup: int = 3):
    """Eager calls: ``(host_us, wall_us)`` per call. ``host_us`` is the median host time one call
    takes to return (validation, allocation, launches; the GPU runs behind, and few enough calls
    are queued that launches never block); ``wall_us`` is the time per call of back-to-back eager
    calls, synchronized at the end: the larger of host and GPU time."""
    for _ in range(warmup):
        for call in calls:
            call()
    torch.cuda.synchronize()
    host = []
    start = time.perf_counter()
    for i in range(reps):
        call = calls[i % len(calls)]
        t0 = time.perf_counter()
        call()
        host.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / reps
    return statistics.median(host) * 1e6, wall * 1e6
