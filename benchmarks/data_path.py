"""Sections `aug`, `data` and `loaders`: the two BYOL views of a batch (ours, kornia, torchvision v2), the
images/s each pre-training loader delivers with no model, and those of fine-tuning and segmentation."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from hw1 import data, distributed, loading
from hw1.byol import VIEW_PARAMS, blur_kernel, byol_view_transform
from hw1.gpu_aug import batch_views

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

    def kornia_view(blur_p: float, solarize_p: float) -> "K.AugmentationSequential":
        return K.AugmentationSequential(
            K.RandomResizedCrop((s, s), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), cropping_mode="resample"),
            K.RandomHorizontalFlip(), K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8), K.RandomGrayscale(p=0.2),
            K.RandomGaussianBlur((blur_kernel(s),) * 2, (0.1, 2.0), p=blur_p),
            K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p),
            K.Normalize(torch.tensor(data.IMAGENET_MEAN, device=device), torch.tensor(data.IMAGENET_STD, device=device)))

    tv = [byol_view_transform(s, **p) for p in VIEW_PARAMS]
    impls = {"ours (hw1.gpu_aug)": ("per image", lambda: [v(x) for v in ours])}
    if K is not None:
        kv = [kornia_view(**p) for p in VIEW_PARAMS]
        impls["kornia.augmentation"] = ("per image, but one jitter order per batch",
                                        lambda: [k(x.float() / 255) for k in kv])
    impls["torchvision v2 on the batch"] = ("NO: one draw for the whole batch", lambda: [t(x) for t in tv])
    impls["torchvision v2 per image"] = ("per image (a Python loop)", lambda: [torch.stack([t(i) for i in x]) for t in tv])
    rows = []
    for name, (per_image, fn) in impls.items():
        times = timed_steps(fn, device, max(1, cfg.warmup // 2), max(3, cfg.steps // 4))
        rows.append({"row": f"aug: {name}", "images_per_s": rate(b, times), "per_image_params": per_image})
    if K is None:
        rows[0]["kornia"] = "not installed, not compared"
    return rows


def bench_data(cfg: argparse.Namespace, device: torch.device) -> list[dict]:
    """Images/s the loaders deliver with no model: (b) TwoViews in the workers; (c) the cache, and + views."""
    from hw1 import cache
    from hw1.byol import TwoViews

    dist = distributed.Dist()
    paths = data.mini_paths(cfg.data_root)
    n_batches = cfg.warmup + cfg.steps
    rows = []
    b_set = data.ImageListDataset(paths, transform=TwoViews(cfg.image_size))
    c_path = cache.ensure(paths, cfg.cache_dir, "mini_train", workers=cfg.workers)
    c_set = cache.CachedImages(c_path)
    views = batch_views(cfg.image_size, seed=0, memory_format=cfg.prec.memory_format)
    for name, dataset, augment in (("data-b: loader, TwoViews per image (CPU path)", b_set, False),
                                   ("data-c: cache loader only", c_set, False),
                                   ("data-c: cache loader + batched views on the device", c_set, True)):
        loader = loading.make_loader(dataset, cfg.batch_size, train=True, workers=cfg.workers, seed=0, dist=dist, device=device)
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
    """Images/s the fine-tuning loader (decoded-image cache + the classification transform) and the segmentation
    loader (512 px JPEG + PNG mask, joint flips) feed, with no model, at `--workers`: is the loader what a fast GPU
    would wait for?"""
    from hw1 import cache
    from hw1.seg_data import SatMaskDataset, collate, find_pairs, write_mask

    dist = distributed.Dist()
    paths = data.mini_paths(cfg.data_root)
    finetune_set = cache.CachedImages(cache.ensure(paths, cfg.cache_dir, "mini_train", workers=cfg.workers),
                                      [0] * len(paths), data.classify_train_transform(cfg.image_size))
    seg_dir = work / "p2_train"
    if not seg_dir.is_dir():
        sats = make_images(seg_dir, 32, 512, stem="{i:04d}_sat")
        rng = np.random.default_rng(0)
        for sat in sats:  # blocky class maps: PNG decoding like the course's masks
            blocks = rng.integers(0, 7, (16, 16))
            write_mask(sat.with_name(sat.name.replace("_sat.jpg", "_mask.png")), blocks.repeat(32, 0).repeat(32, 1))
    seg_set = SatMaskDataset(find_pairs(seg_dir, need_masks=True), 512, augment="flip")
    rows = []
    for name, dataset, batch, collate_fn in (
            (f"loader-ft: fine-tuning, cache + crop/flip at {cfg.image_size} px", finetune_set,
             min(128, len(finetune_set) // 3), None),  # the recipe's batch, or 3 batches of --quick's few images
            ("loader-seg: segmentation, 512 px JPEG + mask, joint flips", seg_set, 8, collate)):
        loader = loading.make_loader(dataset, batch, train=True, workers=cfg.workers, seed=0, dist=dist, device=device,
                                     collate_fn=collate_fn)
        times, t = [], time.perf_counter()
        for k, _ in enumerate(loader):
            if k >= 1:  # the first batch waits for the workers to start
                times.append(time.perf_counter() - t)
            t = time.perf_counter()
            if k >= cfg.warmup + cfg.steps:
                break
        rows.append({"row": name, "images_per_s": rate(batch, times) if times else float("nan"),
                     "workers": cfg.workers})
    return rows
