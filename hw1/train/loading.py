"""The resumable data path: the epoch sampler, per-sample seeding, loader workers and their signals, batches to
the device, and feature extraction over a dataset."""
from __future__ import annotations

import atexit
import math
import multiprocessing.util  # noqa: F401 - its exit handler must be registered before ours
import random
import signal
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from tqdm import tqdm

from ..errors import UserError
from .checkpoint import rng_state, set_rng_state
from .distributed import World, mix_seed, shuffle_seed
from .precision import Precision


def to_device(batch: Any, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format) -> Any:
    """Move a (nested) batch; 4-D float images take `memory_format` (the model's: `Precision.memory_format`)."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if memory_format != torch.contiguous_format and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=memory_format)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device, memory_format) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, memory_format) for k, v in batch.items()}
    return batch


class EpochSampler(Sampler):
    """Shuffles by (seed, epoch), splits the global batch across ranks, and can start mid-epoch.

    It yields `(index, sample_seed)` pairs; `Seeded` turns the seed into the sample's own RNG
    state, so an image's augmentation depends only on (seed, epoch, index): the same with any
    number of workers or ranks and after a resume.
    """

    def __init__(self, size: int, batch_size: int, *, shuffle: bool, seed: int, world: World, drop_last: bool) -> None:
        if batch_size % world.size:
            raise UserError("--batch-size", f"{batch_size} does not split across {world.size} processes",
                            "use a multiple of the process count")
        self.size, self.global_batch, self.shuffle, self.seed, self.world = size, batch_size, shuffle, seed, world
        self.local_batch = batch_size // world.size
        self.drop_last = drop_last and size >= batch_size
        empty = [r for r in range(world.size) if not _split(list(range(size)), World(r, world.size))]
        if drop_last and not self.drop_last and size and empty:  # raised on every rank alike, before any collective
            # a rank without a batch would never reach DDP's all-reduce, and the others would wait for it forever
            raise UserError("--batch-size", f"the training set's {size} images fill less than one global batch of "
                            f"{batch_size}; split across {world.size} processes, rank {empty[0]} gets none",
                            "train on more images, or with fewer processes")
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        return self.size // self.global_batch if self.drop_last else math.ceil(self.size / self.global_batch)

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        g = torch.Generator().manual_seed(shuffle_seed(self.seed, self.epoch))
        return torch.randperm(self.size, generator=g)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order().tolist()
        n = self.batches_per_epoch()
        for b in range(self.start_batch, n):
            chunk = order[b * self.global_batch:(b + 1) * self.global_batch]
            mine = chunk[self.world.rank::self.world.size] if self.drop_last else _split(chunk, self.world)
            yield from ((i, mix_seed(self.seed, self.epoch, i)) for i in mine)

    def __len__(self) -> int:
        n = self.batches_per_epoch() - self.start_batch
        return max(n, 0) * self.local_batch


def _split(chunk: list[int], world: World) -> list[int]:
    per = math.ceil(len(chunk) / world.size)
    return chunk[world.rank * per:(world.rank + 1) * per]


class Seeded(Dataset):
    """Seeds torch/random/numpy from the sampler's per-sample seed before reading an item."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        in_main = get_worker_info() is None  # --workers 0: leave the training process's RNG streams as they were
        saved = rng_state() if in_main else None
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return self.dataset[index]
        finally:
            if saved is not None:
                set_rng_state(saved)


@atexit.register  # registered after multiprocessing's exit handler (imported above), so it runs first
def _kill_leftover_loader_workers() -> None:
    """At exit multiprocessing terminates daemonic children (SIGTERM), then joins them. Loader workers ignore
    SIGTERM (below), and an error raised in one leaves its iterator alive in the traceback, so that join
    would wait forever: kill such leftovers first."""
    leftovers = [proc for proc in multiprocessing.active_children() if proc.daemon]
    if leftovers:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would raise "worker killed" in here
        for proc in leftovers:
            proc.kill()
        for proc in leftovers:
            proc.join(timeout=5)


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGINT/SIGTERM to the training process, which checkpoints before it stops
    (a Ctrl-C or a scheduler's SIGTERM reaches the whole process group)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, workers: int, seed: int, world: World,
                device: torch.device, collate_fn: Callable | None = None) -> DataLoader:
    """A loader whose sampler is an `EpochSampler`; `batch_size` is the global batch.

    Its workers live across epochs: the sampler runs in this process and hands each worker
    `(index, sample_seed)` keys, so a kept worker still sees each epoch's order and seeds. Its own
    generator (for the workers' base seeds, which `Seeded` overrides) keeps starting an epoch off
    the global RNG, so a fresh loader after a resume draws nothing a kept one would not.
    """
    sampler = EpochSampler(len(dataset), batch_size, shuffle=train, seed=seed, world=world,  # type: ignore[arg-type]
                           drop_last=train)
    return DataLoader(
        Seeded(dataset), batch_size=sampler.local_batch, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=False, persistent_workers=workers > 0,
        collate_fn=collate_fn, prefetch_factor=4 if workers > 0 else None, generator=torch.Generator(),
        worker_init_fn=_ignore_stop_signals if workers > 0 else None,
    )


def in_order(dataset: Dataset, batch_size: int = 256, workers: int = 0,
             device: torch.device | None = None) -> DataLoader:
    """An evaluation loader: the dataset's batches in order, each read once."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                      pin_memory=device is not None and device.type == "cuda",
                      worker_init_fn=_ignore_stop_signals if workers > 0 else None)


@torch.no_grad()
def extract_features(fn: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[torch.Tensor, Any]],
                     device: torch.device, *, prec: Precision | None = None, desc: str | None = "features",
                     memory_format: torch.memory_format | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `fn` over (images, labels) batches (`in_order`'s, or tensors already on `device`) under `prec` (default
    fp32), images in `memory_format` (default the precision's); returns (features, labels) on `device`."""
    prec = prec or Precision("fp32", device.type)
    memory_format = memory_format or prec.memory_format
    feats, labels = [], []
    # leave=False: the bar is cleared before an error's one line
    with tqdm(batches, desc=desc, leave=False, dynamic_ncols=True, disable=desc is None) as bar:
        for images, targets in bar:
            with prec.autocast():
                feats.append(fn(to_device(images, device, memory_format)).float())
            labels.append(torch.as_tensor(targets).to(device))
    return torch.cat(feats), torch.cat(labels)
