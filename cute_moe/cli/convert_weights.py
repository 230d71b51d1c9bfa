"""``cute-moe-convert``: turn a sharded MoE checkpoint into prepared per-layer weight files.

Reads the per-expert tensors of every MoE layer (bf16 ``.weight``, compressed-tensors int4
``.weight_packed`` / ``.weight_scale``, or ModelOpt NVFP4 ``.weight`` / ``.weight_scale`` /
``.weight_scale_2`` / ``.input_scale``), prepares them with :mod:`cute_moe.prepare` and writes one
safetensors file per layer holding exactly the weight arguments of the fused entry points
(``gemm1_weights``, ``gemm2_weights``, and for mxint4 ``gemm1_weights_scale``,
``gemm2_weights_scale``; for nvfp4 the ``b12x_fused_moe`` arguments of cli/expert_prep.py),
plus ``manifest.json``.

Memory: one layer at a time. Expert tensors are read one expert at a time and prepared per
expert (preparation is independent per expert); the layer's prepared tensors are held on the
host until its file is written. Peak host memory ~ one layer's prepared weights + one expert's
source tensors (+ one expert's again while verifying).

Output is transactional: files are written under temporary names in the output directory and
renamed to their final names (manifest last) only once every layer is written (and verified);
on any error every file of the run is removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..checkpoint import (DEFAULT_PATTERN, DEFAULT_PROJ_NAMES, CheckpointError, ExpertNamePattern,
                          ShardedCheckpoint, TensorInfo)
from ..enums import ActivationType
from ..layouts.packing import INT4_PER_INT32
from ..layouts.quantize import MXINT4_GROUP
from . import expert_prep as prep

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
LAYER_FILE = "layer_{layer:03d}.safetensors"

# exit codes
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class ConversionError(RuntimeError):
    """The checkpoint cannot be converted as asked; the message names the offending tensor."""


# ------------------------------------------------------------------------------------------------
# Source tensor formats
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParamSpec:
    """One per-expert parameter: ``<module>.<suffix>``, dtype, shape ``[N, K / k_per_col]``, or
    (``scalar``) one value stored as ``[]`` or ``[1]``."""

    suffix: str
    dtype: torch.dtype
    k_per_col: int = 1
    scalar: bool = False

    def shape(self, n: int, k: int) -> Tuple[int, ...]:
        return () if self.scalar else (n, k // self.k_per_col)

    def accepts(self, shape: Tuple[int, ...], n: int, k: int) -> bool:
        return tuple(shape) in ((), (1,)) if self.scalar else tuple(shape) == self.shape(n, k)


@dataclass(frozen=True)
class SourceFormat:
    name: str
    params: Tuple[ParamSpec, ...]
    shape_param: Optional[str] = None  # optional int tensor holding [N, K]
    entry_points: Tuple[str, ...] = ()


FORMATS = {
    "bf16": SourceFormat("bf16", (ParamSpec("weight", torch.bfloat16, 1),),
                         entry_points=("trtllm_bf16_moe", "trtllm_bf16_routed_moe")),
    # compressed-tensors pack-quantized int4: eight uint4b8 per int32 word along K, and one bf16
    # scale per 32 values along K.
    "mxint4": SourceFormat("mxint4", (ParamSpec("weight_packed", torch.int32, INT4_PER_INT32),
                                      ParamSpec("weight_scale", torch.bfloat16, MXINT4_GROUP)),
                           shape_param="weight_shape",
                           entry_points=("trtllm_mxint4_block_scale_moe",
                                         "trtllm_mxint4_block_scale_routed_moe")),
    # ModelOpt NVFP4: packed e2m1 (two per byte, low nibble first), one e4m3 scale per 16 values
    # along K, a float32 global decode scale and the calibrated input scale per projection.
    "nvfp4": SourceFormat("nvfp4", (ParamSpec("weight", torch.uint8, 2),
                                    ParamSpec("weight_scale", torch.float8_e4m3fn, 16),
                                    ParamSpec("weight_scale_2", torch.float32, scalar=True),
                                    ParamSpec("input_scale", torch.float32, scalar=True)),
                          entry_points=("b12x_fused_moe",)),
}

ACTIVATIONS = {"swiglu": ActivationType.Swiglu, "relu2": ActivationType.Relu2}


def _role_dims(role: str, hidden: int, inter: int) -> Tuple[int, int]:
    """(N, K) of a projection: gate/up ``[I, H]``, down ``[H, I]``."""
    return (hidden, inter) if role == "down" else (inter, hidden)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ------------------------------------------------------------------------------------------------
# Planning (headers only)
# ------------------------------------------------------------------------------------------------

@dataclass
class LayerPlan:
    layer: int
    num_experts: int
    hidden_size: int
    intermediate_size: int
    # (expert, role, suffix) -> header info of the source tensor
    sources: Dict[Tuple[int, str, str], TensorInfo] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return LAYER_FILE.format(layer=self.layer)

    def shards(self) -> List[Path]:
        return sorted({i.shard for i in self.sources.values()})


@dataclass
class Job:
    fmt: SourceFormat
    activation: ActivationType
    names: ExpertNamePattern
    device: torch.device

    @property
    def roles(self) -> Tuple[str, ...]:
        return ("gate", "up", "down") if self.activation.is_gated else ("up", "down")


def plan_layers(ckpt: ShardedCheckpoint, job: Job, num_experts: Optional[int] = None,
                layers: Optional[Sequence[int]] = None) -> List[LayerPlan]:
    """Find every MoE layer and check each source tensor's presence, dtype and shape."""
    fmt, names = job.fmt, job.names
    lead = fmt.params[0]
    found = names.scan(ckpt.names(), lead.suffix)
    if not found:
        probe = names.tensor(0, 0, "up", lead.suffix)
        raise ConversionError(f"no tensor of '{ckpt.directory}' matches '{names.pattern}.{lead.suffix}' "
                              f"with proj names {list(names.proj_names.values())} (e.g. '{probe}'); "
                              "check --pattern, --proj-names and --format")
    if layers is not None:
        missing = sorted(set(layers) - set(found))
        if missing:
            raise ConversionError(f"--layers {missing}: no tensor matches, e.g. "
                                  f"'{names.tensor(missing[0], 0, 'up', lead.suffix)}'")
        found = {k: found[k] for k in layers}
    num = num_experts if num_experts is not None else max(max(ex) + 1 for ex in found.values())
    plans = []
    for layer in sorted(found):
        extra = sorted(e for e in found[layer] if e >= num)
        if extra:
            bad = names.tensor(layer, extra[0], "up", lead.suffix)
            raise ConversionError(f"layer {layer} has expert {extra[0]} ('{bad}') beyond "
                                  f"--num-experts {num}")
        plans.append(_plan_layer(ckpt, job, layer, num))
    return plans


