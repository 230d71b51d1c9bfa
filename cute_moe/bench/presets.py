"""MoE layer shapes of public models, as benchmark presets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Optional

from ..enums import ActivationType, RoutingMethodType


@dataclass(frozen=True)
class MoeShape:
    name: str
    hidden_size: int
    intermediate_size: int
    num_experts: int
    top_k: int
    routing_method: RoutingMethodType
    weight_format: str = "bf16"  # "bf16", "mxint4" or "nvfp4" (b12x_fused_moe's FP4 experts)
    activation: ActivationType = ActivationType.Swiglu
    n_group: Optional[int] = None
    topk_group: Optional[int] = None
    routed_scaling_factor: Optional[float] = None
    # GPT-OSS style SwiGLU parameters (same value for every expert) or None.
    swiglu_alpha: Optional[float] = None
    swiglu_beta: Optional[float] = None
    swiglu_limit: Optional[float] = None
    notes: Dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def fc1_rows(self) -> int:
        return (2 if self.activation.is_gated else 1) * self.intermediate_size

    def weight_params_per_expert(self) -> int:
        return self.fc1_rows * self.hidden_size + self.hidden_size * self.intermediate_size

    def with_experts(self, num_experts: int) -> "MoeShape":
        """Fewer experts to fit a GPU; routing groups shrink with them."""
        n_group = self.n_group
        if n_group is not None and num_experts % n_group:
            n_group = 1
        topk_group = None if self.topk_group is None else min(self.topk_group, n_group or 1)
        return replace(self, num_experts=num_experts, n_group=n_group, topk_group=topk_group,
                       top_k=min(self.top_k, num_experts))


PRESETS: Dict[str, MoeShape] = {
    s.name: s
    for s in (
        MoeShape("qwen3-30b-a3b", 2048, 768, 128, 8, RoutingMethodType.RenormalizeNaive),
        MoeShape("qwen3-235b-a22b", 4096, 1536, 128, 8, RoutingMethodType.RenormalizeNaive),
        MoeShape("deepseek-v3", 7168, 2048, 256, 8, RoutingMethodType.DeepSeekV3,
                 n_group=8, topk_group=4, routed_scaling_factor=2.5),
        MoeShape("gpt-oss-120b", 2880, 2880, 128, 4, RoutingMethodType.Renormalize,
                 swiglu_alpha=1.702, swiglu_beta=1.0, swiglu_limit=7.0),
        MoeShape("kimi-k2", 7168, 2048, 384, 8, RoutingMethodType.DeepSeekV3, weight_format="mxint4",
                 n_group=1, topk_group=1, routed_scaling_factor=2.827),
        MoeShape("mixtral-8x7b", 4096, 14336, 8, 2, RoutingMethodType.Renormalize),
        # NVFP4 checkpoints of the same shapes, served through b12x_fused_moe
        MoeShape("qwen3-30b-a3b-nvfp4", 2048, 768, 128, 8, RoutingMethodType.RenormalizeNaive,
                 weight_format="nvfp4"),
        MoeShape("deepseek-v3-nvfp4", 7168, 2048, 256, 8, RoutingMethodType.DeepSeekV3, weight_format="nvfp4",
                 n_group=8, topk_group=4, routed_scaling_factor=2.5),
    )
}
