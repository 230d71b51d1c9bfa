"""Top-k routing format conversion on the GPU.

FlashInfer's routed entry points take routing as one int32 per (token, slot):
``packed = (expert_id << 16) | bits(bf16 weight)``. These kernels convert between
that and the ``(topk_ids int32, topk_weights)`` pair, element-wise.

Weights are handled as raw bits so the kernels are pure integer code: float32
weights are rounded to bf16 in-kernel (round to nearest even, as ``.to(bfloat16)``
does for finite values), bf16 weights are copied bit for bit.
"""

from __future__ import annotations

from typing import Optional

import torch

import cutlass
import cutlass.cute as cute
import cuda.bindings.driver as cuda

from . import runtime

_THREADS = 256


@cute.jit
def _f32_bits_to_bf16_bits(bits: cutlass.Int32) -> cutlass.Int32:
    # Round to nearest even on the 16 dropped bits; NaN keeps a quiet NaN payload.
    rounding = ((bits >> 16) & 1) + 0x7FFF
    out = ((bits + rounding) >> 16) & 0xFFFF
    if (bits & 0x7FFFFFFF) > 0x7F800000:
        out = ((bits >> 16) | 0x40) & 0xFFFF
    return out


def unpack_pair(packed):
    """(expert id, bf16 weight bits as int16) of one packed int32 (traced inside kernels: the
    unpack kernel and the one-CTA plan that folds it in)."""
    return packed >> 16, cutlass.Int16(packed & 0xFFFF)


class PackTopk:
    """``packed[i] = (ids[i] << 16) | bf16_bits(weights[i])`` for ``i < n``."""

    def __init__(self, weights_f32: bool):
        self.weights_f32 = weights_f32  # weights arrive as float32 bits (else bf16 bits)

    @cute.jit
    def __call__(self, ids_ptr: cute.Pointer, wbits_ptr: cute.Pointer, packed_ptr: cute.Pointer,
                 n: cutlass.Int32, stream: cuda.CUstream):
        layout = cute.make_layout(n)
        self.kernel(
            cute.make_tensor(ids_ptr, layout), cute.make_tensor(wbits_ptr, layout),
            cute.make_tensor(packed_ptr, layout), n,
        ).launch(grid=[(n + _THREADS - 1) // _THREADS, 1, 1], block=[_THREADS, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, ids: cute.Tensor, wbits: cute.Tensor, packed: cute.Tensor, n: cutlass.Int32):
        i = cute.arch.block_idx()[0] * _THREADS + cute.arch.thread_idx()[0]
        if i < n:
            w = cutlass.Int32(wbits[i])
            if cutlass.const_expr(self.weights_f32):
                w = _f32_bits_to_bf16_bits(w)
            else:
                w = w & 0xFFFF
            packed[i] = (ids[i] << 16) | w


class UnpackTopk:
    """``ids[i] = packed[i] >> 16``, ``weight_bits[i] = packed[i] & 0xFFFF`` for ``i < n``."""

    @cute.jit
    def __call__(self, packed_ptr: cute.Pointer, ids_ptr: cute.Pointer, wbits_ptr: cute.Pointer,
                 n: cutlass.Int32, stream: cuda.CUstream):
        layout = cute.make_layout(n)
        self.kernel(
            cute.make_tensor(packed_ptr, layout), cute.make_tensor(ids_ptr, layout),
            cute.make_tensor(wbits_ptr, layout), n,
        ).launch(grid=[(n + _THREADS - 1) // _THREADS, 1, 1], block=[_THREADS, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, packed: cute.Tensor, ids: cute.Tensor, wbits: cute.Tensor, n: cutlass.Int32):
        cute.arch.griddepcontrol_launch_dependents()  # the plan may launch (it waits for this grid)
        i = cute.arch.block_idx()[0] * _THREADS + cute.arch.thread_idx()[0]
        if i < n:
            ids[i], wbits[i] = unpack_pair(packed[i])


# --------------------------------------------------------------------------- compile-time examples


def pack_example_args(weights_f32: bool):
    """Arguments that compile ``PackTopk(weights_f32)`` without a GPU."""
    wdtype = torch.int32 if weights_f32 else torch.int16
    return (runtime.fake_ptr(torch.int32, 4), runtime.fake_ptr(wdtype, 4 if weights_f32 else 2),
            runtime.fake_ptr(torch.int32, 4), 1, runtime.fake_stream())


def unpack_example_args():
    return (runtime.fake_ptr(torch.int32, 4), runtime.fake_ptr(torch.int32, 4),
            runtime.fake_ptr(torch.int16, 2), 1, runtime.fake_stream())


# --------------------------------------------------------------------------- host wrappers


def pack_topk(topk_ids: torch.Tensor, topk_weights: torch.Tensor,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(ids [T, k] int32, weights [T, k] bf16|f32)`` -> packed int32 ``[T, k]`` on the GPU."""
    from ..validate import check_topk_pair

    check_topk_pair(topk_ids, topk_weights)
    if out is None:
        out = torch.empty_like(topk_ids, dtype=torch.int32)
    n = topk_ids.numel()
    if n == 0:
        return out
    f32 = topk_weights.dtype == torch.float32
    arch = runtime.arch_of_device(topk_ids.device)
    fn = runtime.KERNELS.get(("pack_topk", f32), arch, lambda: (PackTopk(f32), pack_example_args(f32)))
    fn(runtime.ptr(topk_ids, align=4), runtime.ptr(topk_weights, align=4 if f32 else 2),
       runtime.ptr(out, align=4), n, runtime.current_stream())
    return out


def unpack_topk(packed: torch.Tensor):
    """packed int32 ``[T, k]`` -> ``(ids int32 [T, k], weights bf16 [T, k])`` on the GPU."""
    from ..validate import check_packed_topk

    check_packed_topk(packed)
    ids = torch.empty_like(packed)
    weights = torch.empty(packed.shape, dtype=torch.bfloat16, device=packed.device)
    n = packed.numel()
    if n == 0:
        return ids, weights
    launch_unpack_topk(unpack_kernel(runtime.arch_of_device(packed.device)), runtime.ptr(packed, align=4),
                       runtime.ptr(ids, align=4), runtime.ptr(weights, align=2), n, runtime.current_stream())
    return ids, weights


def unpack_kernel(arch: str):
    return runtime.KERNELS.get(("unpack_topk",), arch, lambda: (UnpackTopk(), unpack_example_args()))


def launch_unpack_topk(kernel, packed: int, ids: int, weights: int, n: int, stream: int) -> None:
    """Unpack ``n > 0`` entries with ``unpack_kernel``: addresses of packed int32, ids int32 and
    bf16 weights."""
    kernel(packed, ids, weights, n, stream)
