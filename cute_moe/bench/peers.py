"""Peer MoE pipelines the benchmark times next to cute_moe, on the same inputs.

* ``GroupedMmPipeline``: plain PyTorch with ``torch._grouped_mm`` (the fastest stock-PyTorch
  MoE): torch routing, ``argsort`` permutation, gather, two grouped GEMMs, ``index_add_``
  combine. No host synchronization, so it is timed under CUDA-graph replay like cute_moe.
* ``PerExpertLoop``: the textbook loop over experts with one dense matmul each; it reads the
  per-expert counts on the host, so it is timed eagerly.

Both take canonical weights (FC1 ``[E, M, H]`` with rows ``[up; gate]``, FC2 ``[E, H, I]``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..enums import ActivationType, RoutingMethodType as RM
from .presets import MoeShape


def _activation(h: torch.Tensor, shape: MoeShape) -> torch.Tensor:
    if shape.activation == ActivationType.Relu2:
        return F.relu(h).square()
    i = shape.intermediate_size
    up, gate = h[..., :i].float(), h[..., i:].float()
    if shape.swiglu_alpha is None and shape.swiglu_beta is None and shape.swiglu_limit is None:
        return (F.silu(gate) * up).to(h.dtype)
    alpha = 1.0 if shape.swiglu_alpha is None else shape.swiglu_alpha
    beta = 0.0 if shape.swiglu_beta is None else shape.swiglu_beta
    if shape.swiglu_limit is not None:
        up = up.clamp(-shape.swiglu_limit, shape.swiglu_limit)
        gate = gate.clamp(max=shape.swiglu_limit)
    return (gate * torch.sigmoid(alpha * gate) * (up + beta)).to(h.dtype)


def _route(shape: MoeShape, logits: torch.Tensor, bias: Optional[torch.Tensor]):
    """torch.topk routing of the presets' methods, with no host synchronization (graph-capturable)."""
    k, x = shape.top_k, logits.float()
    if shape.routing_method in (RM.Renormalize, RM.RenormalizeNaive):
        vals, ids = torch.topk(x, k, dim=-1)
        weights = torch.softmax(vals, dim=-1)
    elif shape.routing_method == RM.Default:
        vals, ids = torch.topk(torch.softmax(x, dim=-1), k, dim=-1)
        weights = vals
    elif shape.routing_method == RM.DeepSeekV3:
        scores = torch.sigmoid(x)
        biased = scores + (0 if bias is None else bias.float())
        n_group = shape.n_group or 1
        if n_group > 1:
            grouped = biased.view(x.shape[0], n_group, -1)
            group_score = grouped.topk(2, dim=-1).values.sum(-1)
            keep = torch.zeros_like(group_score).scatter_(1, group_score.topk(shape.topk_group, dim=-1).indices, 1.0)
            biased = biased.masked_fill(keep.repeat_interleave(x.shape[1] // n_group, dim=1) == 0, float("-inf"))
        ids = biased.topk(k, dim=-1).indices
        picked = scores.gather(1, ids)
        weights = picked / (picked.sum(-1, keepdim=True) + 1e-20) * (shape.routed_scaling_factor or 1.0)
    else:
        raise ValueError(f"no torch peer routing for {shape.routing_method.name}")
    return ids, weights.to(torch.bfloat16)


class GroupedMmPipeline:
    name = "torch_grouped_mm"

    def __init__(self, shape: MoeShape, w1: torch.Tensor, w2: torch.Tensor):
        self.shape = shape
        # _grouped_mm multiplies [rows, K] by [E, K, N]: pass the transposed views.
        self.w1t = w1.transpose(1, 2)
        self.w2t = w2.transpose(1, 2)

    def __call__(self, hidden: torch.Tensor, logits: torch.Tensor, bias=None) -> torch.Tensor:
        shape = self.shape
        ids, weights = _route(shape, logits, bias)
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // shape.top_k
        # scatter_add_ rather than bincount, whose output size is read on the host
        counts = torch.zeros(shape.num_experts, dtype=torch.int64, device=flat.device).scatter_add_(
            0, flat, torch.ones_like(flat))
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        x = hidden.index_select(0, token)
        h = torch._grouped_mm(x, self.w1t, offs=offs)
        y = torch._grouped_mm(_activation(h, shape), self.w2t, offs=offs)
        y = y.float() * weights.reshape(-1)[order].float().unsqueeze(1)
        out = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        return out.index_add_(0, token, y).to(torch.bfloat16)


class PerExpertLoop:
    name = "torch_expert_loop"

    def __init__(self, shape: MoeShape, w1: torch.Tensor, w2: torch.Tensor):
        self.shape, self.w1, self.w2 = shape, w1, w2

    def __call__(self, hidden: torch.Tensor, logits: torch.Tensor, bias=None) -> torch.Tensor:
        shape = self.shape
        ids, weights = _route(shape, logits, bias)
        out = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        for e in torch.unique(ids).tolist():  # host sync: this peer is timed eagerly
            tok, slot = torch.nonzero(ids == e, as_tuple=True)
            h = hidden[tok] @ self.w1[e].t()
            y = _activation(h, shape) @ self.w2[e].t()
            out.index_add_(0, tok, y.float() * weights[tok, slot].float().unsqueeze(1))
        return out.to(torch.bfloat16)
