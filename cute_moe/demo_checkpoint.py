"""Write a small synthetic MoE checkpoint (sharded safetensors + index) for demos and tests.

Each expert ``e`` of layer ``L`` has gate/up ``[I, H]`` and down ``[H, I]`` projections drawn as
``w ~ N(0, 1/K)`` and MXINT4-quantized (:func:`cute_moe.layouts.quantize_mxint4`: int4 ``q`` in
[-8, 7], one bf16 scale ``s`` per 32 values along K). They are stored in one or both flavours of
the same values:

* ``mxint4`` (compressed-tensors pack-quantized): ``weight_packed [N, K/8] int32`` uint4b8 words
  (:func:`cute_moe.layouts.int4_to_uint4b8`), ``weight_scale [N, K/32] bf16``,
  ``weight_shape = [N, K] int64``;
* ``bf16``: ``weight = bf16(q * s)``.

One shard per layer, plus non-expert tensors (router, attention, shared expert) that a converter
must skip.

    python -m cute_moe.demo_checkpoint /tmp/demo_ckpt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from .checkpoint import DEFAULT_PATTERN, DEFAULT_PROJ_NAMES, ExpertNamePattern
from .layouts import dequantize_mxint4, int4_to_uint4b8, quantize_mxint4
from .layouts.quantize import MXINT4_GROUP

INDEX_NAME = "model.safetensors.index.json"
FORMATS = ("bf16", "mxint4")


def demo_tensors(*, num_layers: int = 2, num_experts: int = 4, hidden_size: int = 256,
                 intermediate_size: int = 256, formats: Sequence[str] = FORMATS,
                 pattern: str = DEFAULT_PATTERN, proj_names: Sequence[str] = DEFAULT_PROJ_NAMES,
                 generator: Optional[torch.Generator] = None) -> Dict[int, Dict[str, torch.Tensor]]:
    """``{layer: {tensor name: tensor}}`` of a synthetic checkpoint (see the module docstring)."""
    h, i = hidden_size, intermediate_size
    if h % MXINT4_GROUP or i % MXINT4_GROUP:
        raise ValueError(f"hidden_size {h} and intermediate_size {i} must be multiples of {MXINT4_GROUP}")
    if not formats or not set(formats) <= set(FORMATS):
        raise ValueError(f"formats {formats}: choose from {FORMATS}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    names = ExpertNamePattern(pattern, proj_names)
    layers: Dict[int, Dict[str, torch.Tensor]] = {}
    for layer in range(num_layers):
        # Non-expert tensors: the router, attention and a shared expert.
        t: Dict[str, torch.Tensor] = {
            f"model.layers.{layer}.{name}": torch.randn(shape, generator=gen).to(torch.bfloat16)
            for name, shape in (("mlp.gate.weight", (num_experts, h)), ("self_attn.o_proj.weight", (h, h)),
                                ("mlp.shared_experts.up_proj.weight", (i, h)))
        }
        for e in range(num_experts):
            for role, (n, k) in (("gate", (i, h)), ("up", (i, h)), ("down", (h, i))):
                packed, scales = quantize_mxint4(torch.randn(n, k, generator=gen) * k ** -0.5)
                if "mxint4" in formats:
                    t[names.tensor(layer, e, role, "weight_packed")] = int4_to_uint4b8(packed)
                    t[names.tensor(layer, e, role, "weight_scale")] = scales
                    t[names.tensor(layer, e, role, "weight_shape")] = torch.tensor([n, k], dtype=torch.int64)
                if "bf16" in formats:
                    t[names.tensor(layer, e, role, "weight")] = dequantize_mxint4(packed, scales).to(torch.bfloat16)
        layers[layer] = t
    return layers


def write_demo_checkpoint(directory, *, write_index: bool = True, **kwargs) -> Dict[str, torch.Tensor]:
    """Write :func:`demo_tensors` to ``directory`` (one shard per layer); returns every tensor."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    layers = demo_tensors(**kwargs)
    n = len(layers)
    weight_map, everything = {}, {}
    for k, (layer, tensors) in enumerate(sorted(layers.items())):
        shard = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        save_file(tensors, str(directory / shard), metadata={"format": "pt"})
        weight_map.update({name: shard for name in tensors})
        everything.update(tensors)
    if write_index:
        total = sum(t.numel() * t.element_size() for t in everything.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return everything


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cute_moe.demo_checkpoint",
                                description="Write a small synthetic MoE checkpoint (bf16 and/or "
                                            "mxint4 experts) as sharded safetensors.")
    p.add_argument("directory", type=Path)
    p.add_argument("--layers", type=int, default=2, help="MoE layers (default %(default)s)")
    p.add_argument("--experts", type=int, default=4, help="experts per layer (default %(default)s)")
    p.add_argument("--hidden", type=int, default=256, help="hidden size H (default %(default)s)")
    p.add_argument("--intermediate", type=int, default=256, help="intermediate size I (default %(default)s)")
    p.add_argument("--format", choices=("bf16", "mxint4", "both"), default="both",
                   help="expert tensor flavours to write (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    formats = FORMATS if a.format == "both" else (a.format,)
    tensors = write_demo_checkpoint(a.directory, num_layers=a.layers, num_experts=a.experts,
                                    hidden_size=a.hidden, intermediate_size=a.intermediate,
                                    formats=formats, generator=torch.Generator().manual_seed(a.seed))
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"wrote {len(tensors)} tensors ({size / 2**20:.1f} MiB, {'+'.join(formats)}) to {a.directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
