"""Sections `aug` and `data`: the two BYOL views of a batch (ours, kornia, torchvision v2) and the
images/s each training loader delivers with no model."""
from __future__ import annotations

import argparse
import time

import torch

from hw1 import data, distributed, loading
from hw1.byol import VIEW_PARAMS, blur_kernel, byol_view_transform
from hw1.gpu_aug import batch_views

from .common import rate, sync, timed_steps


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
