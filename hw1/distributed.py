"""Where this process runs: the device, the DDP process group (torchrun), seeds, and a sum across ranks."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist

from .errors import UserError


@dataclass
class Dist:
    """Where this process sits in a (possibly one-process) distributed run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_device(name: str, local_rank: int = 0, *, exact: bool = False) -> torch.device:
    """`auto` → CUDA when present; `cuda` without a GPU is a user error, not a crash deep inside. `exact` (grading):
    true fp32 matmuls and convolutions (no TF32) and fixed cuDNN algorithms, so labels do not hang on a GPU's choice."""
    has_cuda = torch.cuda.is_available()
    if name == "cuda" and not has_cuda:
        raise UserError("--device cuda", "CUDA was requested but no GPU is visible", "use --device cpu or --device auto")
    if name == "auto" and not has_cuda:
        if local_rank == 0:  # on stdout: stderr is kept for errors and warnings about the user's input
            print("note: --device auto: no CUDA GPU is visible; running on the CPU")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    torch.backends.cudnn.benchmark = not exact
    torch.backends.cuda.matmul.allow_tf32 = not exact
    torch.backends.cudnn.allow_tf32 = not exact
    return torch.device("cuda", local_rank)


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the process group when started by torchrun (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = setup_device(device_name, dist.local_rank)
    if dist.enabled and not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return dist, device


def cleanup_distributed() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if torch_dist.is_initialized():
        torch_dist.all_reduce(t)
    return t
