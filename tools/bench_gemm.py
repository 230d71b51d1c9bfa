"""FC1 + FC2 grouped-GEMM time per variant, against the byte and FLOP floors and a torch pipeline.

    python tools/bench_gemm.py [--shapes qwen3-30b-a3b deepseek-v3] [--tokens 1 8 64 512 4096]
                               [--variants auto micro static dynamic] [--tiles] [--no-torch]
                               [--experts N] [--json out.json]

Per shape (all experts local, uniform random top-k routing, or with ``--routing preset`` the
routing ``cute-moe-bench`` times: the preset's method on random logits, whose experts' loads are
uneven; four routings rotated so the weights of one call are not in L2 for the next) and token
count it prints, in microseconds (median of
CUDA-graph replays, cute_moe.bench.measure.time_graph):

* ``fc1``, ``fc2``, ``total``: the grouped GEMMs of the selector's config (``auto``) or of a forced
  variant; with ``--tiles`` every (variant, bn) entry of the selector table;
* ``bytes%``: byte floor / total (floor = weights of the distinct experts the routing activates +
  hidden in / out, over the copy bandwidth measured in the same run);
* ``flops%``: FLOP floor / total (2 * T * top_k * params per expert over the cuBLAS bf16 rate
  measured in the same run);
* ``torch``: gather rows by expert -> ``torch._grouped_mm`` -> SwiGLU -> ``torch._grouped_mm``
  (routing sort precomputed, as the plan is for cute_moe), and ``speedup`` = torch / total.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Tuple

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cute_moe.bench.cases import make_input_sets  # noqa: E402
from cute_moe.bench.floors import floors_for  # noqa: E402
from cute_moe.bench.measure import measure_ceilings, time_graph  # noqa: E402
from cute_moe.bench.presets import PRESETS  # noqa: E402
from cute_moe.gemm import grouped_gemm_fc1, grouped_gemm_fc2  # noqa: E402
from cute_moe.kernels.gemm_config import GemmConfig, TileConfig  # noqa: E402
from cute_moe.reference import reference_plan  # noqa: E402
from cute_moe.select import TILES, select_config  # noqa: E402

ROTATIONS = 4


def _routings(shape, t: int, how: str):
    if how == "preset":
        return [s.topk_ids for s in make_input_sets(shape, t, ROTATIONS)]
    e, k = shape.num_experts, shape.top_k
    return [torch.rand(t, e, device="cuda").argsort(dim=1)[:, :k].to(torch.int32) for _ in range(ROTATIONS)]


class Problem:
    """Prepared-layout weights (random: timing does not depend on values) and inputs of one shape."""

    def __init__(self, shape, experts: int, with_torch: bool):
        self.shape = shape.with_experts(experts) if experts != shape.num_experts else shape
        s = self.shape
        h, i, e, m = s.hidden_size, s.intermediate_size, s.num_experts, s.fc1_rows
        self.g1 = torch.randn(e, h // 64, m, 64, device="cuda", dtype=torch.bfloat16).mul_(h ** -0.5)
        self.g2 = torch.randn(e, i // 64, h, 64, device="cuda", dtype=torch.bfloat16).mul_(i ** -0.5)
        # torch._grouped_mm takes [E, K, N] with K-major storage: transposed views of [E, N, K]
        self.w1t = self.w2t = None
        if with_torch:
            self.w1t = torch.randn(e, m, h, device="cuda", dtype=torch.bfloat16).mul_(h ** -0.5).transpose(1, 2)
            self.w2t = torch.randn(e, h, i, device="cuda", dtype=torch.bfloat16).mul_(i ** -0.5).transpose(1, 2)

    def cute_calls(self, t: int, routings, config: GemmConfig, which: str = "both"):
        s = self.shape
        calls = []
        for ids in routings:
            x = torch.randn(t, s.hidden_size, device="cuda").to(torch.bfloat16)
            plan = reference_plan(ids, s.top_k, 0, s.num_experts, config.tile_rows)
            act = torch.randn(plan.shape.max_padded_rows, s.intermediate_size, device="cuda").to(torch.bfloat16)
            y = torch.empty(plan.shape.max_padded_rows, s.hidden_size, device="cuda", dtype=torch.bfloat16)

            def call(x=x, plan=plan, act=act, y=y):
                if which in ("both", "fc1"):
                    grouped_gemm_fc1(x, plan, self.g1, top_k=s.top_k, intermediate_size=s.intermediate_size,
                                     activation_type=s.activation, config=config, out=act)
                if which in ("both", "fc2"):
                    grouped_gemm_fc2(act, plan, self.g2, hidden_size=s.hidden_size, config=config, out=y)

            calls.append(call)
        return calls

    def torch_calls(self, t: int, routings):
        s = self.shape
        i = s.intermediate_size
        calls = []
        for ids in routings:
            x = torch.randn(t, s.hidden_size, device="cuda").to(torch.bfloat16)
            flat = ids.reshape(-1).long()
            order = torch.argsort(flat, stable=True)
            token = order // s.top_k
            offs = torch.cumsum(torch.bincount(flat, minlength=s.num_experts), 0).to(torch.int32)

            def call(x=x, token=token, offs=offs):
                xs = x.index_select(0, token)
                h1 = torch._grouped_mm(xs, self.w1t, offs=offs)
                a = F.silu(h1[:, i:]) * h1[:, :i]
                torch._grouped_mm(a, self.w2t, offs=offs)

            calls.append(call)
        return calls


def parse_config(spec: str) -> Tuple[str, GemmConfig]:
    """``label=variant:bm,bn,wm,wn,stages[:bm,bn,wm,wn,stages][:ctas=N][:pdl]`` (second tile: FC2)."""
    label, _, body = spec.partition("=")
    parts = body.split(":")
    variant, tiles, ctas, pdl = parts[0], [], 1, False
    for part in parts[1:]:
        if part == "pdl":
            pdl = True
        elif part.startswith("ctas="):
            ctas = int(part[5:])
        else:
            tiles.append(TileConfig(*(int(v) for v in part.split(",")), mma="wgmma" if variant == "wgmma" else "warp"))
    return label, GemmConfig(variant, tiles[0], tiles[-1], ctas, pdl)


# Candidates around the selector's choices, each for a range of routed rows per expert (T*K/E).
SWEEP = [
    ("micro8", "micro:64,8,4,1,8", 0, 8), ("micro8pdl", "micro:64,8,4,1,8:pdl", 0, 8),
    ("micro8s12", "micro:64,8,4,1,12", 0, 8), ("micro8bm128", "micro:128,8,4,1,6", 0, 8),
    ("static8", "static:64,8,4,1,8", 0, 8), ("micro16", "micro:64,16,4,1,8", 2, 32),
    ("static32", "static:128,32,4,1,4", 8, 64), ("static64", "static:128,64,2,2,4", 16, 128),
    ("dyn32", "dynamic:128,32,4,1,4:ctas=2", 8, 64), ("dyn64", "dynamic:128,64,2,2,4:ctas=2", 16, 128),
    ("dyn128w8", "dynamic:128,128,2,4,3:ctas=2", 64, 1e9), ("dyn128w4", "dynamic:128,128,2,2,3:ctas=2", 64, 1e9),
    ("dyn256", "dynamic:256,128,4,2,3:ctas=1", 64, 1e9), ("static128w4", "static:128,128,2,2,3", 64, 1e9),
]


def _configs(args, prob: Problem, t: int):
    s = prob.shape
    out = [parse_config(c) for c in args.config]
    if args.tiles:
        for (variant, bn), (fc1, fc2, ctas, pdl) in sorted(TILES["sm_90a"].items()):
            out.append((f"{variant}/{bn}", GemmConfig(variant, fc1, fc2, ctas, pdl)))
        return out
    if args.sweep:
        rows = t * s.top_k / s.num_experts
        out += [parse_config(f"{label}={spec}") for label, spec, lo, hi in SWEEP if lo <= rows <= hi]
    for v in args.variants:
        config = select_config(num_tokens=t, top_k=s.top_k, hidden_size=s.hidden_size,
                               intermediate_size=s.intermediate_size, local_num_experts=s.num_experts,
                               device=torch.device("cuda"), variant=None if v == "auto" else v,
                               activation_type=s.activation)
        out.append((v, config))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["qwen3-30b-a3b", "deepseek-v3"], choices=sorted(PRESETS))
    p.add_argument("--tokens", nargs="+", type=int, default=[1, 8, 64, 512, 4096])
    p.add_argument("--variants", nargs="*", default=None, choices=["auto", "micro", "static", "dynamic", "wgmma"],
                   help="selector configs to time (default: all four, none with --sweep / --tiles)")
    p.add_argument("--tiles", action="store_true", help="time every (variant, bn) of the selector table")
    p.add_argument("--sweep", action="store_true", help="time the SWEEP candidates that suit each T")
    p.add_argument("--config", nargs="*", default=[], help="extra configs: " + parse_config.__doc__)
    p.add_argument("--routing", choices=("uniform", "preset"), default="uniform",
                   help="uniform random top-k, or the preset's routing method on random logits")
    p.add_argument("--reps", type=int, default=50, help="graph replays per timing")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--experts", type=int, default=0, help="experts per shape (default: the model's)")
    p.add_argument("--json", type=str, default=None)
    p.add_argument("--dry-run", action="store_true", help="parse the arguments and stop")
    args = p.parse_args(argv)
    if args.variants is None:
        args.variants = [] if (args.sweep or args.tiles) else ["auto", "micro", "static", "dynamic"]
    if args.dry_run:
        print(args)
        return

    ceilings = measure_ceilings()
    print(f"copy {ceilings.copy_bytes_per_s / 1e12:.2f} TB/s (read + write), "
          f"cuBLAS bf16 {ceilings.bf16_flops_per_s / 1e12:.0f} TFLOP/s", flush=True)
    rows = []
    head = f"{'shape':<14} {'T':>5} {'variant':<11} {'tile':<28} {'fc1':>8} {'fc2':>8} {'total':>8} " \
           f"{'bytes%':>7} {'flops%':>7} {'torch':>8} {'speedup':>7}"
    for name in args.shapes:
        prob = Problem(PRESETS[name], args.experts or PRESETS[name].num_experts, not args.no_torch)
        s = prob.shape
        print(f"\n{name}: H={s.hidden_size} I={s.intermediate_size} E={s.num_experts} top_k={s.top_k}")
        print(head, flush=True)
        for t in args.tokens:
            routings = _routings(s, t, args.routing)
            fl = [floors_for(s, ids, t, ceilings) for ids in routings]
            byte_floor = sum(f.byte_floor_us for f in fl) / len(fl)
            flop_floor = sum(f.flop_floor_us for f in fl) / len(fl)
            torch_us = None
            if not args.no_torch:
                try:
                    torch_us = time_graph(prob.torch_calls(t, routings), reps=args.reps)
                except Exception as exc:  # report and go on: the torch baseline is optional
                    print(f"  torch pipeline failed: {type(exc).__name__}: {exc}")
            for label, config in _configs(args, prob, t):
                fc1 = time_graph(prob.cute_calls(t, routings, config, "fc1"), reps=args.reps)
                fc2 = time_graph(prob.cute_calls(t, routings, config, "fc2"), reps=args.reps)
                total = time_graph(prob.cute_calls(t, routings, config), reps=args.reps)
                tile = f"{config.variant}:{config.fc1.tag}" + ("+pdl" if config.pdl else "")
                speed = f"{torch_us / total:7.2f}" if torch_us else f"{'-':>7}"
                torch_col = f"{torch_us:8.1f}" if torch_us else f"{'-':>8}"
                print(f"{name[:14]:<14} {t:>5} {label:<11} {tile:<28} {fc1:8.1f} {fc2:8.1f} {total:8.1f} "
                      f"{100 * byte_floor / total:6.1f}% {100 * flop_floor / total:6.1f}% {torch_col} {speed}",
                      flush=True)
                rows.append(dict(shape=name, tokens=t, variant=label, config=tile, fc1_us=fc1, fc2_us=fc2,
                                 total_us=total, byte_floor_us=byte_floor, flop_floor_us=flop_floor,
                                 torch_us=torch_us))
        del prob
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(copy_bytes_per_s=ceilings.copy_bytes_per_s, bf16_flops_per_s=ceilings.bf16_flops_per_s,
                           rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
