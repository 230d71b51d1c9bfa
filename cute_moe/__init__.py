"""cute_moe: CuTe-DSL kernels for fused Mixture-of-Experts inference.

The public entry points mirror FlashInfer's trtllm-gen fused-MoE API (same signatures, enums,
prepared-weight layouts and return conventions) and run on SM90, SM100 and SM120 GPUs.
Submodules load on first use, so ``import cute_moe`` stays cheap on machines without a GPU.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    # fused entry points
    "trtllm_bf16_moe": "cute_moe.moe",
    "trtllm_bf16_routed_moe": "cute_moe.moe",
    "trtllm_mxint4_block_scale_moe": "cute_moe.moe",
    "trtllm_mxint4_block_scale_routed_moe": "cute_moe.moe",
    "b12x_fused_moe": "cute_moe.b12x",
    "warmup": "cute_moe.precompile",
    # standalone routing
    "route": "cute_moe.routing",
    # enums
    "RoutingMethodType": "cute_moe.enums",
    "ActivationType": "cute_moe.enums",
    "WeightLayout": "cute_moe.enums",
    # weight preparation
    "prepare_bf16_moe_weights": "cute_moe.prepare",
    "unprepare_bf16_moe_weights": "cute_moe.prepare",
    "prepare_static_weights_for_trtllm_mxint4_moe": "cute_moe.prepare",
    "unprepare_static_weights_for_trtllm_mxint4_moe": "cute_moe.prepare",
    "prepare_mxint4_moe_weights": "cute_moe.prepare",
    "unprepare_mxint4_moe_weights": "cute_moe.prepare",
    "prepare_b12x_fp4_moe_weights": "cute_moe.prepare",
    "unprepare_b12x_fp4_moe_weights": "cute_moe.prepare",
    "quantize_mxint4": "cute_moe.prepare",
    "dequantize_mxint4": "cute_moe.prepare",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cute_moe' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
