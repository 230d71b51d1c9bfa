"""Locate and load per-expert tensors of a sharded safetensors MoE checkpoint.

A checkpoint is a directory of ``*.safetensors`` shards, optionally with an index json
(``{"weight_map": {tensor_name: shard_file}}``). Expert tensors are found by a module-name
pattern with the fields ``{layer}``, ``{expert}`` and ``{proj}``, e.g.
``model.layers.{layer}.mlp.experts.{expert}.{proj}``; a tensor's name is the module name plus
a parameter suffix (``.weight``, ``.weight_packed``, ...).

Shapes and dtypes come from the shard headers alone, so a whole checkpoint can be checked
without reading its data; :meth:`ShardedCheckpoint.load` reads one tensor at a time.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

# safetensors header dtype strings -> torch dtypes (those a MoE checkpoint can hold).
_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}

PATTERN_FIELDS = ("layer", "expert", "proj")
DEFAULT_PATTERN = "model.layers.{layer}.mlp.experts.{expert}.{proj}"
DEFAULT_PROJ_NAMES = ("gate_proj", "up_proj", "down_proj")
PROJ_ROLES = ("gate", "up", "down")  # w1 (gate), w3 (up), w2 (down)


class CheckpointError(ValueError):
    """A checkpoint tensor is missing, unreadable or not what was expected; names it."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shard: Path
    shape: Tuple[int, ...]
    dtype: Optional[torch.dtype]  # None: a dtype torch has no name for here
    dtype_name: str  # as the header spells it, e.g. "BF16"

    def where(self) -> str:
        return f"tensor '{self.name}' in shard '{self.shard.name}'"


class ExpertNamePattern:
    """``pattern`` with ``{layer}``, ``{expert}``, ``{proj}``; ``proj_names`` = (gate, up, down)."""

    def __init__(self, pattern: str = DEFAULT_PATTERN, proj_names: Sequence[str] = DEFAULT_PROJ_NAMES):
        try:
            parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(pattern) if f is not None]
        except ValueError as e:
            raise ValueError(f"pattern {pattern!r}: {e}") from e
        fields = [f for f, _, _ in parsed]
        if sorted(fields) != sorted(PATTERN_FIELDS) or any(spec or conv for _, spec, conv in parsed):
            raise ValueError(f"pattern {pattern!r}: needs each of {{layer}}, {{expert}}, {{proj}} "
                             f"exactly once (plain, no format spec), found fields {fields}")
        if pattern.endswith(".weight"):
            raise ValueError(f"pattern {pattern!r}: give the module name; the parameter suffix "
                             "('.weight', '.weight_packed', ...) is appended per format")
        proj_names = tuple(proj_names)
        if len(proj_names) != 3 or len(set(proj_names)) != 3 or not all(proj_names):
            raise ValueError(f"proj names {proj_names}: need three distinct names (gate, up, down)")
        self.pattern = pattern
        self.proj_names = dict(zip(PROJ_ROLES, proj_names))
        parts = []
        for literal, field, _, _ in string.Formatter().parse(pattern):
            parts.append(re.escape(literal))
            if field == "proj":
                parts.append("(?P<proj>" + "|".join(re.escape(p) for p in proj_names) + ")")
            elif field is not None:
                parts.append(f"(?P<{field}>0|[1-9][0-9]*)")
        self._module_re = re.compile("".join(parts))

    def module(self, layer: int, expert: int, role: str) -> str:
        return self.pattern.format(layer=layer, expert=expert, proj=self.proj_names[role])

    def tensor(self, layer: int, expert: int, role: str, suffix: str) -> str:
        return f"{self.module(layer, expert, role)}.{suffix}"

    def scan(self, names: Iterable[str], suffix: str) -> Dict[int, Dict[int, set]]:
        """``{layer: {expert: {roles present}}}`` over the names ending in ``.suffix``."""
        roles = {v: k for k, v in self.proj_names.items()}
        found: Dict[int, Dict[int, set]] = {}
        tail = "." + suffix
        for name in names:
            if not name.endswith(tail):
                continue
            m = self._module_re.fullmatch(name[: -len(tail)])
            if m is None:
                continue
            experts = found.setdefault(int(m["layer"]), {})
            experts.setdefault(int(m["expert"]), set()).add(roles[m["proj"]])
        return found


class ShardedCheckpoint:
    """Tensor name -> shard map of a checkpoint directory; header reads and single-tensor loads."""

    def __init__(self, directory, index: Optional[Path] = None):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory '{self.directory}' does not exist")
        self._handles: Dict[Path, object] = {}
        self._headers: Dict[Path, Mapping[str, TensorInfo]] = {}
        self.index = Path(index) if index is not None else None
        self.name_to_shard = self._index_map() if self.index is not None else self._scan_map()

    # -- discovery -----------------------------------------------------------------------------

    def _index_map(self) -> Dict[str, Path]:
        try:
            weight_map = json.loads(self.index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"index '{self.index}': cannot read a 'weight_map' ({e})") from e
        base = self.index.parent
        out = {}
        for name, file in weight_map.items():
            shard = (base / file).resolve()
            if not shard.is_file():
                raise CheckpointError(f"tensor '{name}': its shard '{file}' named by index "
                                      f"'{self.index.name}' does not exist")
            out[name] = shard
        return out

    def _scan_map(self) -> Dict[str, Path]:
        shards = sorted(self.directory.glob("*.safetensors"))
        if not shards:
            raise CheckpointError(f"checkpoint directory '{self.directory}' has no *.safetensors shards")
        out: Dict[str, Path] = {}
        for shard in shards:
            for name in self._header(shard):
                if name in out:
                    raise CheckpointError(f"tensor '{name}' is in two shards: '{out[name].name}' "
                                          f"and '{shard.name}'")
                out[name] = shard.resolve()
        return out

    def _header(self, shard: Path) -> Mapping[str, TensorInfo]:
        header = self._headers.get(shard)
        if header is None:
            f = self._open(shard)
            header = {}
            for name in f.keys():
                s = f.get_slice(name)
                dt = s.get_dtype()
                header[name] = TensorInfo(name, shard, tuple(s.get_shape()), _DTYPES.get(dt), dt)
            self._headers[shard] = header
        return header

    def _open(self, shard: Path):
        f = self._handles.get(shard)
        if f is None:
            from safetensors import safe_open

            try:
                f = safe_open(str(shard), framework="pt", device="cpu")
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
                raise CheckpointError(f"shard '{shard.name}': not a readable safetensors file ({e})") from e
            self._handles[shard] = f
        return f

    # -- access --------------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self.name_to_shard

    def names(self) -> List[str]:
        return list(self.name_to_shard)

    def shard_of(self, name: str) -> Path:
        shard = self.name_to_shard.get(name)
        if shard is None:
            raise CheckpointError(f"tensor '{name}' not found in any shard of '{self.directory}'")
        return shard

    def info(self, name: str) -> TensorInfo:
        shard = self.shard_of(name)
        info = self._header(shard).get(name)
        if info is None:
            raise CheckpointError(f"tensor '{name}' is not in shard '{shard.name}' (named there by "
                                  f"index '{self.index.name if self.index else '-'}')")
        return info

    def load(self, name: str, device="cpu") -> torch.Tensor:
        """Read one tensor (only its bytes) and move it to ``device``."""
        info = self.info(name)
        try:
            t = self._open(info.shard).get_tensor(name)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{info.where()}: cannot be read ({e})") from e
        return t.to(device)

    def close(self) -> None:
        self._handles.clear()
        self._headers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
