"""Compiled kernels on disk, shared by every process of a machine (or shipped in a container image).

An entry is one object file exported by the CuTe DSL (host launcher + cubin, TVM-FFI calling
convention) and a JSON manifest::

    <root>/<arch>/<digest>.json        the commit point: key, versions, object name, sha256
    <root>/<arch>/<digest>-<sha16>.o   the object file, content-addressed, never rewritten

``digest`` hashes everything that changes the generated code: the kernel key, the target arch,
the CuTe DSL and TVM-FFI versions, the host ISA (the launcher is compiled for the build host's
CPU), the format version and the package's kernel sources. Writers put the object first and the
manifest last, each through a temporary file and ``os.replace``, so a reader sees either no entry
or a complete one, and two processes storing the same kernel leave a valid entry whichever wins.
A reader trusts nothing: an entry whose manifest does not parse, names another key or version, or
whose object does not hash to the recorded sha256 is reported as corrupt and rebuilt by the caller.

``CUTE_MOE_CACHE_DIR`` sets the root (default ``$XDG_CACHE_HOME/cute_moe`` or
``~/.cache/cute_moe``); ``CUTE_MOE_CACHE=0`` (or ``off``) turns the disk cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

FORMAT_VERSION = 1
ENV_DIR = "CUTE_MOE_CACHE_DIR"
ENV_SWITCH = "CUTE_MOE_CACHE"

# x86 extensions LLVM may use when it compiles the host launcher for the build machine's CPU
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "bmi2", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
              "avx512_bf16", "avx512_fp16", "avx512vnni", "amx_tile")


def cache_enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "off", "false", "no")


def default_root() -> Path:
    configured = os.environ.get(ENV_DIR)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cute_moe"


@lru_cache(maxsize=None)
def host_isa() -> str:
    """Machine and the ISA extensions the host launcher may have been compiled with."""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return "+".join([platform.machine()] + [f for f in _ISA_FLAGS if f in flags])


@lru_cache(maxsize=None)
def sources_fingerprint() -> str:
    """sha256 over the package's kernel sources (this folder and the enums they import), so any
    edit starts new entries."""
    h = hashlib.sha256()
    folder = Path(__file__).resolve().parent
    for path in sorted(folder.glob("*.py")) + [folder.parent / "enums.py"]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@lru_cache(maxsize=None)
def toolchain_versions() -> str:
    import cutlass
    import tvm_ffi

    return f"cutlass-dsl {cutlass.__version__}; tvm-ffi {tvm_ffi.__version__}"


def entry_identity(key_text: str, arch: str) -> dict:
    """What an entry must match to be loaded (stored in its manifest)."""
    return {"format": FORMAT_VERSION, "key": key_text, "arch": arch, "toolchain": toolchain_versions(),
            "host": host_isa(), "sources": sources_fingerprint()}


def entry_digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class Lookup:
    """``object_path`` of a valid entry, or None with ``problem`` saying why there is none
    (``"missing"`` or a description of the corruption)."""

    object_path: Optional[Path]
    problem: str = ""


class DiskCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _manifest(self, arch: str, digest: str) -> Path:
        return self.root / arch / f"{digest}.json"

    def lookup(self, identity: dict) -> Lookup:
        manifest = self._manifest(identity["arch"], entry_digest(identity))
        try:
            text = manifest.read_text()
        except FileNotFoundError:
            return Lookup(None, "missing")
        except OSError as e:
            return Lookup(None, f"unreadable manifest ({e})")
        try:
            record = json.loads(text)
            recorded = {k: record[k] for k in identity}
            name, sha = record["object"], record["sha256"]
        except (ValueError, KeyError, TypeError) as e:
            return Lookup(None, f"malformed manifest ({type(e).__name__})")
        if recorded != identity:
            return Lookup(None, "manifest of another kernel or toolchain")
        path = manifest.parent / str(name)
        try:
            data = path.read_bytes()
        except OSError:
            return Lookup(None, "object file missing")
        if hashlib.sha256(data).hexdigest() != sha:
            return Lookup(None, "object file does not match its sha256")
        return Lookup(path)

    def store(self, identity: dict, object_bytes: bytes, extra: Optional[dict] = None) -> Path:
        """Write an entry atomically; returns the object file's path."""
        digest = entry_digest(identity)
        folder = self.root / identity["arch"]
        folder.mkdir(parents=True, exist_ok=True)
        sha = hashlib.sha256(object_bytes).hexdigest()
        path = folder / f"{digest}-{sha[:16]}.o"
        if not (path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == sha):  # absent or corrupt
            _atomic_write(path, object_bytes)
        record = dict(identity, object=path.name, sha256=sha, **(extra or {}))
        _atomic_write(self._manifest(identity["arch"], digest), json.dumps(record, indent=1).encode())
        return path


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