def _plan_layer(ckpt: ShardedCheckpoint, job: Job, layer: int, num_experts: int) -> LayerPlan:
    fmt, names = job.fmt, job.names
    lead = fmt.params[0]
    plan = LayerPlan(layer, num_experts, 0, 0)
    known_shards = sorted({ckpt.shard_of(n).name for n in (names.tensor(layer, e, r, lead.suffix)
                           for e in range(num_experts) for r in job.roles) if n in ckpt})

    def info(expert: int, role: str, suffix: str) -> TensorInfo:
        name = names.tensor(layer, expert, role, suffix)
        if name not in ckpt:
            raise ConversionError(f"tensor '{name}' not found in any shard of '{ckpt.directory}' "
                                  f"(layer {layer} has experts 0..{num_experts - 1}; its other expert "
                                  f"tensors are in {known_shards})")
        return ckpt.info(name)

    for e in range(num_experts):
        for role in job.roles:
            for p in fmt.params:
                i = info(e, role, p.suffix)
                if i.dtype != p.dtype:
                    raise ConversionError(f"{i.where()}: dtype {i.dtype_name}, expected "
                                          f"{_dtype_name(p.dtype)}")
                if p.scalar:
                    if tuple(i.shape) not in ((), (1,)):
                        raise ConversionError(f"{i.where()}: shape {list(i.shape)}, expected one value ([] or [1])")
                elif len(i.shape) != 2:
                    raise ConversionError(f"{i.where()}: shape {list(i.shape)}, expected a 2-D [N, K] tensor")
                plan.sources[(e, role, p.suffix)] = i

    # The layer's (H, I): the most common one among the up projections, so that a single
    # corrupted expert is the one named.
    dims = {e: (plan.sources[(e, "up", lead.suffix)].shape[1] * lead.k_per_col,
                plan.sources[(e, "up", lead.suffix)].shape[0]) for e in range(num_experts)}
    hidden, inter = Counter(dims.values()).most_common(1)[0][0]
    plan.hidden_size, plan.intermediate_size = hidden, inter
    ref = plan.sources[(next(e for e in range(num_experts) if dims[e] == (hidden, inter)), "up", lead.suffix)]
    _check_alignment(job, plan, ref)
    for (e, role, suffix), i in plan.sources.items():
        n, k = _role_dims(role, hidden, inter)
        p = next(p for p in fmt.params if p.suffix == suffix)
        if not p.accepts(i.shape, n, k):
            raise ConversionError(f"{i.where()}: shape {list(i.shape)}, expected {list(p.shape(n, k))} "
                                  f"(H={hidden}, I={inter} from '{ref.name}')")
    if fmt.shape_param is not None:
        _check_shape_params(ckpt, job, plan)
    return plan


