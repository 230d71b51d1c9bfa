"""cute-moe-convert on fresh synthetic checkpoints: output equals cute_moe.prepare on the whole
layer, --verify round-trips bit-exactly, the manifest describes the files, and every corrupted
input stops with the tensor and shard named and no output left behind."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cute_moe import prepare
from cute_moe.checkpoint import CheckpointError, ExpertNamePattern, ShardedCheckpoint
from cute_moe.cli import convert_weights, expert_prep
from cute_moe.demo_checkpoint import INDEX_NAME, write_demo_checkpoint
from cute_moe.enums import ActivationType
from cute_moe.layouts import reorder_w1w3_to_w3w1, unpack_uint4b8

LAYERS, EXPERTS, H, I = 2, 4, 256, 512  # H, I: multiples of 256 (the mxint4 128-byte int4 block)
SHARD = "model-{k:05d}-of-00002.safetensors"
PREFIX = "model.layers.{layer}.mlp.experts.{expert}.{proj}"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A two-shard checkpoint with both flavours, fresh random values per test run."""
    src = tmp_path_factory.mktemp("pristine") / "ckpt"
    gen = torch.Generator().manual_seed(torch.initial_seed() % (2**31))
    return src, write_demo_checkpoint(src, num_layers=LAYERS, num_experts=EXPERTS, hidden_size=H,
                                      intermediate_size=I, generator=gen)


@pytest.fixture
def ckpt(pristine, tmp_path):
    """A private copy of the pristine checkpoint (tests corrupt it): (directory, every tensor)."""
    src = tmp_path / "ckpt"
    shutil.copytree(pristine[0], src)
    return src, pristine[1]


def _run(capsys, *args):
    rc = convert_weights.main([str(a) for a in args] + ["--quiet"])
    out, err = capsys.readouterr()
    return rc, out, err


def _bits(t):
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _expected_layer(tensors, fmt, layer, activation=ActivationType.Swiglu, pattern=PREFIX,
                    proj_names=("gate_proj", "up_proj", "down_proj")):
    """The layer's prepared tensors from one call of cute_moe.prepare on all experts stacked."""
    names = ExpertNamePattern(pattern, proj_names)

    def stack(role, suffix):
        return torch.stack([tensors[names.tensor(layer, e, role, suffix)] for e in range(EXPERTS)])

    if fmt == "bf16":
        if activation.is_gated:
            gemm1 = reorder_w1w3_to_w3w1(torch.cat([stack("gate", "weight"), stack("up", "weight")], 1))[0]
        else:
            gemm1 = stack("up", "weight")
        g1, g2 = prepare.prepare_bf16_moe_weights(gemm1, stack("down", "weight"), activation)
        return {"gemm1_weights": g1, "gemm2_weights": g2}
    out = prepare.prepare_static_weights_for_trtllm_mxint4_moe(
        torch.cat([stack("gate", "weight_packed"), stack("up", "weight_packed")], 1),
        torch.cat([stack("gate", "weight_scale"), stack("up", "weight_scale")], 1),
        stack("down", "weight_packed"), stack("down", "weight_scale"))
    return {"gemm1_weights": out["gemm1_weights"], "gemm1_weights_scale": out["gemm1_scales"],
            "gemm2_weights": out["gemm2_weights"], "gemm2_weights_scale": out["gemm2_scales"]}


def _assert_layer_files_match(out_dir, tensors, fmt, layers=range(LAYERS), **kw):
    for layer in layers:
        written = load_file(str(out_dir / f"layer_{layer:03d}.safetensors"))
        expected = _expected_layer(tensors, fmt, layer, **kw)
        assert sorted(written) == sorted(expected)
        for name, want in expected.items():
            got = written[name]
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert torch.equal(_bits(got), _bits(want)), f"layer {layer} {name}"


def _mib(path):
    """Tensor bytes of a safetensors file in MiB as the dry run prints them."""
    with safe_open(str(path), framework="pt") as f:
        size = sum(f.get_tensor(n).numel() * f.get_tensor(n).element_size() for n in f.keys())
    return f"{size / 2**20:.2f} MiB"


