"""The decoded-image cache: an image list decoded once into a uint8 (N, H, W, 3) `.npy`, memory-mapped, and the
datasets the loaders read from it (`--cache`, `CacheConfig`), or the same items decoded from the files without it.

JPEG decoding is most of the CPU cost of an epoch; the cache pays it once. The file's name holds a
hash of (file list, sizes, mtimes, side), so a changed, added or removed image gives another name
and the cache is rebuilt; a sidecar JSON says what it holds. It is written to a temp file and
renamed, so a killed build leaves no half cache. At the images' own size (`side=None`, the
default) a cached image equals `PILToTensor(load_rgb(path))` exactly, so every transform sees the
same input with or without the cache.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as torch_dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import compat, io
from ..errors import WARNINGS, UserError
from ..train.distributed import World
from .folders import ImageListDataset, load_rgb

VERSION = 1
HEADROOM = 256 * 2**20  # keep this much disk free after the cache is written


def image_side(paths: Sequence[Path]) -> int:
    """The side a cache stores an image set at by default: the first readable image's larger side (its header only)."""
    for path in paths:
        try:
            with Image.open(path) as img:
                return max(img.size)
        except OSError:  # unreadable: decoding skips it too
            continue
    return max(load_rgb(paths[0]).size)  # none readable: the error names the first


def cache_key(paths: Sequence[Path], side: int) -> str:
    """A hash of the file list, each file's size and mtime, the side and the cache format."""
    h = hashlib.sha1(f"v{VERSION} side={side} n={len(paths)}\n".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cache_bytes(n: int, side: int) -> int:
    return n * side * side * 3 + 128


class Decode(Dataset):
    """Each image of `paths` decoded to a uint8 (side, side, 3) array (the cache's rows; `--no-cache` reads it too)."""

    def __init__(self, paths: Sequence[Path], side: int, skip_unreadable: bool = True) -> None:
        self.paths, self.side, self.skip_unreadable = paths, side, skip_unreadable

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        """An unreadable image is counted as a warning and the next readable one used in its place."""
        for offset in range(len(self.paths)):
            path = self.paths[(index + offset) % len(self.paths)]
            try:
                img = load_rgb(path)
                break
            except UserError as err:
                if not self.skip_unreadable:
                    raise
                WARNINGS.add("unreadable training image skipped (the next one used instead)", f"{path}: {err.problem}")
        else:
            raise UserError(self.paths[index].parent, "no image could be read", "check the image files")
        if img.size != (self.side, self.side):
            img = img.resize((self.side, self.side), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def build(paths: Sequence[Path], side: int, target: Path, *, workers: int = 0, desc: str = "decoding images",
          skip_unreadable: bool = True) -> None:
    """Decode `paths` at side x side into `target` (.npy), through a temp file renamed at the end."""
    _check_space(target.parent, cache_bytes(len(paths), side))
    with io.atomic_path(target) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), side, side, 3))
        decode_into(arr, paths, side, workers, desc, skip_unreadable)
        arr.flush()
        del arr


def decode_into(arr: np.ndarray, paths: Sequence[Path], side: int, workers: int, desc: str,
                skip_unreadable: bool) -> None:
    """Decode `paths` at side x side into the rows of `arr`, in `workers` loader processes, with a progress bar."""
    # Its own generator: decoding must not move the global RNG, or a run that builds a cache would
    # initialise its model differently from one that finds it built.
    loader = DataLoader(Decode(paths, side, skip_unreadable), batch_size=64, num_workers=workers,
                        collate_fn=lambda items: np.stack(items), generator=torch.Generator())
    i = 0
    with tqdm(total=len(paths), desc=desc, unit="img", dynamic_ncols=True) as bar:
        for batch in loader:
            arr[i:i + len(batch)] = batch
            i += len(batch)
            bar.update(len(batch))