def _check_shape_params(ckpt: ShardedCheckpoint, job: Job, plan: LayerPlan) -> None:
    """Where the checkpoint stores ``weight_shape`` ([N, K]), it must agree with the packed shape."""
    for e in range(plan.num_experts):
        for role in job.roles:
            name = job.names.tensor(plan.layer, e, role, job.fmt.shape_param)
            if name not in ckpt:
                continue
            i = ckpt.info(name)
            value = ckpt.load(name)
            want = list(_role_dims(role, plan.hidden_size, plan.intermediate_size))
            if value.dtype not in (torch.int32, torch.int64) or value.tolist() != want:
                raise ConversionError(f"{i.where()}: holds {value.tolist()} ({i.dtype_name}), "
                                      f"expected {want}")
            plan.sources[(e, role, job.fmt.shape_param)] = i


def _check_alignment(job: Job, plan: LayerPlan, ref: TensorInfo) -> None:
    h_mult, i_mult = prep.size_multiples(job.fmt.name)
    for what, size, mult in (("hidden size H", plan.hidden_size, h_mult),
                             ("intermediate size I", plan.intermediate_size, i_mult)):
        if size % mult:
            raise ConversionError(f"layer {plan.layer}: {what} = {size} (from {ref.where()}) is not a "
                                  f"multiple of {mult}, which the {job.fmt.name} layout and entry points need")


# ------------------------------------------------------------------------------------------------
# Conversion of one layer
# ------------------------------------------------------------------------------------------------

def _load_expert(ckpt: ShardedCheckpoint, job: Job, plan: LayerPlan, e: int) -> Dict[str, Dict[str, torch.Tensor]]:
    """role -> suffix -> source tensor of expert ``e`` on the job's device."""
    return {role: {p.suffix: ckpt.load(plan.sources[(e, role, p.suffix)].name, job.device)
                   for p in job.fmt.params} for role in job.roles}


def convert_layer(ckpt: ShardedCheckpoint, job: Job, plan: LayerPlan,
                  progress: Callable[[], None] = lambda: None) -> Dict[str, torch.Tensor]:
    """Prepared tensors of one layer (host memory), prepared one expert at a time."""
    out: Dict[str, torch.Tensor] = {}
    for e in range(plan.num_experts):
        src = _load_expert(ckpt, job, plan, e)
        _check_shared_fc1_values(job, plan, e, src)
        prepared = prep.prepare_expert(job.fmt.name, src, job.activation)
        for name, t in prepared.items():
            if name not in out:
                out[name] = torch.empty((plan.num_experts,) + tuple(t.shape[1:]), dtype=t.dtype)
            out[name][e].copy_(t[0])
        progress()
    try:
        prep.check_entry_point_weights(job.fmt.name, out, job.activation, plan.hidden_size, plan.intermediate_size)
    except (TypeError, ValueError) as err:
        raise ConversionError(f"layer {plan.layer}: prepared weights fail the entry point's checks: {err}") from err
    return out


def _check_shared_fc1_values(job: Job, plan: LayerPlan, e: int, src) -> None:
    """The fused FC1 of some formats takes one value for gate and up (nvfp4: the global and input
    scales); a checkpoint whose two projections disagree cannot be converted exactly."""
    if not job.activation.is_gated:
        return
    for suffix in prep.shared_fc1_values(job.fmt.name):
        gate, up = src["gate"][suffix].reshape(-1), src["up"][suffix].reshape(-1)
        if not torch.equal(gate, up):
            raise ConversionError(f"{plan.sources[(e, 'gate', suffix)].where()} = {gate.tolist()} and "
                                  f"{plan.sources[(e, 'up', suffix)].where()} = {up.tolist()} differ: the fused "
                                  f"FC1 takes one {suffix} for gate and up")


