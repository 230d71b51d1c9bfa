"""``cute-moe-bench``: time cute_moe's fused MoE against its floors and peers on this GPU.

In one run: measure the device's copy bandwidth and dense bf16 matmul rate, then for every
(preset, token count, implementation) the median time of CUDA-graph replays over rotating input
sets, the byte and FLOP floors of that routing and the ratios. Prints a table, writes JSON lines
(with device, versions and git revision) and, with ``--plot``, a PNG.

``cute-moe-bench --compare a.jsonl b.jsonl`` compares two runs (two GPUs) without a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

DEFAULT_TOKENS = (1, 8, 64, 512, 4096)
B12X_IMPLS = ("cute_w4a16", "cute_nvfp4")  # precomputed routing: compared with cute_bf16_routed


def _parse_args(argv):
    from ..bench.presets import PRESETS

    p = argparse.ArgumentParser(prog="cute-moe-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", action="append", choices=sorted(PRESETS), help="model preset (repeatable); "
                   "default: qwen3-30b-a3b")
    p.add_argument("--tokens", type=lambda s: [int(x) for x in s.split(",")], default=list(DEFAULT_TOKENS),
                   help="comma-separated token counts (default %(default)s)")
    p.add_argument("--impl", action="append", help="only these implementations (repeatable; names as in the table)")
    p.add_argument("--variants", action="store_true", help="also time each forced grouped-GEMM variant")
    p.add_argument("--experts", type=int, help="override the number of experts (to fit GPU memory)")
    p.add_argument("--hidden", type=int, help="custom hidden size")
    p.add_argument("--intermediate", type=int, help="custom intermediate size")
    p.add_argument("--top-k", type=int, help="custom top_k")
    p.add_argument("--weights", choices=("bf16", "mxint4", "nvfp4"),
                   help="override the preset's weight format (mxint4 / nvfp4 also time the bf16 path on the "
                        "dequantized weights; nvfp4 runs b12x_fused_moe in w4a16 and nvfp4 modes)")
    p.add_argument("--sets", type=int, default=4, help="rotating input sets per point (default %(default)s)")
    p.add_argument("--reps", type=int, default=50, help="timed graph replays per point (default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("bench.jsonl"), help="JSON lines output (default %(default)s)")
    p.add_argument("--plot", type=Path, help="write a PNG: floor ratio and time vs tokens per implementation")
    p.add_argument("--stages", action="store_true",
                   help="also time each stage of the bf16 pipeline alone (route, plan, FC1, FC2, combine)")
    p.add_argument("--timeline", action="store_true",
                   help="also show each cute_moe call's kernels on the GPU timeline under graph replay (start, "
                        "duration, gap to the previous kernel)")
    p.add_argument("--eager", action="store_true",
                   help="also time eager calls of the cute_moe paths: host time per call and wall time, next to "
                        "graph replay")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two JSON-lines runs")
    return p.parse_args(argv)


def _git_revision() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _environment() -> Dict[str, object]:
    import torch

    import cute_moe
    from ..kernels.runtime import arch_of_device

    try:
        from importlib.metadata import version

        dsl = version("nvidia-cutlass-dsl")
    except Exception:  # noqa: BLE001 - metadata is informative only
        dsl = None
    props = torch.cuda.get_device_properties(0)
    return {"device": props.name, "arch": arch_of_device(), "sms": props.multi_processor_count,
            "torch": torch.__version__, "cutlass_dsl": dsl, "cute_moe": cute_moe.__version__,
            "git": _git_revision(), "python": platform.python_version()}


def _shapes(args):
    from dataclasses import replace

    from ..bench.presets import PRESETS

    shapes = []
    for name in args.preset or ["qwen3-30b-a3b"]:
        s = PRESETS[name]
        if args.experts:
            s = s.with_experts(args.experts)
        custom = {k: v for k, v in (("hidden_size", args.hidden), ("intermediate_size", args.intermediate),
                                    ("top_k", args.top_k)) if v}
        if custom:
            s = replace(s, name=s.name + "-custom", **custom)
        if args.weights and args.weights != s.weight_format:
            s = replace(s, name=f"{s.name}-{args.weights}", weight_format=args.weights)
        shapes.append(s)
    return shapes


def run(args) -> List[Dict[str, object]]:
    import torch
    from tqdm import tqdm

    from ..bench import cases, measure
    from ..bench.floors import floors_for

    env = _environment()
    ceilings = measure.measure_ceilings()
    print(f"{env['device']} ({env['arch']}): copy {ceilings.copy_bytes_per_s / 1e12:.2f} TB/s, "
          f"bf16 matmul {ceilings.bf16_flops_per_s / 1e12:.0f} TFLOP/s", file=sys.stderr)
    rows: List[Dict[str, object]] = []
    shapes = _shapes(args)
    with args.out.open("w") as sink:
        for shape in shapes:
            weights = cases.PresetWeights(shape)
            impls = cases.implementations(weights, args.variants)
            if args.impl:
                impls = {k: v for k, v in impls.items() if k in args.impl}
            points = [(t, name) for t in args.tokens for name in impls]
            inputs = {}
            for t, name in tqdm(points, desc=shape.name, unit="point", file=sys.stderr):
                if t not in inputs:
                    inputs = {t: cases.make_input_sets(shape, t, args.sets)}
                sets = inputs[t]
                calls = [lambda s=s, f=impls[name]: f(s) for s in sets]
                timer = measure.time_eager if name in cases.SYNCHRONIZING else measure.time_graph
                try:
                    us = timer(calls, reps=args.reps if timer is measure.time_graph else 10)
                    error = None
                except Exception as exc:  # noqa: BLE001 - one failing point must not end the sweep
                    us, error = float("nan"), f"{type(exc).__name__}: {exc}"
                if args.eager and name.startswith("cute_") and error is None:
                    host_us, wall_us = measure.time_host(calls)
                    row_extra = {"eager_host_us": host_us, "eager_wall_us": wall_us}
                else:
                    row_extra = {}
                if args.timeline and name.startswith("cute_") and error is None:
                    from ..bench.timeline import call_timeline, format_timeline

                    spans = call_timeline(calls)
                    # tqdm.write: whole lines above the progress bar, also in a log of stderr
                    tqdm.write(f"timeline {shape.name} T={t} {name} ({us:.1f} us):\n{format_timeline(spans)}",
                               file=sys.stderr)
                    row_extra["timeline"] = [vars(s) for s in spans]
                fl = [floors_for(shape, s.topk_ids, t, ceilings) for s in sets]
                byte_us = sum(f.byte_floor_us for f in fl) / len(fl)
                flop_us = sum(f.flop_floor_us for f in fl) / len(fl)
                row = {**env, "copy_TBps": ceilings.copy_bytes_per_s / 1e12,
                       "bf16_TFLOPs": ceilings.bf16_flops_per_s / 1e12, "preset": shape.name,
                       "weight_format": shape.weight_format, "impl": name, "tokens": t, "time_us": us,
                       "byte_floor_us": byte_us, "flop_floor_us": flop_us,
                       "byte_floor_ratio": byte_us / us, "flop_floor_ratio": flop_us / us, "error": error,
                       **row_extra}
                rows.append(row)
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                if args.stages and name == next(iter(impls)) and shape.weight_format == "bf16":
                    from ..bench.stages import stage_times

                    st = stage_times(weights, sets[0])
                    tqdm.write(f"stages {shape.name} T={t}: " + ", ".join(
                        f"{k} {v:.1f} us" if isinstance(v, float) else f"{k} {v}" for k, v in st.items()),
                        file=sys.stderr)
                    sink.write(json.dumps({**env, "preset": shape.name, "tokens": t, "stages_us": st}) + "\n")
            del weights, impls, inputs
            torch.cuda.empty_cache()
    return rows


def format_table(rows: List[Dict[str, object]]) -> str:
    """Time, floor ratios and speed-ups over the torch._grouped_mm pipeline and the cute_moe bf16
    path (same preset, same weights dequantized for mxint4) per point."""
    def times(impl):
        return {(r["preset"], r["tokens"]): r["time_us"] for r in rows if r["impl"] == impl}

    peer, bf16, bf16_routed = times("torch_grouped_mm"), times("cute_bf16"), times("cute_bf16_routed")

    def ratio(table, r):
        if table is bf16 and r["impl"].startswith(B12X_IMPLS) and bf16_routed:
            table = bf16_routed  # precomputed routing against the bf16 path of the same input
        ref = table.get((r["preset"], r["tokens"]))
        return f"{ref / r['time_us']:.2f}x" if ref and r["time_us"] == r["time_us"] else "-"

    head = (f"{'preset':<22}{'tokens':>7}  {'impl':<26}{'time us':>10}{'byte fl':>9}{'flop fl':>9}"
            f"{'vs torch':>9}{'vs bf16':>9}")
    eager = any("eager_host_us" in r for r in rows)
    if eager:
        head += f"{'eager host':>12}{'eager wall':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (f"{r['preset']:<22}{r['tokens']:>7}  {r['impl']:<26}{r['time_us']:>10.1f}"
                f"{r['byte_floor_ratio']:>9.2f}{r['flop_floor_ratio']:>9.2f}{ratio(peer, r):>9}{ratio(bf16, r):>9}")
        if eager:
            line += (f"{r['eager_host_us']:>12.1f}{r['eager_wall_us']:>12.1f}" if "eager_host_us" in r
                     else f"{'-':>12}{'-':>12}")
        lines.append(line + (f"  ERROR {r['error']}" if r.get("error") else ""))
    lines.append("byte fl / flop fl: floor time / measured time (1.00 = at the floor; the byte floor counts the "
                 "preset's weight format); vs torch / vs bf16: speed-up over the torch._grouped_mm pipeline / "
                 "the cute_moe bf16 path (its routed entry for the b12x rows)"
                 + ("; eager host / wall: us of host time for one eager call to return, "
                    "and per call of back-to-back eager calls" if eager else ""))
    return "\n".join(lines)


def plot(rows: List[Dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = sorted({r["preset"] for r in rows})
    fig, axes = plt.subplots(2, len(presets), figsize=(6 * len(presets), 8), squeeze=False)
    for col, preset in enumerate(presets):
        mine = [r for r in rows if r["preset"] == preset]
        for impl in dict.fromkeys(r["impl"] for r in mine):
            pts = sorted((r["tokens"], r["time_us"], max(r["byte_floor_ratio"], r["flop_floor_ratio"]))
                         for r in mine if r["impl"] == impl)
            axes[0][col].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
            axes[1][col].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=impl)
        axes[0][col].set(title=f"{preset}: time", xscale="log", yscale="log", xlabel="tokens", ylabel="us")
        axes[1][col].set(title=f"{preset}: fraction of the floor", xscale="log", xlabel="tokens",
                         ylabel="floor / time", ylim=(0, 1.05))
        axes[0][col].legend(fontsize=7)
    device = rows[0]["device"] if rows else ""
    fig.suptitle(f"cute_moe on {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def compare(path_a: Path, path_b: Path) -> str:
    def load(p):
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "impl" in r]  # stage-timing lines carry no implementation
        return {(r["preset"], r["impl"], r["tokens"]): r for r in rows}, (rows[0]["device"] if rows else "?")

    a, dev_a = load(path_a)
    b, dev_b = load(path_b)
    head = f"{'preset':<18}{'impl':<26}{'tokens':>7}{'A us':>10}{'B us':>10}{'B/A':>8}"
    lines = [f"A = {dev_a} ({path_a}), B = {dev_b} ({path_b})", head, "-" * len(head)]
    for key in sorted(set(a) & set(b)):
        ta, tb = a[key]["time_us"], b[key]["time_us"]
        lines.append(f"{key[0]:<18}{key[1]:<26}{key[2]:>7}{ta:>10.1f}{tb:>10.1f}{tb / ta:>8.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.compare:
        print(compare(*args.compare))
        return 0
    from ..kernels.runtime import gpu_available

    if not gpu_available():
        print("cute-moe-bench: no NVIDIA GPU of SM90, SM100 or SM120 is visible; the benchmark times "
              "GPU kernels and cannot run here. (The offline tools work on a CPU: see cute-moe-convert.)",
              file=sys.stderr)
        return 2
    rows = run(args)
    print(format_table(rows))
    print(f"JSON lines: {args.out}", file=sys.stderr)
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