def _check_space(folder: Path, need: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < need + HEADROOM:
        raise UserError(folder, f"not enough free disk for the decoded-image cache (needs {need / 2**30:.2f} GiB "
                        f"+ {HEADROOM / 2**30:.2f} GiB headroom, {free / 2**30:.2f} GiB free)",
                        "free some space, pass --cache-dir on a larger disk, or use --no-cache")


def fits(folder: Path, n: int, side: int) -> bool:
    """Whether a cache of n images at `side` fits (an existing folder or its nearest existing parent)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return os.access(probe, os.W_OK) and shutil.disk_usage(probe).free >= cache_bytes(n, side) + HEADROOM
    except OSError:
        return False


def locate(paths: Sequence[Path], cache_dir: str | os.PathLike, name: str,
           side: int | None) -> tuple[list[Path], int, Path]:
    """The image list, the side (default: the first image's) and the cache file, whose name holds `cache_key`."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise UserError(cache_dir, f"no images to cache for {name}", "check --data-root")
    side = side or image_side(paths)
    return paths, side, Path(cache_dir) / f"{name}-{side}px-{cache_key(paths, side)}.npy"


def build_file(target: Path, paths: Sequence[Path], name: str, side: int, workers: int, skip_unreadable: bool) -> None:
    """Delete the stale caches of `name`, decode `paths` into `target` and write its sidecar JSON."""
    for stale in target.parent.glob(f"{name}-*px-*.npy"):
        stale.unlink(missing_ok=True)
        stale.with_suffix(".json").unlink(missing_ok=True)
    build(paths, side, target, workers=workers, desc=f"caching {name} ({len(paths)} images, {side}px)",
          skip_unreadable=skip_unreadable)
    io.write_json(target.with_suffix(".json"), {
        "name": name, "key": target.stem.rsplit("-", 1)[1], "version": VERSION, "count": len(paths), "side": side,
        "shape": [len(paths), side, side, 3], "dtype": "uint8", "first": str(paths[0]), "last": str(paths[-1]),
    })


WAIT_S, WAIT_PER_IMAGE_S = 1800.0, 0.05  # how long rank 0 may take: half an hour, plus a slow disk's 20 images/s


def wait_for_build(target: Path, name: str, count: int, *, poll_s: float = 1.0, say_every_s: float = 60.0) -> None:
    """A rank other than 0 waits for rank 0's cache file (renamed into place when complete), saying so every
    minute, for as long as the build can take."""
    timeout = WAIT_S + WAIT_PER_IMAGE_S * count
    start = said = time.monotonic()
    while not target.is_file():
        now = time.monotonic()
        if now - start > timeout:
            raise UserError(target, f"rank 0 did not finish the decoded-image cache of {name} in {timeout / 60:.0f} "
                            "minutes", "see rank 0's output; or pass --no-cache, or a --cache-dir every node sees")
        if now - said >= say_every_s:
            print(f"note: waiting for rank 0 to build the decoded-image cache of {name} ({count} images) at "
                  f"{target}: {(now - start) / 60:.0f} min so far", flush=True)
            said = now
        time.sleep(poll_s)


# ---------------------------------------------------------------- the datasets the loaders read


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
        self.decode, self.transform = Decode(paths, side), transform
        self.labels = list(labels) if labels is not None else [-1] * len(paths)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(self.decode[index]).permute(2, 0, 1)
        return (self.transform(img) if self.transform else img), self.labels[index]


def ensure(paths: Sequence[Path], cache_dir: str | os.PathLike, name: str, *, side: int | None = None,
           workers: int = 0, skip_unreadable: bool = True) -> Path:
    """The cache file for `paths` at `side` (default: the first image's side), built if missing or stale."""
    paths, side, target = locate(paths, cache_dir, name, side)
    if not target.is_file():
        build_file(target, paths, name, side, workers, skip_unreadable)
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
    paths, side, target = locate(paths, cfg.folder, name, side)  # stats every file once
    use = cfg.use is True or target.is_file() or fits(cfg.folder, len(paths), side)
    if torch_dist.is_initialized():  # every rank must take the same branch, or the barrier below hangs
        decision = [use]
        torch_dist.broadcast_object_list(decision, src=0)
        use = decision[0]
    if not use:
        print(f"note: the decoded-image cache of {name} does not fit in {cfg.folder} (or it is not writable); "
              "reading the image files directly (pass --cache-dir to put it elsewhere)")
        return None
    if world.is_main and not target.is_file():
        build_file(target, paths, name, side, cfg.workers, skip_unreadable)
    if torch_dist.is_initialized() and not world.is_main:  # not at the barrier: NCCL's would time out after 10 minutes
        wait_for_build(target, name, len(paths))
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
    return cached if cached is not None else DecodedImages(paths, image_side(paths), labels)


def decoded_images(cfg: CacheConfig, paths: Sequence[Path], name: str, world: World) -> torch.Tensor:
    """Every image of `paths` in one uint8 (N, 3, side, side) tensor in memory: read from the cache when it is
    on (`cached_dataset`), else decoded here once. An unreadable image is an error (evaluation sets)."""
    cached = cached_dataset(cfg, paths, name, world, skip_unreadable=False)
    if cached is not None:
        arr = np.array(cached.array)
    else:
        side = image_side(paths)
        arr = np.empty((len(paths), side, side, 3), dtype=np.uint8)
        decode_into(arr, paths, side, cfg.workers, f"decoding {name} ({len(paths)} images)",
                               skip_unreadable=False)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
