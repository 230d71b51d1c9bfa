"""The on-disk kernel cache and ``cute-moe-warmup`` on the CPU: a second process loads what the
first compiled, corrupt entries are rebuilt and never loaded, concurrent writers leave a valid
cache. Each run is a fresh process, as a serving process would be."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cute_moe.kernels import disk_cache

WARMUP = [sys.executable, "-m", "cute_moe.cli.warmup", "--arch", "sm_90a", "--quiet"]
SUMMARY = re.compile(r"(\d+) kernels for sm_90a: (\d+) compiled, (\d+) loaded from the cache")


def _warmup(cache: Path, *args: str, background: bool = False):
    env = dict(os.environ, CUTE_MOE_CACHE_DIR=str(cache), CUTE_MOE_CACHE="1")
    cmd = WARMUP + list(args)
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return _counts(done.stdout), time.perf_counter() - t0


def _counts(stdout: str):
    m = SUMMARY.search(stdout)
    assert m, stdout
    return tuple(int(g) for g in m.groups())  # (kernels, compiled, loaded)


def _entries(cache: Path):
    return sorted((cache / "sm_90a").glob("*.json"))


@pytest.mark.compile
def test_second_warmup_loads_everything_and_corrupt_entries_are_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    (kernels, compiled, loaded), first_s = _warmup(cache, "--preset", "qwen3-30b-a3b")
    assert kernels >= 10 and compiled == kernels and loaded == 0
    assert len(_entries(cache)) == kernels

    (kernels2, compiled2, loaded2), second_s = _warmup(cache, "--preset", "qwen3-30b-a3b")
    assert (kernels2, compiled2, loaded2) == (kernels, 0, kernels)
    # process start and imports are most of the second run; compiling is most of the first
    assert second_s < 0.6 * first_s, (first_s, second_s)

    # corrupt one object file (a flipped byte) and one manifest (not JSON): both are rebuilt
    manifests = _entries(cache)
    record = json.loads(manifests[0].read_text())
    obj = manifests[0].parent / record["object"]
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    manifests[1].write_text("{not json")
    (_, compiled3, loaded3), _ = _warmup(cache, "--preset", "qwen3-30b-a3b")
    assert (compiled3, loaded3) == (2, kernels - 2)
    (_, compiled4, loaded4), _ = _warmup(cache, "--preset", "qwen3-30b-a3b")
    assert (compiled4, loaded4) == (0, kernels)


@pytest.mark.compile
def test_two_processes_filling_one_cache_leave_a_valid_cache(tmp_path):
    cache = tmp_path / "cache"
    args = ("--preset", "gpt-oss-120b", "--tokens", "1,4096")
    procs = [_warmup(cache, *args, background=True) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        kernels, compiled, loaded = _counts(out)
        assert compiled + loaded == kernels
    (kernels, compiled, loaded), _ = _warmup(cache, *args)
    assert (compiled, loaded) == (0, kernels)
    leftovers = [p for p in (cache / "sm_90a").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def _identity():
    return disk_cache.entry_identity("('a kernel', 1)", "sm_90a")


def test_disk_cache_lookup_accepts_only_an_entry_of_the_same_identity(tmp_path):
    cache = disk_cache.DiskCache(tmp_path)
    ident = _identity()
    assert cache.lookup(ident).problem == "missing"
    path = cache.store(ident, b"object bytes")
    assert cache.lookup(ident).object_path == path
    other = dict(ident, toolchain="cutlass-dsl 0.0; tvm-ffi 0.0")
    assert cache.lookup(other).problem == "missing"  # another toolchain: another entry
    # a manifest that names another key under this digest (a collision or a hand edit) is refused
    manifest = tmp_path / "sm_90a" / f"{disk_cache.entry_digest(ident)}.json"
    record = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(dict(record, key="('another kernel', 2)")))
    assert cache.lookup(ident).problem == "manifest of another kernel or toolchain"
    manifest.write_text(json.dumps(record))
    path.write_bytes(b"object bytez")
    assert cache.lookup(ident).problem == "object file does not match its sha256"
    path.unlink()
    assert cache.lookup(ident).problem == "object file missing"


def test_cache_location_and_switch_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(disk_cache.ENV_DIR, str(tmp_path / "here"))
    assert disk_cache.default_root() == tmp_path / "here"
    monkeypatch.delenv(disk_cache.ENV_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert disk_cache.default_root() == tmp_path / "xdg" / "cute_moe"
    for off in ("0", "off", "false"):
        monkeypatch.setenv(disk_cache.ENV_SWITCH, off)
        assert not disk_cache.cache_enabled()
    monkeypatch.setenv(disk_cache.ENV_SWITCH, "1")
    assert disk_cache.cache_enabled()


def test_identity_holds_everything_that_changes_the_code():
    ident = _identity()
    assert set(ident) == {"format", "key", "arch", "toolchain", "host", "sources"}
    assert disk_cache.entry_digest(ident) != disk_cache.entry_digest(dict(ident, arch="sm_100a"))
    assert disk_cache.entry_digest(ident) != disk_cache.entry_digest(dict(ident, sources="0" * 64))


def test_warmup_cli_without_gpu_or_arch_says_what_to_do():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-m", "cute_moe.cli.warmup", "--preset", "qwen3-30b-a3b"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--arch" in done.stderr


def test_warmup_cli_needs_a_shape():
    done = subprocess.run(WARMUP + ["--hidden", "2048"], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "--intermediate" in done.stderr


def test_nvfp4_warmup_lists_both_b12x_modes_per_arch():
    """b12x takes precomputed routing: no routing kernels; FC1 / FC2 of w4a16 (gathered bf16 rows)
    and of nvfp4 (quantized rows: bf16 values, or packed for SM120's block-scaled MMA), and the
    two activation quantizers."""
    from cute_moe.precompile import model_kernels

    shape = dict(hidden_size=2048, intermediate_size=768, num_experts=128, top_k=8, weights="nvfp4", tokens=(1, 4096))
    for arch, quantized, packed in (("sm_90a", "permuted", False), ("sm_120a", "fp4", True)):
        keys = [job.key for job in model_kernels(arch=arch, **shape)]
        assert not any(k[0] in ("route", "unpack") for k in keys)
        assert ("nvfp4_quantize_rows", True, packed) in keys and ("nvfp4_quantize_rows", False, packed) in keys
        gemms = [k for k in keys if k[0] == "grouped_gemm"]
        assert {(k[1], k[10]) for k in gemms} == {("fc1", "gathered"), ("fc2", "permuted"), ("fc1", quantized),
                                                  ("fc2", quantized)}
        assert all(k[-1] == "nvfp4" and k[9] for k in gemms)  # FP4 weights, per-expert output scales
        assert {k[3] for k in gemms} == {"m_fastest", "persistent"}  # micro at T=1, dynamic at T=4096


def test_dir_lists_the_public_names():
    import cute_moe

    names = dir(cute_moe)
    for name in ("trtllm_bf16_moe", "trtllm_mxint4_block_scale_routed_moe", "b12x_fused_moe", "route", "warmup",
                 "prepare_bf16_moe_weights", "RoutingMethodType"):
        assert name in names
