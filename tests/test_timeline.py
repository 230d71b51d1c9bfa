"""cute-moe-bench --timeline: kernel records of graph replays split into calls; the timed
replays' warm-up (CPU)."""

import pytest

from cute_moe.bench.timeline import short_name, spans_of


def _call(t0, kernels):
    return [{"name": n, "ts": t0 + s, "dur": d} for n, s, d in kernels]


def test_spans_are_medians_per_kernel_position_with_gaps_and_the_call_span():
    plan = "kernel_cutlass_kernel_cute_moekernelsplanPlanSingleCta_object_at_0"
    gemm = "kernel_cutlass_kernel_cute_moekernelsgrouped_gemmGroupedGemm_object_at_0"
    records = (_call(0, [(plan, 0, 4), (gemm, 1, 20), (gemm, 5, 22)])
               + _call(100, [(plan, 0, 6), (gemm, 1, 24), (gemm, 5, 30)])
               + _call(200, [(plan, 0, 5), (gemm, 1, 22), (gemm, 5, 26)]))
    spans = spans_of(records, 3)
    assert [s.name for s in spans] == ["PlanSingleCta", "GroupedGemm", "GroupedGemm", "(call span)"]
    assert [s.duration_us for s in spans] == [5, 22, 26, 31]
    assert [s.start_us for s in spans[:3]] == [0, 1, 5]
    assert spans[1].gap_us == -4 and spans[2].gap_us == -18  # programmatic launches overlap


def test_spans_per_input_set_and_the_time_between_calls():
    """Calls alternate between input sets; a set that routes to slower experts shows in its own
    span, and the graph's gaps between calls in the last line."""
    k = "kernel_cutlass_kernel_cute_moekernelscombineCombineRows_object_at_0"
    records = (_call(0, [(k, 0, 10)]) + _call(12, [(k, 0, 30)]) + _call(50, [(k, 0, 10)])
               + _call(62, [(k, 0, 30)]))
    spans = spans_of(records, 4, num_sets=2)
    assert [s.name for s in spans] == ["CombineRows", "(call span)", "(set 0 span)", "(set 1 span)",
                                       "(to next call)"]
    assert [s.duration_us for s in spans[2:]] == [10, 30, 2]  # gaps 2, 8, 2
    assert [s.name for s in spans_of(records, 4)][-1] == "(call span)"  # one set: no extra lines


def test_records_that_do_not_split_into_calls_are_refused():
    with pytest.raises(RuntimeError, match="do not split"):
        spans_of(_call(0, [("a", 0, 1), ("b", 1, 1), ("c", 2, 1)]), 2)
    with pytest.raises(RuntimeError, match="do not split"):
        spans_of([], 2)


def test_short_names_keep_the_kernel_class():
    assert short_name("kernel_cutlass_kernel_cute_moekernelscombineCombineRows_object_at_0") == "CombineRows"
    assert short_name("kernel_cutlass_kernel_cute_moekernelsroutingRouteTopk_object_0") == "RouteTopk"
    assert short_name("void at::native::elementwise_kernel") == "void at::native::elementwise_kernel"


def test_warm_up_runs_at_least_the_count_and_then_until_the_minimum_time():
    from cute_moe.bench.measure import warm_up

    now = [0.0]
    runs, syncs = [], []

    def fn():  # each run takes 1/8 s on the fake clock
        runs.append(now[0])
        now[0] += 0.125

    assert warm_up(fn, 3, 1.0, lambda: syncs.append(len(runs)), clock=lambda: now[0]) == 8
    assert syncs == [3, 4, 5, 6, 7, 8]  # after the count, one synchronized run at a time
    now[0], runs[:] = 0.0, []
    assert warm_up(fn, 20, 1.0, lambda: None, clock=lambda: now[0]) == 20  # the count alone covers the time
