"""The decoded-image cache as the loaders see it (`--cache`, `CacheConfig`): the cached dataset when the cache is on,
else the same items decoded from the files. The cache file itself (its name, format and builder) is `cache_file.py`.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.utils.data import Dataset

from . import cache_file, compat
from .data import ImageListDataset
from .distributed import World
from .errors import UserError


def add_cache_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", action=compat.BooleanOptionalAction, default=None,
                        help="decode the images once into a memory-mapped uint8 cache (default: on when it fits on "
                             "disk)")
    parser.add_argument("--cache-dir", default=None, help="where the cache lives (default: DATA_ROOT/.cache)")


class CachedImages(Dataset):
    """(uint8 CHW tensor, label) from a cache file, opened lazily in each worker; `transform` as for PIL input.

    torchvision v2 transforms treat the tensor as an image (`PILToTensor` passes it through), so
    the same transform gives the same result on a cached image as on the decoded file.
    """

    def __init__(self, path: str | os.PathLike, labels: Sequence[int] | None = None,
                 transform: Callable | None = None) -> None:
        self.path, self.transform = Path(path), transform
        self._arr: np.ndarray | None = None
        n = len(self.array)
        self.labels = list(labels) if labels is not None else [-1] * n
        if len(self.labels) != n:
            raise UserError(self.path, f"cache holds {n} images but {len(self.labels)} labels were given",
                            "delete the cache file; it is rebuilt on the next run")
        self._arr = None  # reopen in each worker process

    @property
    def array(self) -> np.ndarray:
        if self._arr is None:
            self._arr = np.load(self.path, mmap_mode="r")
        return self._arr

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(np.array(self.array[index])).permute(2, 0, 1)
        return (self.transform(img) if self.transform else img), self.labels[index]


class DecodedImages(Dataset):
    """The same items as `CachedImages`, decoded from the files on every access (the `--no-cache` path)."""

    def __init__(self, paths: Sequence[Path], side: int, labels: Sequence[int] | None = None,
                 transform: Callable | None = None) -> None:
        self.decode, self.transform = cache_file.Decode(paths, side), transform
        self.labels = list(labels) if labels is not None else [-1] * len(paths)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(self.decode[index]).permute(2, 0, 1)
        return (self.transform(img) if self.transform else img), self.labels[index]


def ensure(paths: Sequence[Path], cache_dir: str | os.PathLike, name: str, *, side: int | None = None,
           workers: int = 0, skip_unreadable: bool = True) -> Path:
    """The cache file for `paths` at `side` (default: the first image's side), built if missing or stale."""
    paths, side, target = cache_file.locate(paths, cache_dir, name, side)
    if not target.is_file():
        cache_file.build_file(target, paths, name, side, workers, skip_unreadable)
    return target


@dataclass(frozen=True)
class CacheConfig:
    """--cache, --cache-dir and --workers (the processes that decode)."""

    use: bool | None    # True: always; False: never; None: when it exists or fits on disk
    folder: Path
    workers: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CacheConfig:
        folder = Path(args.cache_dir) if args.cache_dir else Path(args.data_root) / ".cache"
        return cls(args.cache, folder, args.workers)


def cached_dataset(cfg: CacheConfig, paths: Sequence[Path], name: str, world: World, *,
                   labels: Sequence[int] | None = None, transform: Callable | None = None, side: int | None = None,
                   skip_unreadable: bool = True) -> CachedImages | None:
    """`CachedImages` when the cache is on (or auto, and the cache exists or fits on disk); else None.

    Rank 0 builds the cache; the other ranks wait for its file.
    """
    if cfg.use is False:
        return None
    paths, side, target = cache_file.locate(paths, cfg.folder, name, side)  # stats every file once
    use = cfg.use is True or target.is_file() or cache_file.fits(cfg.folder, len(paths), side)
    if torch_dist.is_initialized():  # every rank must take the same branch, or the barrier below hangs
        decision = [use]
        torch_dist.broadcast_object_list(decision, src=0)
        use = decision[0]
    if not use:
        print(f"note: the decoded-image cache of {name} does not fit in {cfg.folder} (or it is not writable); "
              "reading the image files directly (pass --cache-dir to put it elsewhere)")
        return None
    if world.is_main and not target.is_file():
        cache_file.build_file(target, paths, name, side, cfg.workers, skip_unreadable)
    if torch_dist.is_initialized() and not world.is_main:  # not at the barrier: NCCL's would time out after 10 minutes
        cache_file.wait_for_build(target, name, len(paths))
    if world.enabled:
        torch_dist.barrier()
    return CachedImages(target, labels, transform)


def maybe_cached(cfg: CacheConfig, dataset: ImageListDataset, name: str, world: World) -> Dataset:
    """`dataset` (its paths, labels and transform) read from the cache when the cache is on, else as it is."""
    cached = cached_dataset(cfg, dataset.paths, name, world, labels=dataset.labels, transform=dataset.transform,
                            skip_unreadable=dataset.skip_unreadable)
    return cached if cached is not None else dataset


def uint8_images(cfg: CacheConfig, paths: Sequence[Path], name: str, world: World, *,
                 labels: Sequence[int] | None = None) -> CachedImages | DecodedImages:
    """(uint8 CHW image, label) items for the batched device augmentation (`--gpu-aug`): from the cache when it is
    on, else decoded from the files on each access (at the same side, so both give the same batches)."""
    cached = cached_dataset(cfg, paths, name, world, labels=labels)
    return cached if cached is not None else DecodedImages(paths, cache_file.image_side(paths), labels)


def decoded_images(cfg: CacheConfig, paths: Sequence[Path], name: str, world: World) -> torch.Tensor:
    """Every image of `paths` in one uint8 (N, 3, side, side) tensor in memory: read from the cache when it is
    on (`cached_dataset`), else decoded here once. An unreadable image is an error (evaluation sets)."""
    cached = cached_dataset(cfg, paths, name, world, skip_unreadable=False)
    if cached is not None:
        arr = np.array(cached.array)
    else:
        side = cache_file.image_side(paths)
        arr = np.empty((len(paths), side, side, 3), dtype=np.uint8)
        cache_file.decode_into(arr, paths, side, cfg.workers, f"decoding {name} ({len(paths)} images)",
                               skip_unreadable=False)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
