"""``cute-moe-warmup``: compile every kernel a model's MoE layers need into the kernel cache.

On a GPU machine the kernels are built for the local GPU; on any machine ``--arch`` builds them
for sm_90a, sm_100a or sm_120a (a container image can ship a warm cache: set
``CUTE_MOE_CACHE_DIR`` to a folder inside the image). A second run loads everything from the
cache and compiles nothing.
"""

from __future__ import annotations

import argparse
import sys


def _parse_args(argv):
    from ..bench.presets import PRESETS
    from ..precompile import DEFAULT_TOKENS

    p = argparse.ArgumentParser(prog="cute-moe-warmup", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="model preset (or give the shapes below)")
    p.add_argument("--hidden", type=int, help="hidden size")
    p.add_argument("--intermediate", type=int, help="intermediate size")
    p.add_argument("--experts", type=int, help="number of experts")
    p.add_argument("--local-experts", type=int, help="experts on this device (expert parallelism)")
    p.add_argument("--top-k", type=int, help="experts per token")
    p.add_argument("--weights", choices=("bf16", "mxint4", "nvfp4"),
                   help="weight format (default: the preset's, or bf16); nvfp4: the b12x_fused_moe kernels")
    p.add_argument("--tokens", type=lambda s: [int(x) for x in s.split(",")], default=list(DEFAULT_TOKENS),
                   help="comma-separated token counts the model will see (default %(default)s)")
    p.add_argument("--variants", action="store_true", help="also every forced GEMM variant (micro, static, dynamic; wgmma on sm_90a)")
    p.add_argument("--arch", choices=("sm_90a", "sm_100a", "sm_120a"),
                   help="target arch (default: the local GPU's; required without a GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _model(args):
    from ..bench.presets import PRESETS
    from ..enums import RoutingMethodType

    if args.preset:
        s = PRESETS[args.preset]
        model = dict(hidden_size=s.hidden_size, intermediate_size=s.intermediate_size, num_experts=s.num_experts,
                     top_k=s.top_k, weights=s.weight_format, routing_method=s.routing_method, n_group=s.n_group,
                     topk_group=s.topk_group, activation=s.activation,
                     swiglu_params=s.swiglu_alpha is not None)
    else:
        missing = [n for n in ("hidden", "intermediate", "experts", "top_k") if getattr(args, n) is None]
        if missing:
            raise SystemExit("cute-moe-warmup: give --preset, or --hidden, --intermediate, --experts and --top-k "
                             f"(missing: {', '.join('--' + m.replace('_', '-') for m in missing)})")
        model = dict(hidden_size=args.hidden, intermediate_size=args.intermediate, num_experts=args.experts,
                     top_k=args.top_k, routing_method=RoutingMethodType.Renormalize)
    for name, value in (("hidden_size", args.hidden), ("intermediate_size", args.intermediate),
                        ("num_experts", args.experts), ("top_k", args.top_k), ("weights", args.weights)):
        if value is not None:
            model[name] = value
    if args.local_experts:
        model["local_num_experts"] = args.local_experts
    return model


def main(argv=None) -> int:
    args = _parse_args(argv)
    from ..kernels import disk_cache, runtime
    from ..precompile import warmup

    if args.arch is None and not runtime.gpu_available():
        print("cute-moe-warmup: no SM90 / SM100 / SM120 GPU is visible; name the target with "
              "--arch sm_90a|sm_100a|sm_120a", file=sys.stderr)
        return 2
    model = _model(args)
    variants = (None, "micro", "static", "dynamic", "wgmma") if args.variants else (None,)
    report = warmup(arch=args.arch, progress=not args.quiet, tokens=args.tokens, gemm_variants=variants, **model)
    where = disk_cache.default_root() if disk_cache.cache_enabled() else "off (CUTE_MOE_CACHE=0)"
    print(f"{report.summary()}; cache: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
