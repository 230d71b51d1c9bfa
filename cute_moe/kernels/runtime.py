"""Compiling and launching CuTe DSL kernels: the one place that talks to the DSL runtime.

Every kernel module exposes a ``@cute.jit`` host function whose arguments are raw
pointers (``cute.Pointer``), ``Int32`` sizes and a CUDA stream; tensors are built
inside the jit function from those pointers. That keeps launches cheap (no DLPack
per call), lets one compiled kernel serve every token count (sizes are runtime
values), and lets the same code be compiled on a CPU-only machine for any target
architecture (``compile_ptx``), which is how CI checks sm_90a, sm_100a and sm_120a.

Compiled kernels are cached per (kernel key, arch); the key holds only
compile-time parameters (shape class, dtypes, variant), never token counts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Optional, Tuple

import torch

TARGET_ARCHS: Tuple[str, ...] = ("sm_90a", "sm_100a", "sm_120a")

# Compute capability (major, minor) -> the DSL target we build for.
_ARCH_BY_CAPABILITY = {
    (9, 0): "sm_90a",
    (10, 0): "sm_100a",
    (10, 3): "sm_100a",
    (12, 0): "sm_120a",
    (12, 1): "sm_120a",
}


def arch_of_device(device: Optional[torch.device] = None) -> str:
    """The DSL target for a CUDA device; ValueError for GPUs the kernels do not support."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "cute_moe kernels need an NVIDIA GPU of SM90 (Hopper), SM100 or SM120 (Blackwell); "
            "no CUDA device is visible"
        )
    cap = torch.cuda.get_device_capability(device)
    arch = _ARCH_BY_CAPABILITY.get(cap)
    if arch is None:
        raise RuntimeError(
            f"cute_moe kernels support SM90, SM100 and SM120 GPUs; this device is SM{cap[0]}{cap[1]}"
        )
    return arch


def gpu_available() -> bool:
    """True when a CUDA device the kernels support is present."""
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability() in _ARCH_BY_CAPABILITY


# --------------------------------------------------------------------------- DSL types


def _dsl():
    import cutlass
    import cutlass.cute as cute

    return cutlass, cute


def cutlass_dtype(dtype: torch.dtype):
    cutlass, _ = _dsl()
    table = {
        torch.float32: cutlass.Float32,
        torch.bfloat16: cutlass.BFloat16,
        torch.float16: cutlass.Float16,
        torch.int32: cutlass.Int32,
        torch.int16: cutlass.Int16,
        torch.int64: cutlass.Int64,
        torch.uint8: cutlass.Uint8,
        torch.int8: cutlass.Int8,
    }
    try:
        return table[dtype]
    except KeyError:
        raise TypeError(f"no CuTe DSL element type for torch dtype {dtype}") from None


def ptr(t: torch.Tensor, dtype: Optional[torch.dtype] = None, align: int = 16):
    """A global-memory ``cute.Pointer`` to ``t``'s data (``dtype`` reinterprets the bytes)."""
    cutlass, cute = _dsl()
    from cutlass.cute.runtime import make_ptr

    if align > 1 and t.data_ptr() % align:
        raise ValueError(f"tensor data pointer is not {align}-byte aligned")
    return make_ptr(cutlass_dtype(dtype or t.dtype), t.data_ptr(), cute.AddressSpace.gmem, assumed_align=align)


def fake_ptr(dtype: torch.dtype, align: int = 16):
    """A pointer that is never dereferenced: stands in for a tensor when compiling on a CPU."""
    cutlass, cute = _dsl()
    from cutlass.cute.runtime import make_ptr

    return make_ptr(cutlass_dtype(dtype), 1 << 20, cute.AddressSpace.gmem, assumed_align=align)


def current_stream():
    import cuda.bindings.driver as cuda

    return cuda.CUstream(torch.cuda.current_stream().cuda_stream)


def fake_stream():
    from cutlass.cute.runtime import make_fake_stream

    return make_fake_stream()


# --------------------------------------------------------------------------- compiling


_DUMP_DIR = None


def _dump_dir() -> str:
    """A private scratch folder for the PTX the DSL writes when asked to keep it."""
    global _DUMP_DIR
    if _DUMP_DIR is None:
        import atexit
        import shutil
        import tempfile

        _DUMP_DIR = tempfile.mkdtemp(prefix="cute_moe_ptx_")
        atexit.register(shutil.rmtree, _DUMP_DIR, ignore_errors=True)
    return _DUMP_DIR


def _options(arch: str, keep_ptx: bool) -> str:
    opts = f"--gpu-arch {arch}"
    if keep_ptx:
        opts += f" --keep-ptx --dump-dir {_dump_dir()}"
    return opts


def compile_jit(jit_fn: Callable, args: Tuple[Any, ...], arch: str, keep_ptx: bool = False):
    """``cute.compile`` for one target architecture (works without a GPU)."""
    if arch not in TARGET_ARCHS:
        raise ValueError(f"arch must be one of {TARGET_ARCHS}, got {arch!r}")
    _, cute = _dsl()
    return cute.compile(jit_fn, *args, options=_options(arch, keep_ptx))


def compile_ptx(jit_fn: Callable, args: Tuple[Any, ...], arch: str) -> str:
    """Compile ``jit_fn`` for ``arch`` and return its PTX text (CPU-only machines included)."""
    compiled = compile_jit(jit_fn, args, arch, keep_ptx=True)
    ptx = compiled.artifacts.PTX
    if not ptx:
        raise RuntimeError("the DSL returned no PTX")
    return ptx


@dataclass
class CompileRecord:
    key: Hashable
    arch: str
    seconds: float


@dataclass
class KernelCache:
    """Compiled kernels per (key, arch). Thread-safe; compile time of each entry recorded."""

    _compiled: Dict[Tuple[Hashable, str], Any] = field(default_factory=dict)
    records: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: Hashable, arch: str, build: Callable[[], Tuple[Callable, Tuple[Any, ...]]]):
        """Return the compiled kernel for (key, arch); ``build()`` gives (jit_fn, example_args)."""
        slot = (key, arch)
        hit = self._compiled.get(slot)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._compiled.get(slot)
            if hit is None:
                jit_fn, args = build()
                t0 = time.perf_counter()
                hit = compile_jit(jit_fn, args, arch)
                self.records.append(CompileRecord(key, arch, time.perf_counter() - t0))
                self._compiled[slot] = hit
        return hit

    def __len__(self) -> int:
        return len(self._compiled)

    def clear(self) -> None:
        with self._lock:
            self._compiled.clear()
            self.records.clear()


KERNELS = KernelCache()
