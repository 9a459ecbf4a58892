"""Sections `aug`, `data` and `loaders`: the two BYOL views of a batch (ours, kornia, torchvision v2), the
images/s each pre-training loader delivers with no model, and those of fine-tuning and segmentation."""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from hw1.data import folders
from hw1.data.gpu_aug import BatchView, batch_views
from hw1.data.recipes import BYOL_VIEWS, FINETUNE_VIEW, IMAGENET_MEAN, IMAGENET_STD, ViewRecipe
from hw1.p1.byol import byol_view_transform
from hw1.train import distributed, loading

from .common import make_images, rate, sync, timed_steps


def bench_aug(cfg: argparse.Namespace, device: torch.device) -> list[dict]:
    """The two views of one uint8 batch on the device: our ops, kornia (where installed: the course's stack has
    none), torchvision v2 (batch and per image)."""
    try:
        import kornia.augmentation as K
    except ImportError:
        K = None
    s, b = cfg.image_size, cfg.batch_size
    x = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, device=device)
    ours = batch_views(s, seed=0, memory_format=cfg.prec.memory_format)

    def kornia_view(r: ViewRecipe) -> "K.AugmentationSequential":
        return K.AugmentationSequential(
            K.RandomResizedCrop((s, s), scale=r.scale, ratio=r.ratio, cropping_mode="resample"),
            K.RandomHorizontalFlip(), K.ColorJitter(*r.jitter, p=r.jitter_p), K.RandomGrayscale(p=r.gray_p),
            K.RandomGaussianBlur((r.blur_kernel(s),) * 2, r.sigma, p=r.blur_p),
            K.RandomSolarize(thresholds=0.0, additions=0.0, p=r.solarize_p),
            K.Normalize(torch.tensor(IMAGENET_MEAN, device=device), torch.tensor(IMAGENET_STD, device=device)))

    tv = [byol_view_transform(s, r) for r in BYOL_VIEWS]
    impls = {"ours (hw1.data.gpu_aug)": ("per image", lambda: [v(x) for v in ours])}
    if K is not None:
        kv = [kornia_view(r) for r in BYOL_VIEWS]
        impls["kornia.augmentation"] = ("per image, but one jitter order per batch",
                                        lambda: [k(x.float() / 255) for k in kv])
    impls["torchvision v2 on the batch"] = ("NO: one draw for the whole batch", lambda: [t(x) for t in tv])
    impls["torchvision v2 per image"] = ("per image (a Python loop)",
                                         lambda: [torch.stack([t(i) for i in x]) for t in tv])
    rows = []
    for name, (per_image, fn) in impls.items():
        times = timed_steps(fn, device, max(1, cfg.warmup // 2), max(3, cfg.steps // 4))
        rows.append({"row": f"aug: {name}", "images_per_s": rate(b, times), "per_image_params": per_image})
    if K is None:
        rows[0]["kornia"] = "not installed, not compared"
    return rows


def bench_data(cfg: argparse.Namespace, device: torch.device) -> list[dict]:
    """Images/s the loaders deliver with no model: (b) TwoViews in the workers; (c) the cache, and + views."""
    from hw1.data import cache
    from hw1.p1.byol import TwoViews

    world = distributed.World()
    paths = folders.mini_paths(cfg.data_root)
    n_batches = cfg.warmup + cfg.steps
    rows = []
    b_set = folders.ImageListDataset(paths, transform=TwoViews(cfg.image_size))
    c_path = cache.ensure(paths, cfg.cache_dir, "mini_train", workers=cfg.workers)
    c_set = cache.CachedImages(c_path)
    views = batch_views(cfg.image_size, seed=0, memory_format=cfg.prec.memory_format)
    for name, dataset, augment in (("data-b: loader, TwoViews per image (CPU path)", b_set, False),
                                   ("data-c: cache loader only", c_set, False),
                                   ("data-c: cache loader + batched views on the device", c_set, True)):
        loader = loading.make_loader(dataset, cfg.batch_size, train=True, workers=cfg.workers, seed=0, world=world,
                                     device=device)
        it = iter(loader)
        times = []
        for k in range(min(n_batches, len(loader))):
            sync(device)
            t = time.perf_counter()
            images = loading.to_device(next(it)[0], device)
            if augment:
                for v in views:
                    v(images)
            sync(device)
            if k >= 1:  # the first batch waits for the workers to start
                times.append(time.perf_counter() - t)
        del it
        rows.append({"row": name, "images_per_s": rate(cfg.batch_size, times) if times else float("nan")})
    return rows


def bench_loaders(cfg: argparse.Namespace, device: torch.device, work: Path) -> list[dict]:
    """Images/s the fine-tuning loader (decoded-image cache + the classification transform in the workers; or, as
    --gpu-aug has it, cached uint8 batches and the batched view on `device`) and the segmentation loader (512 px
    JPEG + PNG mask, joint flips) feed, with no model, at `--workers`: is the loader what a fast GPU would wait for?"""
    from hw1.data import cache
    from hw1.p2.data import SatMaskDataset, collate, find_pairs, write_mask

    world = distributed.World()
    paths = folders.mini_paths(cfg.data_root)
    cached = cache.ensure(paths, cfg.cache_dir, "mini_train", workers=cfg.workers)
    finetune_set = cache.CachedImages(cached, [0] * len(paths), folders.classify_train_transform(cfg.image_size))
    uint8_set = cache.CachedImages(cached, [0] * len(paths))
    view = BatchView(cfg.image_size, FINETUNE_VIEW, torch.Generator().manual_seed(0), cfg.prec.memory_format)
    seg_dir = work / "p2_train"
    if not seg_dir.is_dir():
        sats = make_images(seg_dir, 32, 512, stem="{i:04d}_sat")
        rng = np.random.default_rng(0)
        for sat in sats:  # blocky class maps: PNG decoding like the course's masks
            blocks = rng.integers(0, 7, (16, 16))
            write_mask(sat.with_name(sat.name.replace("_sat.jpg", "_mask.png")), blocks.repeat(32, 0).repeat(32, 1))
    seg_set = SatMaskDataset(find_pairs(seg_dir, need_masks=True), 512, augment="flip")
    ft_batch = min(128, len(finetune_set) // 3)  # the recipe's batch, or 3 batches of --quick's few images
    rows = []
    for name, dataset, batch, collate_fn, on_device in (
            (f"loader-ft: fine-tuning, cache + crop/flip/jitter in the workers at {cfg.image_size} px", finetune_set,
             ft_batch, None, None),
            ("loader-ft-uint8: fine-tuning --gpu-aug, cached uint8 batches only", uint8_set, ft_batch, None, None),
            (f"loader-ft-gpu-aug: fine-tuning --gpu-aug, uint8 batches + the batched view on {device.type}", uint8_set,
             ft_batch, None, lambda b: view(loading.to_device(b[0], device))),
            ("loader-seg: segmentation, 512 px JPEG + mask, joint flips", seg_set, 8, collate, None)):
        loader = loading.make_loader(dataset, batch, train=True, workers=cfg.workers, seed=0, world=world,
                                     device=device, collate_fn=collate_fn)
        times, t = [], time.perf_counter()
        for k, b in enumerate(_epochs(loader)):  # a small set is read again, epoch after epoch, as training does
            if on_device is not None:
                on_device(b)
                sync(device)
            if k >= 1:  # the first batch waits for the workers to start
                times.append(time.perf_counter() - t)
            t = time.perf_counter()
            if k >= cfg.warmup + cfg.steps:
                break
        rows.append({"row": name, "images_per_s": rate(batch, times) if times else float("nan"),
                     "workers": cfg.workers})
    return rows


def _epochs(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    """The loader's batches, one epoch after another."""
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        yield from loader