def verify_layer(ckpt: ShardedCheckpoint, job: Job, plan: LayerPlan, written: Path,
                 progress: Callable[[], None] = lambda: None) -> None:
    """Read ``written`` back: unpreparing each expert's slice gives its source back bit for bit, and
    the slice equals preparing the source again (which covers values a format derives, such as
    nvfp4's ``w2_alpha``)."""
    from safetensors import safe_open

    with safe_open(str(written), framework="pt", device="cpu") as f:
        for e in range(plan.num_experts):
            prepared = {name: f.get_slice(name)[e:e + 1].to(job.device) for name in f.keys()}
            source = _load_expert(ckpt, job, plan, e)
            recovered = prep.unprepare_expert(job.fmt.name, prepared, job.activation)
            for role in job.roles:
                for p in job.fmt.params:
                    got = recovered[role].get(p.suffix)
                    if got is None:  # held only combined with another value: the next check
                        continue
                    want = source[role][p.suffix]
                    if got.numel() == want.numel():
                        got = got.reshape(want.shape)
                    _assert_bits_equal(got, want, plan.sources[(e, role, p.suffix)], plan.file)
            again = prep.prepare_expert(job.fmt.name, source, job.activation)
            for name, want in again.items():
                if name not in prepared:
                    raise ConversionError(f"verify: '{plan.file}' lacks tensor '{name}'")
                _assert_bits_equal(prepared[name], want, None, plan.file, what=f"'{name}' of expert {e}")
            progress()


def _assert_bits_equal(got: torch.Tensor, want: torch.Tensor, src: Optional[TensorInfo], written: str,
                       what: str = "") -> None:
    if got.dtype == want.dtype and got.shape == want.shape:
        bits = {2: torch.int16, 4: torch.int32, 1: torch.uint8, 8: torch.int64}[want.element_size()]
        diff = got.view(bits) != want.to(got.device).view(bits)
        if not bool(diff.any()):
            return
        first = tuple(int(x) for x in diff.nonzero()[0])
        detail = (f"{int(diff.sum())} of {diff.numel()} elements differ, first at {list(first)}: "
                  f"{got[first].item()} != {want[first].item()}")
    else:
        detail = f"got {got.dtype} {list(got.shape)}, source is {want.dtype} {list(want.shape)}"
    target = src.where() if src is not None else f"{what} as preparing the source gives it"
    raise ConversionError(f"verify: '{written}' does not reproduce {target}: {detail}")


# ------------------------------------------------------------------------------------------------
# Output staging: temporary names, renamed on success, removed on failure
# ------------------------------------------------------------------------------------------------

class OutputStage:
    """Files of one run, written as ``.<name>.partial-<pid>`` and renamed by :meth:`commit`."""

    def __init__(self, directory: Path, overwrite: bool):
        self.directory = directory
        self.overwrite = overwrite
        self._created_dir = False
        self._staged: Dict[str, Path] = {}  # final name -> temporary path, in commit order
        self._committed: List[Path] = []

    def check(self, final_names: Sequence[str]) -> None:
        if self.directory.exists() and not self.directory.is_dir():
            raise ConversionError(f"output '{self.directory}' exists and is not a directory")
        clash = [n for n in final_names if (self.directory / n).exists()]
        if clash and not self.overwrite:
            raise ConversionError(f"output '{self.directory}' already holds {clash[:3]}"
                                  f"{' ...' if len(clash) > 3 else ''}; pass --overwrite to replace")

    def open(self) -> None:
        if not self.directory.exists():
            self.directory.mkdir(parents=True)
            self._created_dir = True

    @staticmethod
    def publish_mode(path: Path) -> None:
        """Give a written file the permissions the umask allows (safetensors creates it 0600)."""
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)

    def temp_path(self, final_name: str) -> Path:
        path = self.directory / f".{final_name}.partial-{os.getpid()}"
        self._staged[final_name] = path
        return path

    def commit(self) -> None:
        for final_name, tmp in self._staged.items():
            final = self.directory / final_name
            os.replace(tmp, final)
            self._committed.append(final)
        self._staged.clear()

    def abort(self) -> None:
        for path in list(self._staged.values()) + self._committed:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        self._staged.clear()
        self._committed.clear()
        if self._created_dir:
            try:
                self.directory.rmdir()
            except OSError:
                pass


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------

