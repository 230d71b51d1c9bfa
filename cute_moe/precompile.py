"""Compile, ahead of the first call, every kernel a model's MoE layers need (``cute_moe.warmup``).

The kernels of one fused call follow from the layer's shapes, the token count (through the
selector: variant and tiles) and the routing options; ``model_kernels`` lists them for a set of
token counts, ``warmup`` compiles them (or loads them from the disk cache, cute_moe.kernels.
disk_cache) for the local GPU or, on any machine, for a named arch, so that a container image can
be built with the cache already warm and a serving process starts without compiling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .enums import ActivationType, RoutingMethodType

DEFAULT_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


@dataclass(frozen=True)
class KernelJob:
    """One kernel to have ready: a name for the progress bar and the call that gets it."""

    name: str
    key: Tuple
    get: Callable[[str], object]  # arch -> launcher


@dataclass
class WarmupReport:
    arch: str
    kernels: int = 0
    compiled: int = 0  # compiled in this call
    loaded: int = 0  # loaded from the disk cache
    ready: int = 0  # already in this process
    seconds: float = 0.0
    per_kernel: Dict[str, Tuple[str, float]] = field(default_factory=dict)  # name -> (source, seconds)

    def summary(self) -> str:
        return (f"{self.kernels} kernels for {self.arch}: {self.compiled} compiled, {self.loaded} loaded from the "
                f"cache, {self.ready} already loaded; {self.seconds:.1f} s")


def model_kernels(*, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int,
                  local_num_experts: Optional[int] = None, weights: str = "bf16",
                  routing_method: RoutingMethodType = RoutingMethodType.Renormalize,
                  n_group: Optional[int] = None, topk_group: Optional[int] = None,
                  activation: ActivationType = ActivationType.Swiglu, swiglu_params: bool = False,
                  tokens: Iterable[int] = DEFAULT_TOKENS, arch: str = "sm_90a",
                  gemm_variants: Sequence[Optional[str]] = (None,)) -> List[KernelJob]:
    """The kernels of fused calls at each token count: routing from float32 and bf16 logits
    (with a bf16 and a float32 bias where the method reads one), unpacking of packed routing, the
    plan, FC1 and FC2 of each selected config, and the combine for bf16 and float32 weights.
    ``swiglu_params``: the layer passes gemm1 alpha / beta / clamp (GPT-OSS). ``weights="nvfp4"``
    (``b12x_fused_moe``, which takes precomputed routing): no routing kernels; FC1 / FC2 of both
    quant modes (w4a16, nvfp4) and the NVFP4 activation quantizers."""
    from . import gemm
    from .kernels.topk_pack import unpack_kernel
    from .plan import PlanShape
    from .routing import RouteSpec, combine_kernel, fused_plan_source, plan_is_single_cta, plan_kernel
    from .kernels.gemm_config import wgmma_runs
    from .select import select_config

    method = RoutingMethodType(int(routing_method))
    local = local_num_experts or num_experts
    jobs: Dict[Tuple, KernelJob] = {}

    def add(name, key, get):
        jobs.setdefault(key, KernelJob(name, key, get))

    biases = (torch.bfloat16, torch.float32) if method in (RoutingMethodType.DeepSeekV3,
                                                           RoutingMethodType.MiniMax2) else (None,)
    fp4 = weights == "nvfp4"
    routings = []  # (RouteSpec, label)
    if not fp4:
        for logits in (torch.float32, torch.bfloat16):
            for bias in biases:
                spec = RouteSpec.of(method, num_experts, top_k, logits, bias, n_group, topk_group, True, False)
                label = f"{method.name} logits {str(logits)[6:]}" + (f" {str(bias)[6:]} bias" if bias else "")
                routings.append((spec, label))
                add(f"route {label}", ("route", spec), spec.kernel)
        add("unpack routing", ("unpack",), unpack_kernel)
    else:
        from .activation_quant import quantize_kernel

        packed = gemm.token_rows_of(arch, True)[0] == "fp4"  # packed for SM120's block-scaled MMA
        for gather in (True, False):
            add(f"nvfp4 quantize {'x rows' if gather else 'activation'}", ("nvfp4_quantize_rows", gather, packed),
                lambda a, g=gather: quantize_kernel(a, g, packed))
    for f32 in (False, True):
        add(f"combine top_k={top_k}{' f32 weights' if f32 else ''}", ("combine", f32),
            lambda a, f=f32: combine_kernel(a, top_k, f))
    act = ActivationType(int(activation))
    for t in sorted(set(int(t) for t in tokens if int(t) > 0)):
        for variant in gemm_variants:
            if variant == "wgmma" and not wgmma_runs(arch, weights):
                continue  # the SM90 instantiation takes bf16 and MXINT4 weights
            config = select_config(num_tokens=t, top_k=top_k, hidden_size=hidden_size,
                                   intermediate_size=intermediate_size, local_num_experts=local,
                                   weight_kind=weights, arch=arch, variant=variant,
                                   activation_type=act)
            shape = PlanShape(t, top_k, local, config.tile_rows)
            if plan_is_single_cta(shape):
                # ids (routed entries with ids), packed pairs, and the routing folded in at small T
                sources = [("ids", "ids")] + ([] if fp4 else [("packed", "packed")])
                sources += [(spec, label) for spec, label in routings if fused_plan_source(shape, spec, False) == spec]
                for source, label in sources:
                    add(f"plan single_cta from {label}", ("plan", "single_cta", source),
                        lambda a, s=source: plan_kernel(a, "single_cta", s))
            else:
                for part in ("count", "scan", "scatter"):
                    add(f"plan {part}", ("plan", part), lambda a, n=part: plan_kernel(a, n))
            if fp4:  # both b12x quant modes: w4a16 (bf16 inputs) and nvfp4 (quantized inputs)
                keys = [(f"{op} {config.variant} {getattr(config, op.lower()).tag} nvfp4 {mode}", key)
                        for mode, (rows1, rows2) in (("w4a16", gemm.token_rows_of(arch, False)),
                                                     ("nvfp4", gemm.token_rows_of(arch, True)))
                        for op, key in (("FC1", gemm.fc1_kernel_key(config.fc1, config.variant, act,
                                                                    weight_kind=weights, has_out_scale=True,
                                                                    token_rows=rows1)),
                                        ("FC2", gemm.fc2_kernel_key(config.fc2, config.variant, weights,
                                                                    has_out_scale=True, token_rows=rows2)))]
            else:
                keys = [(f"{op} {config.variant} {getattr(config, op.lower()).tag} {weights}", key) for op, key in (
                    ("FC1", gemm.fc1_kernel_key(config.fc1, config.variant, act, False, swiglu_params, swiglu_params,
                                                swiglu_params, weights)),
                    ("FC2", gemm.fc2_kernel_key(config.fc2, config.variant, weights)))]
            for name, key in keys:
                add(name, key, lambda a, k=key: gemm.gemm_kernel(k, a))
    return list(jobs.values())


def warmup(*, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int,
           arch: Optional[str] = None, progress: bool = False, **model) -> WarmupReport:
    """Compile (or load from the disk cache) every kernel of ``model_kernels`` for ``arch``
    (default: the local GPU's; any of sm_90a / sm_100a / sm_120a works on a CPU-only machine).
    ``progress`` shows a progress bar on stderr."""
    from .kernels import runtime

    arch = arch or runtime.arch_of_device()
    if arch not in runtime.TARGET_ARCHS:
        raise ValueError(f"arch: expected one of {runtime.TARGET_ARCHS}, got {arch!r}")
    jobs = model_kernels(hidden_size=hidden_size, intermediate_size=intermediate_size, num_experts=num_experts,
                         top_k=top_k, arch=arch, **model)
    report = WarmupReport(arch, kernels=len(jobs))
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"cute_moe kernels ({arch})", unit="kernel", file=sys.stderr)
    start = time.perf_counter()
    for job in jobs:
        before = len(runtime.KERNELS.records)
        t0 = time.perf_counter()
        job.get(arch)
        new = runtime.KERNELS.records[before:]
        source = ("compiled" if any(r.source == "compiled" for r in new) else "disk") if new else "ready"
        report.per_kernel[job.name] = (source, time.perf_counter() - t0)
        counter = {"compiled": "compiled", "disk": "loaded", "ready": "ready"}[source]
        setattr(report, counter, getattr(report, counter) + 1)
        if bar is not None:
            bar.set_postfix_str(f"{job.name} ({source})", refresh=False)
            bar.update()
    if bar is not None:
        bar.close()
    report.seconds = time.perf_counter() - start
    return report
