"""Where this process runs: the device, the DDP process group (torchrun), seeds, and a sum across ranks."""
from __future__ import annotations

import os
import random
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from ..errors import UserError


@dataclass
class World:
    """Where this process sits in a (possibly one-process) distributed run."""

    rank: int = 0
    size: int = 1           # processes in the run
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.size > 1


def setup_device(name: str, local_rank: int = 0, *, exact: bool = False) -> torch.device:
    """`auto` → CUDA when present; `cuda` without a GPU is a user error, not a crash deep inside. `exact` (grading):
    true fp32 matmuls and convolutions (no TF32) and fixed cuDNN algorithms, so labels do not hang on a GPU's choice."""
    if name == "cpu":
        return torch.device("cpu")
    with warnings.catch_warnings(record=True) as caught:  # torch says why CUDA failed to start in a warning
        warnings.simplefilter("always")
        has_cuda = torch.cuda.is_available()
    if not has_cuda:
        unusable = _unusable_gpu(caught)
        if name == "cuda":
            raise UserError("--device cuda", *(unusable or ("CUDA was requested but no GPU is visible",
                                                            "use --device cpu or --device auto")))
        if unusable and local_rank == 0:  # a GPU the user expects to be used: a warning, on stderr
            print(f"warning: --device auto: {unusable[0]}; running on the CPU — {unusable[1]}", file=sys.stderr)
        elif local_rank == 0:  # on stdout: stderr is kept for errors and warnings about the user's input
            print("note: --device auto: no CUDA GPU is visible; running on the CPU")
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    torch.backends.cudnn.benchmark = not exact
    torch.backends.cuda.matmul.allow_tf32 = not exact
    torch.backends.cudnn.allow_tf32 = not exact
    return torch.device("cuda", local_rank)


def gpu_device_present() -> bool:
    """An NVIDIA GPU the kernel driver shows, whether or not this torch build can use it."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or any(Path("/dev").glob("nvidia[0-9]*"))


def _unusable_gpu(caught: list) -> tuple[str, str] | None:
    """(problem, fix) when a GPU is present but this CUDA build of torch cannot use its driver (too old a driver for
    the pinned torch's CUDA 13.0, say); None when there is simply no GPU or torch is a CPU build."""
    if torch.version.cuda is None or not gpu_device_present():
        return None
    said = next((str(w.message).splitlines()[0][:160] for w in caught if "CUDA" in str(w.message)), "")
    problem = f"a GPU is present, but this torch build (CUDA {torch.version.cuda}) cannot use its driver"
    return (f"{problem} ({said})" if said else problem,
            "use the course stack (requirements-course.txt: torch 2.4.0, CUDA 12.1, drivers 525.60 and newer), or "
            "install a torch build that matches the driver (nvidia-smi shows its CUDA version)")


def init_distributed(device_name: str) -> tuple[World, torch.device]:
    """Join the process group when started by torchrun (NCCL on GPU, gloo on CPU)."""
    env = {k: int(os.environ.get(k, default))
           for k, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"))}
    world = World(env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"])
    device = setup_device(device_name, world.local_rank)
    if world.enabled and not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return world, device


def cleanup_distributed() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def mix_seed(seed: int, a: int, b: int) -> int:
    """A seed for (seed, a, b), e.g. (seed, epoch, image) or (seed, rank, step): every derived seed is made here."""
    return ((seed * 1_000_003 + a) * 10_000_019 + b) % 2**63


def shuffle_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's shuffle."""
    return seed * 100_003 + epoch


def step_seed(seed: int, rank: int, step: int) -> int:
    """A seed that depends only on (seed, rank, step): what a rank draws at a step is the same after a resume."""
    return mix_seed(seed, rank, step)


def seed_step(seed: int, world: World, step: int) -> None:
    """Under DDP, reseed this rank's global stream for a step: every rank was seeded alike (identical initial
    weights), but dropout must draw other masks on each rank, and again the same ones after a resume."""
    if world.enabled:
        torch.manual_seed(step_seed(seed, world.rank, step))


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if torch_dist.is_initialized():
        torch_dist.all_reduce(t)
    return t
