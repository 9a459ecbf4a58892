"""What every benchmark section shares: device syncs, step timing, peak memory, generated images and
p1_pretrain's flags for a timed run."""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# ---------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """CUDA: the allocator's peak in the block. CPU: peak growth of resident memory, sampled every 5 ms."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.base = _rss()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss() - self.base)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self.thread.join()

    @property
    def gib(self) -> float:
        return self.peak / 2**30


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed_steps(step: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> list[float]:
    """Seconds per call of `step`, after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def rate(images: int, times: list[float]) -> float:
    return images / statistics.median(times)


# ---------------------------------------------------------------- data


def make_images(folder: Path, n: int, size: int, *, stem: str = "{c}_{i}", seed: int = 0) -> list[Path]:
    """n JPEGs of size x size with smooth colour structure and noise (JPEG decoding cost like photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        low = rng.uniform(0, 255, (3, 8, 8)).astype(np.float32)
        img = F.interpolate(torch.from_numpy(low)[None], size=(size, size), mode="bicubic", align_corners=False)[0]
        arr = (img.permute(1, 2, 0).numpy() + rng.normal(0, 12, (size, size, 3))).clip(0, 255).astype(np.uint8)
        path = folder / f"{stem.format(c=i % 64, i=i)}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths


def pretrain_args(cfg: argparse.Namespace, out: Path, *extra: str) -> argparse.Namespace:
    import p1_pretrain

    argv = ["--data-root", str(cfg.data_root), "--out", str(out), "--arch", cfg.arch,
            "--batch-size", str(cfg.batch_size), "--image-size", str(cfg.image_size), "--workers", str(cfg.workers),
            "--device", cfg.device_name,
            "--precision", cfg.precision,
            "--epochs", "1", "--max-steps", str(cfg.warmup + cfg.steps + 1), "--warmup-steps", "1",
            "--cache-dir", str(cfg.cache_dir), *extra]
    return p1_pretrain.get_args_parser().parse_args(argv)
