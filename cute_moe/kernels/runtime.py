"""Compiling and launching CuTe DSL kernels: the one place that talks to the DSL runtime.

Every kernel module exposes a ``@cute.jit`` host function whose arguments are raw
pointers (``cute.Pointer``), ``Int32`` sizes and a CUDA stream; tensors are built
inside the jit function from those pointers. One compiled kernel serves every token count
(sizes are runtime values), and the same code compiles on a CPU-only machine for any target
architecture (``compile_ptx``), which is how CI checks sm_90a, sm_100a and sm_120a.

Kernels are compiled for the TVM-FFI calling convention (``--enable-tvm-ffi``) and launched
through the ``tvm_ffi.Function`` of their exported object file: a pointer is a plain ``int``
(``ptr`` checks its alignment), a size an ``int``, the stream the raw ``cudaStream_t``; a launch
costs a few microseconds of host time instead of the DSL's generic argument conversion.

``KERNELS`` holds compiled kernels per (kernel key, arch); the key holds only compile-time
parameters (shape class, dtypes, variant), never token counts. Behind it sits the on-disk cache
(cute_moe.kernels.disk_cache): a kernel compiled once on a machine, or ahead of time on a CPU
for the target arch, is loaded in well under a second by every later process.
"""

from __future__ import annotations

import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple

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
    """The DSL target for a CUDA device; RuntimeError for GPUs the kernels do not support."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "cute_moe kernels need an NVIDIA GPU of SM90 (Hopper), SM100 or SM120 (Blackwell); "
            "no CUDA device is visible"
        )
    index = device.index if isinstance(device, torch.device) else device
    return _arch_of_index(torch.cuda.current_device() if index is None else int(index))


@lru_cache(maxsize=None)
def _arch_of_index(index: int) -> str:
    cap = torch.cuda.get_device_capability(index)
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


def ptr(t: torch.Tensor, align: int = 16) -> int:
    """The address of ``t``'s data for a kernel's ``cute.Pointer`` argument, checked to meet the
    ``align`` bytes its compiled kernel assumes."""
    address = t.data_ptr()
    if address % align:
        raise ValueError(f"tensor data pointer is not {align}-byte aligned")
    return address


def fake_ptr(dtype: torch.dtype, align: int = 16):
    """A pointer that is never dereferenced: the element type and alignment a kernel is compiled
    for (the launch passes a plain address)."""
    cutlass, cute = _dsl()
    from cutlass.cute.runtime import make_ptr

    return make_ptr(cutlass_dtype(dtype), 1 << 20, cute.AddressSpace.gmem, assumed_align=align)


def current_stream(device=None) -> int:
    """The raw ``cudaStream_t`` of the current torch stream of ``device`` (a torch.device, an index
    or None for the current device; captured graphs included)."""
    index = device.index if isinstance(device, torch.device) else device
    index = torch.cuda.current_device() if index is None else index
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # CUDA builds: no Stream object made
    return raw(index) if raw is not None else torch.cuda.current_stream(index).cuda_stream


def fake_stream():
    """The stream argument at compile time: an explicit ``cudaStream_t`` at launch."""
    from cutlass.cute.runtime import make_fake_stream

    return make_fake_stream(use_tvm_ffi_env_stream=False)


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
    opts = f"--gpu-arch {arch} --enable-tvm-ffi"
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


# --------------------------------------------------------------------------- object files

_SYMBOL = "cute_moe_kernel"  # one kernel per object file, each loaded into its own engine


def load_object(path: Path):
    """The launcher (``tvm_ffi.Function``) of an exported object file; raises if it is unusable."""
    from cutlass.runtime import load_module

    return load_module(str(path), enable_tvm_ffi=True)[_SYMBOL]


# --------------------------------------------------------------------------- the kernel cache


@dataclass
class CompileRecord:
    key: Hashable
    arch: str
    seconds: float
    source: str  # "compiled" or "disk"


@dataclass
class KernelCache:
    """Launchers per (key, arch), in memory and (unless turned off) on disk.

    ``get`` returns the launcher of a kernel, from memory, else from the disk cache, else by
    compiling it (and storing it on disk). ``records`` says what each first ``get`` of a slot
    did and how long it took. Thread-safe."""

    _launchers: Dict[Tuple[Hashable, str], Any] = field(default_factory=dict)
    records: List[CompileRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _disk_warned: bool = False

    def get(self, key: Hashable, arch: str, build: Callable[[], Tuple[Callable, Tuple[Any, ...]]]):
        """The launcher of (key, arch); ``build()`` gives (jit_fn, example_args) to compile it."""
        slot = (key, arch)
        hit = self._launchers.get(slot)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._launchers.get(slot)
            if hit is None:
                t0 = time.perf_counter()
                hit, source = self._load_or_compile(key, arch, build)
                self.records.append(CompileRecord(key, arch, time.perf_counter() - t0, source))
                self._launchers[slot] = hit
        return hit

    def _load_or_compile(self, key, arch, build):
        from . import disk_cache

        disk = disk_cache.DiskCache(disk_cache.default_root()) if disk_cache.cache_enabled() else None
        identity = disk_cache.entry_identity(repr(key), arch) if disk is not None else None
        if disk is not None:
            found = disk.lookup(identity)
            if found.object_path is not None:
                try:
                    return load_object(found.object_path), "disk"
                except Exception as e:  # a file that hashes right but does not load: rebuild it
                    warnings.warn(f"cute_moe: cached kernel {found.object_path} does not load ({e}); rebuilding")
            elif found.problem != "missing":
                warnings.warn(f"cute_moe: cached kernel for {key!r} on {arch} is corrupt "
                              f"({found.problem}); rebuilding")
        jit_fn, args = build()
        with tempfile.TemporaryDirectory(prefix="cute_moe_obj_") as folder:
            path = Path(folder) / "kernel.o"  # the object file: host launcher + cubin
            compile_jit(jit_fn, args, arch).export_to_c(str(path), _SYMBOL)
            if disk is not None:
                try:
                    path = disk.store(identity, path.read_bytes())
                except OSError as e:
                    if not self._disk_warned:
                        self._disk_warned = True
                        warnings.warn(f"cute_moe: kernel cache {disk.root} is not writable ({e}); "
                                      f"compiled kernels stay in memory")
            return load_object(path), "compiled"

    def compiled(self) -> List[CompileRecord]:
        """Records of the kernels this process compiled (not loaded from disk)."""
        return [r for r in self.records if r.source == "compiled"]

    def __len__(self) -> int:
        return len(self._launchers)

    def clear(self) -> None:
        """Forget the launchers in memory (the disk cache stays)."""
        with self._lock:
            self._launchers.clear()
            self.records.clear()


KERNELS = KernelCache()
