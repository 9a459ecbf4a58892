"""Run a training script the way a gpu_check step needs (benchmarks/gpu_check.sh):

    torchrun --standalone --nproc_per_node 1 benchmarks/launch.py --ddp p1_pretrain.py ARGS...
    python benchmarks/launch.py --compile-backend eager p1_pretrain.py ARGS... --compile

--ddp: a DDP run even with one process. The scripts skip the process group when there is one process
(`World.enabled` is false), so one GPU would never reach NCCL; here the rank joins one (NCCL on CUDA, gloo on the
CPU), trains through DDP, the cache barrier and the reductions, and prints the backend.
--compile-backend: what --compile's torch.compile uses (the CPU check: eager, as bench.py --quick; inductor's C++
code generation takes minutes on two cores).
"""
from __future__ import annotations

import os
import sys

# The repository, in place of this script's folder: a module there could shadow the standard library
# (benchmarks/ssl.py once did).
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import functools  # noqa: E402
import runpy  # noqa: E402

import torch  # noqa: E402
import torch.distributed as torch_dist  # noqa: E402

from hw1.train import distributed  # noqa: E402


def one_rank_ddp() -> None:
    init = distributed.init_distributed

    def init_distributed(device_name: str) -> tuple[distributed.World, torch.device]:
        world, device = init(device_name)
        print(f"one-rank DDP: backend {torch_dist.get_backend()}, world size {torch_dist.get_world_size()}",
              flush=True)
        return world, device

    distributed.World.enabled = property(lambda self: True)  # type: ignore[assignment]
    distributed.init_distributed = init_distributed


if __name__ == "__main__":
    argv = sys.argv[1:]
    while argv and argv[0].startswith("--"):
        option = argv.pop(0)
        if option == "--ddp":
            one_rank_ddp()
        elif option == "--compile-backend":
            torch.compile = functools.partial(torch.compile, backend=argv.pop(0))  # type: ignore[assignment]
        else:
            sys.exit(f"error: benchmarks/launch.py: unknown option {option} — use --ddp or --compile-backend NAME")
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")
