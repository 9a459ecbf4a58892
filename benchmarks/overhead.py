"""Section `overhead`: what an epoch costs besides its steps (the kNN monitor, checkpoint writes, the
loader's start-up), each before and after issue 12."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch

from hw1.data import folders
from hw1.p1.pretraining import KnnMonitor
from hw1.train import checkpoint, distributed, loading

from .common import make_images, sync


def bench_overhead(cfg: argparse.Namespace, device: torch.device, work: Path) -> dict[str, dict]:
    """Seconds an epoch spends besides its steps (see bench.py's docstring), each before and after issue 12."""
    rows: dict[str, dict] = {}
    images = monitor_data_path(cfg, device, work, rows)
    monitor_forward(cfg, device, images, rows)
    checkpoint_writes(cfg, device, rows)
    loader_start_up(cfg, device, rows)
    return rows


def monitor_features(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """The kNN monitor's pass over cached uint8 images at 128 px (`KnnMonitor.features`)."""
    monitor = KnnMonitor([], [], 128, 20, memory_format)
    return monitor.features(fn, images, torch.zeros(len(images), dtype=torch.long, device=images.device))[0]


def monitor_data_path(cfg: argparse.Namespace, device: torch.device, work: Path,
                      rows: dict[str, dict]) -> dict[str, torch.Tensor]:
    """The kNN monitor's images, before (JPEGs through fresh loader pools) and now (cached uint8 on the device);
    returns the cached sets."""
    from hw1.data import cache

    n_val = max(1, round(cfg.overhead_images * 406 / 4357))  # Office-Home's train / val split
    office = {split: make_images(work / "office" / split, n, 128, seed=7 + k)
              for k, (split, n) in enumerate((("train", cfg.overhead_images - n_val), ("val", n_val)))}
    pool = lambda x: x.float().mean((2, 3))  # noqa: E731 - a stand-in for the backbone: the data path alone

    tf = folders.classify_eval_transform(128)
    t = time.perf_counter()
    for paths in office.values():  # before: loading.extract_features over the JPEGs, a fresh pool each set
        dataset = folders.ImageListDataset(paths, [0] * len(paths), tf)
        loading.extract_features(pool, loading.in_order(dataset, workers=cfg.workers, device=device), device)
    rows["monitor data path, before: decode the JPEGs, 2 fresh loader pools"] = {"seconds": time.perf_counter() - t}
    caching = cache.CacheConfig(True, work / "cache", cfg.workers)
    t = time.perf_counter()
    images = {k: cache.decoded_images(caching, paths, f"office_{k}", distributed.World()).to(device)
              for k, paths in office.items()}
    rows["monitor set-up, once a run: build the cache, load it on the device"] = {"seconds": time.perf_counter() - t}
    sync(device)
    t = time.perf_counter()
    for x in images.values():
        monitor_features(pool, x)
    sync(device)
    rows["monitor data path, now: cached uint8 on the device, in-process"] = {"seconds": time.perf_counter() - t}
    return images


def monitor_forward(cfg: argparse.Namespace, device: torch.device, images: dict[str, torch.Tensor],
                    rows: dict[str, dict]) -> None:
    """The monitor backbone's FLOPs per evaluation; on CUDA also its forward over the cached sets."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build_resnet_features(cfg.arch).to(device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, 128, 128, device=device))
    gflop = counter.get_total_flops() / 1e9
    row = {"gflop_per_image": gflop, "gflop_per_evaluation": gflop * cfg.overhead_images}
    if device.type == "cuda":  # the monitor's forward itself, as the training process runs it
        net.eval()
        fmt = cfg.prec.memory_format
        with torch.no_grad(), cfg.prec.autocast():
            net = net.to(memory_format=fmt)
            monitor_features(net, images["val"], fmt)
            sync(device)
            t = time.perf_counter()
            for x in images.values():
                monitor_features(net, x, fmt)
            sync(device)
        row["seconds"] = time.perf_counter() - t
    rows[f"monitor forward: {cfg.arch} over {cfg.overhead_images} images at 128 px"] = row


def checkpoint_writes(cfg: argparse.Namespace, device: torch.device, rows: dict[str, dict]) -> None:
    """Writing last.pt (with AdamW's state) and backbone_last.pt of a BYOL --arch, on the output disk."""
    from hw1.p1.byol import build_byol

    model = build_byol(cfg.arch, 128, device)
    trained = [p for p in model.parameters() if p.requires_grad]  # not the target network, as in engine.fit
    opt = torch.optim.AdamW(trained, lr=1e-4, fused=device.type == "cuda")
    for p in trained:
        p.grad = torch.zeros_like(p)
    opt.step()  # AdamW's two moments exist from the first step on
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}
    for name, obj in (("last.pt", state), ("backbone_last.pt", model.net.state_dict())):
        path = Path(cfg.out) / f".overhead-{name}"  # the output disk, not a RAM-backed temp folder
        sync(device)
        t = time.perf_counter()
        checkpoint.save_checkpoint(path, obj)
        rows[f"write {name} ({cfg.arch} BYOL{', AdamW state' if name == 'last.pt' else ''})"] = {
            "seconds": time.perf_counter() - t, "gb": path.stat().st_size / 1e9}
        path.unlink()


def loader_start_up(cfg: argparse.Namespace, device: torch.device, rows: dict[str, dict]) -> None:
    """The training loader's first batch: fresh workers (every epoch before issue 12) and kept ones (now)."""
    from hw1.data import cache
    from hw1.p1.byol import TwoViews

    paths = folders.mini_paths(cfg.data_root)
    c_path = cache.ensure(paths, cfg.cache_dir, "mini_train", workers=cfg.workers)
    for name, dataset in (("(c) cache", cache.CachedImages(c_path)),
                          ("(b) TwoViews", folders.ImageListDataset(paths, transform=TwoViews(cfg.image_size)))):
        loader = loading.make_loader(dataset, cfg.batch_size, train=True, workers=cfg.workers, seed=0,
                                     world=distributed.World(), device=device)
        firsts = []
        for epoch in range(2):  # epoch 0 starts the workers, as every epoch did before; epoch 1 finds them kept
            loader.sampler.set_epoch(epoch)
            t = time.perf_counter()
            for k, _ in enumerate(loader):  # whole epochs: a kept pool is idle (not draining) when the next starts
                if k == 0:
                    firsts.append(time.perf_counter() - t)
        rows[f"loader start-up, {name}, {cfg.workers} workers: first batch"] = {
            "seconds": firsts[1], "before_s": firsts[0]}
        del loader


def build_resnet_features(arch: str) -> torch.nn.Module:
    """The backbone the monitor runs: a torchvision ResNet without `fc`."""
    from hw1.p1.models import build_resnet

    net = build_resnet(arch)
    net.fc = torch.nn.Identity()
    return net