def _tensor_entry(t) -> Dict[str, object]:
    return {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)}


def _options(args) -> Dict[str, object]:
    return {"format": args.format, "activation": args.activation, "pattern": args.pattern,
            "proj_names": list(args.proj_names), "index": str(args.index) if args.index else None,
            "num_experts": args.num_experts, "layers": args.layers, "device": args.device,
            "verify": args.verify}


def build_manifest(args, job: Job, plans: Sequence[LayerPlan], layer_entries: List[dict],
                   ckpt: ShardedCheckpoint, shard_hashes: Dict[str, str]) -> Dict[str, object]:
    import cute_moe

    return {
        "manifest_version": MANIFEST_VERSION,
        "format": job.fmt.name,
        "layout_version": prep.layout_version(job.fmt.name),
        "cute_moe_version": cute_moe.__version__,
        "entry_points": list(job.fmt.entry_points),
        "activation_type": {"name": job.activation.name, "value": int(job.activation)},
        "num_layers": len(plans),
        "layers": layer_entries,
        "source": {"directory": str(ckpt.directory.resolve()),
                   "index": str(ckpt.index.resolve()) if ckpt.index else None,
                   "shards": shard_hashes},
        "options": _options(args),
    }


def _parse_layers(text: str) -> List[int]:
    """``"0,2,5-7"`` -> [0, 2, 5, 6, 7]."""
    out: List[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return sorted(set(out))


def _parse_args(argv):
    p = argparse.ArgumentParser(
        prog="cute-moe-convert",
        description="Convert the expert weights of a sharded safetensors MoE checkpoint into cute_moe's "
                    "prepared layout: one safetensors file per MoE layer (the entry points' gemm1/gemm2 "
                    "weight arguments) and manifest.json. Memory holds one layer at a time.",
        epilog="Source tensors are '<pattern>.weight' (bf16), '<pattern>.weight_packed' int32 [N, K/8] + "
               "'<pattern>.weight_scale' bf16 [N, K/32] (+ optional '.weight_shape') (mxint4, "
               "compressed-tensors pack-quantized) or '<pattern>.weight' uint8 [N, K/2] + '.weight_scale' "
               "float8_e4m3fn [N, K/16] + '.weight_scale_2' and '.input_scale' float32 scalars (nvfp4, "
               "ModelOpt), with gate/up [I, H] and down [H, I]. "
               "Exit status: 0 done, 1 conversion error (the message names the tensor and shard), 2 usage.")
    p.add_argument("checkpoint", type=Path, help="directory of *.safetensors shards")
    p.add_argument("output", type=Path, help="output directory (created; must not hold earlier output "
                   "unless --overwrite)")
    p.add_argument("--format", choices=sorted(FORMATS), required=True, help="expert weight format to read")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default="swiglu",
                   help="FC1 activation (default %(default)s; relu2 reads no gate projection; bf16 and nvfp4)")
    p.add_argument("--pattern", default=DEFAULT_PATTERN,
                   help="expert module name with {layer}, {expert}, {proj} (default %(default)s)")
    p.add_argument("--proj-names", default=",".join(DEFAULT_PROJ_NAMES),
                   type=lambda s: tuple(x.strip() for x in s.split(",")),
                   help="names of the gate,up,down projections in {proj} (default %(default)s; "
                        "e.g. w1,w3,w2)")
    p.add_argument("--index", type=Path, help="safetensors index json (default: scan the directory's "
                   "*.safetensors headers)")
    p.add_argument("--num-experts", type=int, help="experts per layer (default: the most found in any layer)")
    p.add_argument("--layers", type=_parse_layers, help="only these layers, e.g. 0,3-5 (default: all found)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where to prepare (default %(default)s; cuda is faster on big layers)")
    p.add_argument("--verify", action="store_true",
                   help="read each written file back, unprepare it and compare bit for bit with the source")
    p.add_argument("--dry-run", action="store_true", help="check the checkpoint, print the plan, write nothing")
    p.add_argument("--overwrite", action="store_true", help="replace earlier output files of the same names")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    return p.parse_args(argv)


def _make_job(args) -> Job:
    fmt = FORMATS[args.format]
    activation = ACTIVATIONS[args.activation]
    if not prep.supports(fmt.name, activation):
        raise ConversionError(f"--format {fmt.name} does not support --activation {args.activation}")
    try:
        names = ExpertNamePattern(args.pattern, args.proj_names)
    except ValueError as e:
        raise ConversionError(str(e)) from e
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConversionError("--device cuda: no CUDA device is available")
    return Job(fmt, activation, names, torch.device(args.device))


