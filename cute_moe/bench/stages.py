"""Per-stage times of the cute_moe bf16 pipeline (route, plan, FC1, FC2, combine) on one input
set, each stage timed alone under CUDA-graph replay on buffers the previous stages filled, so a
slow fused call can be traced to its stage."""

from __future__ import annotations

from typing import Dict

from ..gemm import grouped_gemm_fc1, grouped_gemm_fc2
from ..routing import build_plan, combine, route
from ..select import select_config
from . import measure
from .cases import InputSet, PresetWeights


def stage_times(weights: PresetWeights, s: InputSet, reps: int = 20) -> Dict[str, float]:
    shape = weights.shape
    t = s.hidden.shape[0]
    local = shape.num_experts

    def do_route():
        return route(s.logits, s.bias, shape.top_k, shape.routing_method, n_group=shape.n_group,
                     topk_group=shape.topk_group, routed_scaling_factor=shape.routed_scaling_factor)

    ids, w = do_route()
    config = select_config(num_tokens=t, top_k=shape.top_k, hidden_size=shape.hidden_size,
                           intermediate_size=shape.intermediate_size, local_num_experts=local,
                           device=s.hidden.device, activation_type=shape.activation)
    plan = build_plan(ids, shape.top_k, 0, local, config.tile_rows)
    fc1 = dict(top_k=shape.top_k, intermediate_size=shape.intermediate_size,
               activation_type=int(shape.activation), config=config, **weights.swiglu)
    act = grouped_gemm_fc1(s.hidden, plan, weights.gemm1, **fc1)
    out2 = grouped_gemm_fc2(act, plan, weights.gemm2, hidden_size=shape.hidden_size, config=config)
    perm = plan.expanded_idx_to_permuted_idx[: t * shape.top_k]
    out = s.hidden.new_empty(s.hidden.shape)
    stages = {
        "route": do_route,
        "plan": lambda: build_plan(ids, shape.top_k, 0, local, config.tile_rows, plan=plan),
        "fc1": lambda: grouped_gemm_fc1(s.hidden, plan, weights.gemm1, out=act, **fc1),
        "fc2": lambda: grouped_gemm_fc2(act, plan, weights.gemm2, hidden_size=shape.hidden_size,
                                        config=config, out=out2),
        "combine": lambda: combine(out2, w, perm, out=out),
    }
    times = {name: measure.time_graph([fn], reps=reps) for name, fn in stages.items()}
    times["config"] = f"{config.variant}:{config.fc1}/{config.fc2}"
    return times
