"""``cute-moe-demo``: the library's main job on whatever machine it runs on.

With an SM90 / SM100 / SM120 GPU: the fused-MoE benchmark on the Qwen3-30B-A3B shape
(cute_moe vs the byte and FLOP floors and a torch._grouped_mm pipeline). Without one: says that
the kernels need such a GPU, then runs the CPU side of the library — writes a small synthetic
MoE checkpoint, converts it to the prepared MXINT4 and bf16 layouts and verifies both bit for bit.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def cpu_demo(workdir: Path) -> int:
    from ..demo_checkpoint import main as write_checkpoint
    from .convert_weights import main as convert

    ckpt = workdir / "demo_checkpoint"
    status = write_checkpoint([str(ckpt)])
    for fmt in ("mxint4", "bf16"):
        if status:
            break
        status = convert([str(ckpt), str(workdir / f"prepared_{fmt}"), "--format", fmt, "--verify"])
    return status


def main(argv=None) -> int:
    from ..kernels.runtime import gpu_available

    if gpu_available():
        from .bench import main as bench

        return bench(["--preset", "qwen3-30b-a3b", "--tokens", "1,8,64,512,4096",
                      "--out", "cute_moe_bench.jsonl", *(argv or [])])
    print("cute-moe-demo: no NVIDIA GPU of SM90 (Hopper), SM100 or SM120 (Blackwell) is visible, so the "
          "fused-MoE kernels cannot run here. Running the CPU side instead: synthetic checkpoint -> "
          "prepared layouts -> bit-exact verification.", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="cute_moe_demo_") as tmp:
        return cpu_demo(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