def _print_plan(job: Job, plans: Sequence[LayerPlan], output: Path, ckpt: ShardedCheckpoint) -> None:
    shards = sorted({s.name for p in plans for s in p.shards()})
    shapes: Dict[Tuple[int, int, int], Dict[str, Tuple[Tuple[int, ...], torch.dtype]]] = {}
    print(f"format {job.fmt.name}, activation {job.activation.name}, {len(plans)} MoE layers")
    print(f"source {ckpt.directory}: {len(shards)} shards used: {', '.join(shards)}")
    total = 0
    for p in plans:
        key = (p.num_experts, p.hidden_size, p.intermediate_size)
        if key not in shapes:
            shapes[key] = prep.prepared_shapes(job.fmt.name, job.activation, *key)
        size = sum(_numel(s) * torch.empty((), dtype=d).element_size() for s, d in shapes[key].values())
        total += size
        print(f"  layer {p.layer}: {p.num_experts} experts, H={p.hidden_size}, I={p.intermediate_size} "
              f"-> {output / p.file} ({size / 2**20:.2f} MiB)")
        for name, (s, d) in shapes[key].items():
            print(f"      {name:<22} {_dtype_name(d):<9} {list(s)}")
    print(f"  manifest -> {output / MANIFEST_NAME}")
    print(f"dry run: would write {len(plans) + 1} files ({total / 2**20:.2f} MiB); nothing written")


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def run(args) -> int:
    job = _make_job(args)
    with ShardedCheckpoint(args.checkpoint, args.index) as ckpt:
        plans = plan_layers(ckpt, job, args.num_experts, args.layers)
        stage = OutputStage(args.output, args.overwrite)
        stage.check([p.file for p in plans] + [MANIFEST_NAME])
        if args.dry_run:
            _print_plan(job, plans, args.output, ckpt)
            return EXIT_OK
        return _convert_all(args, job, plans, ckpt, stage)


def _convert_all(args, job: Job, plans: Sequence[LayerPlan], ckpt: ShardedCheckpoint,
                 stage: OutputStage) -> int:
    from safetensors.torch import save_file
    from tqdm import tqdm

    stage.open()
    try:
        entries = []
        for plan in plans:
            steps = plan.num_experts * (2 if args.verify else 1)
            with tqdm(total=steps, desc=f"layer {plan.layer}", unit="expert", disable=args.quiet,
                      file=sys.stderr, leave=True) as bar:
                tensors = convert_layer(ckpt, job, plan, lambda: bar.update())
                tmp = stage.temp_path(plan.file)
                meta = {"format": job.fmt.name, "layer": str(plan.layer),
                        "layout_version": prep.layout_version(job.fmt.name)}
                save_file(tensors, str(tmp), metadata=meta)
                stage.publish_mode(tmp)
                entry = {"layer": plan.layer, "file": plan.file, "num_experts": plan.num_experts,
                         "hidden_size": plan.hidden_size, "intermediate_size": plan.intermediate_size,
                         "tensors": {n: _tensor_entry(t) for n, t in tensors.items()}}
                del tensors
                if args.verify:
                    bar.set_postfix_str("verify")
                    verify_layer(ckpt, job, plan, tmp, lambda: bar.update())
                entry["sha256"] = sha256_file(tmp)
                entries.append(entry)
        used = sorted({s for p in plans for s in p.shards()})
        hashes = {s.name: sha256_file(s) for s in used}
        manifest = build_manifest(args, job, plans, entries, ckpt, hashes)
        stage.temp_path(MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        stage.commit()
    except BaseException:
        stage.abort()
        raise
    if not args.quiet:
        size = sum(_numel(t["shape"]) * torch.empty((), dtype=getattr(torch, t["dtype"])).element_size()
                   for e in entries for t in e["tensors"].values())
        print(f"wrote {len(entries)} layers ({size / 2**20:.2f} MiB) and {MANIFEST_NAME} to {args.output}"
              f"{'; verified bit-exact against the source' if args.verify else ''}")
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = _parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2): a code, not an exception, for callers
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return run(args)
    except (ConversionError, CheckpointError, OSError) as e:
        print(f"cute-moe-convert: error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
