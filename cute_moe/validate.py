"""Argument checks every public entry runs before any launch.

Each check raises TypeError (wrong type or dtype) or ValueError (wrong shape, device,
layout or value) with a message naming the argument, what was expected and what came.
"""

from __future__ import annotations

from typing import Sequence

import torch


def _fail_type(name: str, expected: str, got) -> None:
    raise TypeError(f"{name}: expected {expected}, got {got}")


def _fail_value(name: str, expected: str, got) -> None:
    raise ValueError(f"{name}: expected {expected}, got {got}")


def check_tensor(t, name: str, *, dtypes: Sequence[torch.dtype], ndim: int | None = None,
                 shape: Sequence[int | None] | None = None, device: torch.device | None = None,
                 contiguous: bool = True) -> None:
    """Type, dtype, rank, shape (None = any size), device and contiguity of one tensor."""
    if not isinstance(t, torch.Tensor):
        _fail_type(name, "a torch.Tensor", type(t).__name__)
    if t.dtype not in dtypes:
        _fail_type(name, "dtype " + " or ".join(str(d) for d in dtypes), t.dtype)
    if ndim is not None and t.dim() != ndim:
        _fail_value(name, f"a {ndim}-D tensor", f"shape {tuple(t.shape)}")
    if shape is not None:
        if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            _fail_value(name, f"shape {want}", f"shape {tuple(t.shape)}")
    if device is not None and t.device != torch.device(device):
        _fail_value(name, f"a tensor on {device}", f"a tensor on {t.device}")
    if contiguous and not t.is_contiguous():
        _fail_value(name, "a contiguous tensor", f"strides {t.stride()} for shape {tuple(t.shape)}")


def check_topk_pair(topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> None:
    """``(topk_ids int32 [T, k], topk_weights bf16|f32 [T, k])`` on one device."""
    check_tensor(topk_ids, "topk_ids", dtypes=(torch.int32,), ndim=2)
    check_tensor(topk_weights, "topk_weights", dtypes=(torch.bfloat16, torch.float32),
                 shape=tuple(topk_ids.shape), device=topk_ids.device)


def check_packed_topk(packed: torch.Tensor) -> None:
    """Packed routing ``(expert_id << 16) | bf16 bits``: int32 ``[T, k]``."""
    check_tensor(packed, "topk_ids", dtypes=(torch.int32,), ndim=2)
