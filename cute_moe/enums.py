"""Enumerations shared with FlashInfer's trtllm-gen MoE API (``flashinfer/tllm_enums.py``).

The integer values are part of the public contract: callers pass plain ints
(``routing_method_type=2``) as often as enum members, so every value here must
equal FlashInfer's.
"""

from __future__ import annotations

from enum import IntEnum


class _EvalSafeRepr:
    def __repr__(self) -> str:  # e.g. RoutingMethodType.DeepSeekV3, round-trips through eval
        return f"{type(self).__name__}.{self.name}"


class RoutingMethodType(_EvalSafeRepr, IntEnum):
    """How router logits become top-k expert ids and weights."""

    Default = 0  # softmax over all experts -> top-k
    Renormalize = 1  # top-k -> softmax over the k selected
    DeepSeekV3 = 2  # sigmoid -> +bias -> top-2 sum per group -> top groups -> top-k
    Llama4 = 3  # top-1 -> sigmoid
    RenormalizeNaive = 4  # softmax -> top-k -> divide by the sum (Qwen3); same math as Renormalize
    TopK = 5  # top-k of raw logits, weights are the raw logits
    SigmoidRenorm = 6  # sigmoid -> top-k -> divide by the sum
    MiniMax2 = 7  # sigmoid + bias -> top-k; w = sigmoid * routed_scaling_factor / (sum + 1e-20), unbiased
    Sigmoid = 8  # sigmoid -> top-k, no renormalization
    TopKSigmoid = 9  # top-k of raw logits -> sigmoid
    Unspecified = 10


class RoutingInputMode(_EvalSafeRepr, IntEnum):
    """Where the top-k routing of a fused call comes from."""

    FromLogits = 0
    PackedPrecomputed = 1  # int32 (expert_id << 16) | bf16 weight bits
    UnpackedPrecomputed = 2  # (topk_ids, topk_weights) pair


class ActivationType(_EvalSafeRepr, IntEnum):
    """FC1 activation; values follow TensorRT-LLM's ``ActivationType``."""

    Gelu = 0
    Relu = 1
    Silu = 2
    Swiglu = 3
    Geglu = 4
    SwigluBias = 5
    Relu2 = 6
    SwigluStep = 7
    GegluTanh = 8
    Identity = 9
    Situ = 10
    InvalidType = 11

    @property
    def is_gated(self) -> bool:
        return self in _GATED


_GATED = frozenset(
    {
        ActivationType.Swiglu,
        ActivationType.Geglu,
        ActivationType.SwigluBias,
        ActivationType.SwigluStep,
        ActivationType.GegluTanh,
        ActivationType.Situ,
    }
)

# Activations the cute_moe kernels implement (a subset of the enum above).
SUPPORTED_ACTIVATIONS = (ActivationType.Swiglu, ActivationType.Relu2)


def is_gated_activation(activation_type: int) -> bool:
    return ActivationType(int(activation_type)).is_gated


class WeightLayout(_EvalSafeRepr, IntEnum):
    """Storage order of a prepared weight matrix ``[Mn, K]``."""

    MajorK = 0  # [Mn, K]
    MajorMn = 1  # [K, Mn]
    BlockMajorK = 2  # [K / blockK, Mn, blockK], blockK = 128 bytes


# SwiGLU defaults when gemm1_alpha / gemm1_beta / gemm1_clamp_limit are not given.
DEFAULT_SWIGLU_ALPHA = 1.0
DEFAULT_SWIGLU_BETA = 0.0