def _files(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else None


# ------------------------------------------------------------------------------------------------
# conversion, verify, manifest


@pytest.mark.parametrize("fmt", ["bf16", "mxint4"])
def test_convert_equals_prepare_and_verifies(ckpt, tmp_path, capsys, fmt):
    src, tensors = ckpt
    out = tmp_path / "out"
    rc, _, err = _run(capsys, src, out, "--format", fmt, "--verify")
    assert rc == 0, err
    assert _files(out) == ["layer_000.safetensors", "layer_001.safetensors", "manifest.json"]
    _assert_layer_files_match(out, tensors, fmt)

    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == fmt
    assert m["layout_version"] == expert_prep.LAYOUT_VERSIONS[fmt]
    assert m["cute_moe_version"] == __import__("cute_moe").__version__
    assert m["activation_type"] == {"name": "Swiglu", "value": int(ActivationType.Swiglu)}
    assert [entry["layer"] for entry in m["layers"]] == list(range(LAYERS))
    for entry in m["layers"]:
        path = out / entry["file"]
        assert entry["sha256"] == _sha256(path)
        assert (entry["num_experts"], entry["hidden_size"], entry["intermediate_size"]) == (EXPERTS, H, I)
        with safe_open(str(path), framework="pt") as f:
            assert sorted(entry["tensors"]) == sorted(f.keys())
            for name, desc in entry["tensors"].items():
                t = f.get_tensor(name)
                assert desc == {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            assert f.metadata()["layout_version"] == m["layout_version"]
    shards = {SHARD.format(k=k): _sha256(src / SHARD.format(k=k)) for k in (1, 2)}
    assert m["source"]["shards"] == shards
    assert m["options"]["format"] == fmt and m["options"]["verify"] is True


def test_bf16_relu2_reads_no_gate(ckpt, tmp_path, capsys):
    src, tensors = ckpt
    for k in (1, 2):  # drop every gate projection: Relu2 must not need them
        shard = src / SHARD.format(k=k)
        kept = {n: t for n, t in load_file(str(shard)).items() if ".gate_proj." not in n}
        save_file(kept, str(shard))
    out = tmp_path / "out"
    rc, _, err = _run(capsys, src, out, "--format", "bf16", "--activation", "relu2", "--verify")
    assert rc == 0, err
    _assert_layer_files_match(out, tensors, "bf16", activation=ActivationType.Relu2)
    assert json.loads((out / "manifest.json").read_text())["activation_type"]["name"] == "Relu2"


def test_mxint4_refuses_relu2(ckpt, tmp_path, capsys):
    rc, _, err = _run(capsys, ckpt[0], tmp_path / "out", "--format", "mxint4", "--activation", "relu2")
    assert rc == 1 and "relu2" in err and _files(tmp_path / "out") is None


def test_index_and_layer_selection(ckpt, tmp_path, capsys):
    src, tensors = ckpt
    out = tmp_path / "out"
    rc, _, err = _run(capsys, src, out, "--format", "mxint4", "--index", src / INDEX_NAME, "--layers", "1")
    assert rc == 0, err
    assert _files(out) == ["layer_001.safetensors", "manifest.json"]
    _assert_layer_files_match(out, tensors, "mxint4", layers=[1])
    m = json.loads((out / "manifest.json").read_text())
    # Only the shard holding layer 1 was read.
    assert list(m["source"]["shards"]) == [SHARD.format(k=2)]
    assert m["source"]["index"] == str((src / INDEX_NAME).resolve())


def test_custom_pattern_and_proj_names(tmp_path, capsys, seeded):
    pattern, projs = "model.layers.{layer}.block_sparse_moe.experts.{expert}.{proj}", ("w1", "w3", "w2")
    src = tmp_path / "ckpt"
    tensors = write_demo_checkpoint(src, num_layers=LAYERS, num_experts=EXPERTS, hidden_size=H,
                                    intermediate_size=I, pattern=pattern, proj_names=projs, generator=seeded)
    rc, _, err = _run(capsys, src, tmp_path / "default", "--format", "bf16")
    assert rc == 1 and "no tensor" in err and _files(tmp_path / "default") is None
    out = tmp_path / "out"
    rc, _, err = _run(capsys, src, out, "--format", "bf16", "--pattern", pattern, "--proj-names", "w1,w3,w2",
                      "--verify")
    assert rc == 0, err
    _assert_layer_files_match(out, tensors, "bf16", pattern=pattern, proj_names=projs)
    assert json.loads((out / "manifest.json").read_text())["options"]["proj_names"] == list(projs)


@pytest.mark.parametrize("fmt", ["bf16", "mxint4"])
def test_dry_run_writes_nothing(ckpt, tmp_path, capsys, fmt):
    src, _ = ckpt
    before = {p.name: _sha256(p) for p in src.iterdir()}
    rc, out_text, err = _run(capsys, src, tmp_path / "out", "--format", fmt, "--dry-run")
    assert rc == 0, err
    assert _files(tmp_path / "out") is None
    assert {p.name: _sha256(p) for p in src.iterdir()} == before
    # The plan names every file, tensor, dtype and shape that a real run writes.
    real = tmp_path / "real"
    assert _run(capsys, src, real, "--format", fmt)[0] == 0
    lines = out_text.splitlines()
    for entry in json.loads((real / "manifest.json").read_text())["layers"]:
        at = next(k for k, line in enumerate(lines) if line.endswith(f"{entry['file']} ({_mib(real / entry['file'])})"))
        for k, (name, desc) in enumerate(entry["tensors"].items()):
            assert lines[at + 1 + k].split() == [name, desc["dtype"]] + str(desc["shape"]).split()
    existing = tmp_path / "existing"
    existing.mkdir()
    rc, _, _ = _run(capsys, src, existing, "--format", fmt, "--dry-run")
    assert rc == 0 and _files(existing) == []


def test_usage_errors_return_2(capsys):
    assert convert_weights.main(["--help"]) == 0
    assert "cute-moe-convert" in capsys.readouterr().out
    assert convert_weights.main(["a", "b"]) == 2  # --format is required
    assert convert_weights.main(["a", "b", "--format", "fp8"]) == 2
    assert "--format" in capsys.readouterr().err


def test_existing_output_needs_overwrite(ckpt, tmp_path, capsys):
    src, tensors = ckpt
    out = tmp_path / "out"
    assert _run(capsys, src, out, "--format", "bf16")[0] == 0
    first = {p: _sha256(out / p) for p in _files(out)}
    rc, _, err = _run(capsys, src, out, "--format", "mxint4")
    assert rc == 1 and "--overwrite" in err
    assert {p: _sha256(out / p) for p in _files(out)} == first
    rc, _, err = _run(capsys, src, out, "--format", "mxint4", "--overwrite", "--verify")
    assert rc == 0, err
    _assert_layer_files_match(out, tensors, "mxint4")


# ------------------------------------------------------------------------------------------------
# corrupted inputs: named tensor and shard, exit 1, no output left


def _rewrite(shard, edit):
    tensors = load_file(str(shard))
    edit(tensors)
    save_file(tensors, str(shard))


def _name(layer, expert, proj, suffix):
    return PREFIX.format(layer=layer, expert=expert, proj=proj) + "." + suffix


def _wrong_shape(fmt):
    suffix = "weight" if fmt == "bf16" else "weight_scale"
    name = _name(1, 2, "down_proj", suffix)

    def edit(t):
        n, k = t[name].shape
        t[name] = torch.zeros(n, k + 8, dtype=t[name].dtype)
    return name, edit, "shape"


def _inconsistent_expert0(fmt):
    # Expert 0 disagrees with the other three: the odd one out is named, not the majority.
    suffix = "weight" if fmt == "bf16" else "weight_packed"
    name = _name(1, 0, "up_proj", suffix)

    def edit(t):
        n, k = t[name].shape
        t[name] = torch.zeros(2 * n, k, dtype=t[name].dtype)
    return name, edit, "shape"


def _bad_dtype(fmt):
    suffix = "weight" if fmt == "bf16" else "weight_packed"
    name = _name(1, 1, "gate_proj", suffix)

    def edit(t):
        t[name] = t[name].to(torch.float16 if fmt == "bf16" else torch.int64)
    return name, edit, "dtype"


def _missing_expert(fmt):
    name = _name(1, 3, "gate_proj", "weight" if fmt == "bf16" else "weight_packed")

    def edit(t):
        for n in [n for n in t if ".experts.3." in n]:
            del t[n]
    return name, edit, "not found"


CORRUPTIONS = {"wrong_shape": _wrong_shape, "inconsistent_expert0": _inconsistent_expert0,
               "bad_dtype": _bad_dtype, "missing_expert": _missing_expert}


@pytest.mark.parametrize("fmt", ["bf16", "mxint4"])
@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupted_input_names_tensor_and_leaves_nothing(ckpt, tmp_path, capsys, fmt, case):
    src, _ = ckpt
    shard = SHARD.format(k=2)  # layer 1
    name, edit, what = CORRUPTIONS[case](fmt)
    _rewrite(src / shard, edit)
    (src / INDEX_NAME).unlink()  # the index still names the removed tensors; scan the shards
    out = tmp_path / "out"
    for extra in ([], ["--dry-run"], ["--verify"]):
        rc, _, err = _run(capsys, src, out, "--format", fmt, *extra)
        assert rc == 1
        assert f"'{name}'" in err and shard in err and what in err, err
        assert _files(out) is None


def test_index_naming_a_missing_tensor(ckpt, tmp_path, capsys):
    src, _ = ckpt
    name = _name(0, 2, "up_proj", "weight_scale")
    _rewrite(src / SHARD.format(k=1), lambda t: t.pop(name))
    rc, _, err = _run(capsys, src, tmp_path / "out", "--format", "mxint4", "--index", src / INDEX_NAME)
    assert rc == 1 and f"'{name}'" in err and SHARD.format(k=1) in err
    assert _files(tmp_path / "out") is None


def test_weight_shape_disagreeing(ckpt, tmp_path, capsys):
    src, _ = ckpt
    name = _name(0, 1, "down_proj", "weight_shape")
    _rewrite(src / SHARD.format(k=1), lambda t: t.update({name: torch.tensor([H, I + 256])}))
    rc, _, err = _run(capsys, src, tmp_path / "out", "--format", "mxint4")
    assert rc == 1 and f"'{name}'" in err and SHARD.format(k=1) in err


def test_unreadable_shard(ckpt, tmp_path, capsys):
    src, _ = ckpt
    shard = src / SHARD.format(k=2)
    shard.write_bytes(shard.read_bytes()[:100])
    rc, _, err = _run(capsys, src, tmp_path / "out", "--format", "bf16")
    assert rc == 1 and SHARD.format(k=2) in err and _files(tmp_path / "out") is None


def test_unaligned_sizes(tmp_path, capsys, seeded):
    src = tmp_path / "ckpt"
    # I = 96 fills 32-row shuffle blocks but not the 64-value K blocks of the bf16 layout.
    write_demo_checkpoint(src, num_layers=1, num_experts=2, hidden_size=256, intermediate_size=96,
                          generator=seeded)
    rc, _, err = _run(capsys, src, tmp_path / "out", "--format", "bf16")
    assert rc == 1 and "intermediate size I = 96" in err and "multiple of 64" in err
    rc, _, err = _run(capsys, src, tmp_path / "out", "--format", "mxint4")
    assert rc == 1 and "multiple of 256" in err and _files(tmp_path / "out") is None


def test_num_experts_below_found(ckpt, tmp_path, capsys):
    rc, _, err = _run(capsys, ckpt[0], tmp_path / "out", "--format", "bf16", "--num-experts", "3")
    assert rc == 1 and f"'{_name(0, 3, 'up_proj', 'weight')}'" in err


def test_verify_mismatch_after_a_written_layer_leaves_nothing(ckpt, tmp_path, capsys, monkeypatch):
    """A verify failure in layer 1 (after layer 0's file is staged) removes every file of the run,
    and an unrelated file in an existing output directory survives."""
    src, _ = ckpt
    real = expert_prep.prepare_expert
    calls = {"n": 0}

    def flip_one_byte(fmt, expert, activation):
        out = real(fmt, expert, activation)
        calls["n"] += 1
        if calls["n"] == 2 * EXPERTS + 2:  # layer 1, expert 1 (layer 0 prepared, then prepared again by verify)
            g = out["gemm2_weights"]
            g.view(-1).view(torch.uint8)[7] ^= 1
        return out

    monkeypatch.setattr(expert_prep, "prepare_expert", flip_one_byte)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    rc, _, err = _run(capsys, src, out, "--format", "mxint4", "--verify")
    assert rc == 1
    assert "verify: 'layer_001.safetensors'" in err and SHARD.format(k=2) in err
    assert f"'{_name(1, 1, 'down_proj', 'weight_packed')}'" in err
    assert _files(out) == ["notes.txt"]


# ------------------------------------------------------------------------------------------------
# checkpoint access and the demo writer


def test_pattern_parsing_and_scan():
    with pytest.raises(ValueError, match="exactly once"):
        ExpertNamePattern("model.layers.{layer}.experts.{proj}")
    with pytest.raises(ValueError, match="exactly once"):
        ExpertNamePattern("model.layers.{layer:02d}.experts.{expert}.{proj}")
    with pytest.raises(ValueError, match="module name"):
        ExpertNamePattern(PREFIX + ".weight")
    with pytest.raises(ValueError, match="distinct"):
        ExpertNamePattern(PREFIX, ("w1", "w1", "w2"))
    p = ExpertNamePattern(PREFIX)
    names = [_name(3, 10, "gate_proj", "weight"), _name(3, 10, "up_proj", "weight"),
             _name(3, 1, "down_proj", "weight"), _name(3, 1, "down_proj", "weight_scale"),
             "model.layers.3.mlp.shared_experts.up_proj.weight", "model.layers.3.mlp.gate.weight",
             "model.layers.3.mlp.experts.01.up_proj.weight", "model.layers.3.mlp.experts.2.o_proj.weight"]
    assert p.scan(names, "weight") == {3: {10: {"gate", "up"}, 1: {"down"}}}
    assert p.scan(names, "weight_scale") == {3: {1: {"down"}}}


def test_sharded_checkpoint_duplicates_and_headers(tmp_path):
    save_file({"a": torch.zeros(2, 3, dtype=torch.bfloat16)}, str(tmp_path / "x.safetensors"))
    with ShardedCheckpoint(tmp_path) as c:
        info = c.info("a")
        assert (info.shape, info.dtype, info.shard.name) == ((2, 3), torch.bfloat16, "x.safetensors")
        with pytest.raises(CheckpointError, match="'b' not found"):
            c.info("b")
    save_file({"a": torch.zeros(1)}, str(tmp_path / "y.safetensors"))
    with pytest.raises(CheckpointError, match="'a' is in two shards"):
        ShardedCheckpoint(tmp_path)


def test_demo_flavours_hold_the_same_values(ckpt):
    _, tensors = ckpt
    p = ExpertNamePattern(PREFIX)
    for role, proj, (n, k) in (("gate", "gate_proj", (I, H)), ("down", "down_proj", (H, I))):
        name = p.tensor(1, 3, role, "weight")
        q = unpack_uint4b8(tensors[name + "_packed"]).float()
        s = tensors[name + "_scale"].float().repeat_interleave(32, dim=1)
        assert tensors[name].shape == (n, k) and tensors[name + "_shape"].tolist() == [n, k]
        assert torch.equal(tensors[name], (q * s).to(torch.bfloat16))
        assert q.min() >= -8 and q.max() <= 7 and q.std() > 1  # a spread of int4 codes, not a constant


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["bf16", "mxint4"])
def test_cuda_device_matches_cpu(ckpt, tmp_path, capsys, fmt):
    src, tensors = ckpt
    rc, _, err = _run(capsys, src, tmp_path / "gpu", "--format", fmt, "--device", "cuda", "--verify")
    assert rc == 0, err
    _assert_layer_files_match(tmp_path / "gpu", tensors, fmt)


# ------------------------------------------------------------------------------------------------
# ModelOpt NVFP4 -> the b12x_fused_moe tensors

NV_H, NV_I = 128, 96


def _write_modelopt_nvfp4(directory, gen, gated=True, layers=2):
    """A two-shard ModelOpt-style NVFP4 checkpoint: per projection ``weight`` (packed e2m1),
    ``weight_scale`` (e4m3, per 16), ``weight_scale_2`` (float32 [], 1 / global encode scale) and
    ``input_scale`` (float32 [], one for gate and up); gate and up share their global scale, as
    fused-MoE NVFP4 checkpoints do. Returns every tensor."""
    from cute_moe.layouts.quantize import quantize_nvfp4

    directory.mkdir(parents=True)
    everything = {}
    for layer in range(layers):
        tensors = {f"model.layers.{layer}.mlp.gate.weight": torch.randn(EXPERTS, NV_H, generator=gen)}
        for e in range(EXPERTS):
            x_scale = torch.rand((), generator=gen) * 0.01 + 0.001
            floats = {proj: torch.randn(n, k, generator=gen) * k ** -0.5
                      for proj, (n, k) in (("gate_proj", (NV_I, NV_H)), ("up_proj", (NV_I, NV_H)),
                                           ("down_proj", (NV_H, NV_I)))}
            fc1_g = 448.0 * 6 / max(floats["gate_proj"].abs().max(), floats["up_proj"].abs().max())
            for proj, w in floats.items():
                if proj == "gate_proj" and not gated:
                    continue
                packed, scales, g = quantize_nvfp4(w, None if proj == "down_proj" else float(fc1_g))
                base = PREFIX.format(layer=layer, expert=e, proj=proj)
                tensors[f"{base}.weight"] = packed
                tensors[f"{base}.weight_scale"] = scales
                tensors[f"{base}.weight_scale_2"] = (1.0 / g).reshape(())
                tensors[f"{base}.input_scale"] = (x_scale.clone() if proj != "down_proj"
                                                  else torch.rand((), generator=gen) * 0.01 + 0.001).float()
        save_file(tensors, str(directory / SHARD.format(k=layer + 1)))
        everything.update(tensors)
    return everything


def _nv(tensors, layer, e, proj, suffix):
    return tensors[f"{PREFIX.format(layer=layer, expert=e, proj=proj)}.{suffix}"]


@pytest.mark.parametrize("gated", [True, False])
def test_modelopt_nvfp4_converts_to_b12x_tensors(tmp_path, capsys, seeded, gated):
    from cute_moe.enums import ActivationType as AT
    from cute_moe.layouts import scale_mma_view
    from cute_moe.layouts.quantize import dequantize_nvfp4
    from cute_moe.reference import reference_moe_canonical
    from cute_moe.reference_b12x import reference_b12x_fused_moe

    src = tmp_path / "nv"
    tensors = _write_modelopt_nvfp4(src, seeded, gated)
    out = tmp_path / "out"
    rc, _, err = _run(capsys, src, out, "--format", "nvfp4", "--verify",
                      *([] if gated else ["--activation", "relu2"]))
    assert rc == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "nvfp4" and m["entry_points"] == ["b12x_fused_moe"]
    fc1 = ("up_proj", "gate_proj") if gated else ("up_proj",)
    for layer in range(2):
        written = load_file(str(out / f"layer_{layer:03d}.safetensors"))
        stack = lambda projs, suffix: torch.stack([torch.cat([_nv(tensors, layer, e, p, suffix) for p in projs])  # noqa: E731
                                                  for e in range(EXPERTS)])
        want = prepare.prepare_b12x_fp4_moe_weights(stack(fc1, "weight"), stack(fc1, "weight_scale"),
                                                    stack(("down_proj",), "weight"), stack(("down_proj",), "weight_scale"))
        assert torch.equal(written["w1_weight"], want["w1_weight"])
        assert torch.equal(written["w2_weight"], want["w2_weight"])
        m1 = written["w1_weight"].shape[1]
        sf1 = scale_mma_view(written["w1_weight_sf"], m1, NV_H // 16, EXPERTS)
        sf2 = scale_mma_view(written["w2_weight_sf"], NV_H, NV_I // 16, EXPERTS)
        assert torch.equal(_bits(sf1.contiguous()), _bits(want["w1_weight_sf"].contiguous()))
        assert torch.equal(_bits(sf2.contiguous()), _bits(want["w2_weight_sf"].contiguous()))
        scalar = lambda p, s: torch.stack([_nv(tensors, layer, e, p, s).reshape(()) for e in range(EXPERTS)])  # noqa: E731
        assert torch.equal(written["w1_alpha"], scalar("up_proj", "weight_scale_2"))
        assert torch.equal(written["input_global_scale"], scalar("up_proj", "input_scale"))
        assert torch.equal(written["fc2_input_scale"], scalar("down_proj", "input_scale"))
        assert torch.equal(written["w2_alpha"], scalar("down_proj", "input_scale") * scalar("down_proj", "weight_scale_2"))

        # The converted tensors mean the checkpoint's weights: W4A16 on them equals the bf16
        # reference on the dequantized checkpoint, and nvfp4 approximates it
        deq = lambda projs: torch.stack([torch.cat([dequantize_nvfp4(  # noqa: E731
            _nv(tensors, layer, e, p, "weight"), _nv(tensors, layer, e, p, "weight_scale"),
            1.0 / _nv(tensors, layer, e, p, "weight_scale_2")) for p in projs]) for e in range(EXPERTS)])
        x = torch.randn(19, NV_H, generator=seeded).to(torch.bfloat16)
        ids = torch.stack([torch.randperm(EXPERTS, generator=seeded)[:2] for _ in range(19)]).to(torch.int32)
        w = torch.rand(19, 2, generator=seeded).float()
        args = (x, written["w1_weight"], sf1, written["w2_weight"], sf2, ids, w, EXPERTS, 2)
        act = "silu" if gated else "relu2"
        w4 = reference_b12x_fused_moe(*args, w1_alpha=written["w1_alpha"], w2_alpha=scalar("down_proj", "weight_scale_2"),
                                      quant_mode="w4a16", activation=act)
        ref = reference_moe_canonical(x, ids, w, deq(fc1), deq(("down_proj",)), AT.Swiglu if gated else AT.Relu2, 0,
                                      EXPERTS)
        assert ((w4.output_f32 - ref.output_f32).norm() / ref.output_f32.norm()).item() < 1e-3
        nv = reference_b12x_fused_moe(*args, w1_alpha=written["w1_alpha"], w2_alpha=written["w2_alpha"],
                                      fc2_input_scale=written["fc2_input_scale"],
                                      input_global_scale=written["input_global_scale"], activation=act)
        # two NVFP4 quantizations: 0.15-0.20 gated; relu2 squares FC1's error (0.12-0.29 over 24 seeds)
        bound = 0.25 if gated else 0.4
        assert ((nv.output_f32 - ref.output_f32).norm() / ref.output_f32.norm()).item() < bound


def test_modelopt_nvfp4_gate_and_up_scales_must_agree(tmp_path, capsys, seeded):
    src = tmp_path / "nv"
    _write_modelopt_nvfp4(src, seeded)
    name = f"{PREFIX.format(layer=1, expert=2, proj='gate_proj')}.weight_scale_2"
    _rewrite(src / SHARD.format(k=2), lambda t: t.__setitem__(name, t[name] * 2))
    out = tmp_path / "out"
    rc, _, err = _run(capsys, src, out, "--format", "nvfp4")
    assert rc == 1 and f"'{name}'" in err and "up_proj.weight_scale_2" in err and "differ" in err, err
    assert _files(out) is None


@pytest.mark.parametrize("suffix,edit,what", [
    ("weight_scale", lambda t: t.to(torch.bfloat16), "dtype"),
    ("input_scale", lambda t: torch.ones(2), "one value"),
    ("weight", lambda t: t[:, :-1].contiguous(), "shape"),
])
def test_modelopt_nvfp4_bad_tensors_are_named(tmp_path, capsys, seeded, suffix, edit, what):
    src = tmp_path / "nv"
    _write_modelopt_nvfp4(src, seeded)
    name = f"{PREFIX.format(layer=0, expert=1, proj='down_proj')}.{suffix}"
    _rewrite(src / SHARD.format(k=1), lambda t: t.__setitem__(name, edit(t[name])))
    out = tmp_path / "out"
    rc, _, err = _run(capsys, src, out, "--format", "nvfp4", "--verify")
    assert rc == 1 and f"'{name}'" in err and what in err, err
    assert _files(out) is None
