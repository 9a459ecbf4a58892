"""Throughput of BYOL pre-training and segmentation, every row in ONE run on one device.

Rows (images/s: median over timed steps after warm-up, the device synchronised around each;
peak memory: CUDA's allocator peak, on CPU the growth of the process's resident memory):
  aug       the two BYOL views of a batch: our batched ops vs kornia vs torchvision v2
  data-b    the CPU path's loader alone (decode + TwoViews per sample in the workers)
  data-c    the cache loader alone, and with the batched views on the device (no model)
  a         byol-pytorch as its README shows: PIL loader of plain images, its default batch
            augmentation (one draw for the whole batch), fp32, Adam, update_moving_average()
  b         this project's step (engine.fit, p1_pretrain.setup) with the CPU augmentation path
  c         the same step with the decoded-image cache and the batched views on the device
  c+compile (c) with --compile
  mfu       model-FLOPs utilisation of (c): FLOPs of one step counted by FlopCounterMode
  seg-*     FCN32s and DeepLabV3-ResNet101 training and inference images/s at --seg-size
  hw1_2.sh  wall time of `bash hw1_2.sh` on --hw12-images generated images, start-up included
  profile   torch.profiler of one step of (c): top ops; share of data, forward (augment), backward,
            optimiser, EMA
  overhead  what an epoch costs besides its steps, at the reference sizes: the kNN monitor's data path
            (before: decode --overhead-images JPEGs in two fresh loader pools; now: cached uint8,
            in-process), writing last.pt and backbone_last.pt of a BYOL --arch state, and the training
            loader's start-up (fresh workers, as every epoch paid before, vs kept workers)

Rows (b), (c) and c+compile also give engine.fit's own split of the run's wall time (log.csv's
columns): step_s (optimiser steps, data wait included), data_wait_s, eval_s, checkpoint_s.

    python bench.py --out runs/bench                 # full sizes (on an H100: the GPU rows)
    python bench.py --quick --out runs/bench_quick   # CPU, tiny sizes, < 60 s (tests/test_speed.py)

Writes OUT/bench.json and OUT/bench.md.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hw1 import checkpoint, data, distributed, engine, io, loading, precision
from hw1.byol import VIEW_PARAMS, blur_kernel, byol_view_transform
from hw1.gpu_aug import batch_views

ROOT = Path(__file__).resolve().parent
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 (datasheet; sparse is twice)
SECTIONS = ("aug", "data", "a", "b", "c", "c-compile", "mfu", "seg", "hw12", "profile", "overhead")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench", help="bench.json and bench.md go here (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="CPU, tiny sizes, every section, < 60 s")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    precision.add_arg(parser)
    parser.add_argument("--arch", default="resnet50", help="BYOL backbone (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="default: %(default)s")
    parser.add_argument("--image-size", type=int, default=128, help="default: %(default)s")
    parser.add_argument("--images", type=int, default=None,
                        help="generated training images (default: enough for warm-up + timed steps)")
    parser.add_argument("--data-root", default=None, help="time on this hw1_data's Mini-ImageNet instead of generated images")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="default: %(default)s")
    parser.add_argument("--seg-size", type=int, default=512, help="default: %(default)s")
    parser.add_argument("--seg-batch", type=int, default=16, help="default: %(default)s")
    parser.add_argument("--seg-archs", nargs="+", default=["fcn32s", "deeplabv3_resnet101"])
    parser.add_argument("--seg-train-archs", nargs="*", default=None,
                        help="which of --seg-archs also get a training row (default: all; --quick: not FCN32s, whose "
                             "CPU backward alone takes ~10 s at 64 px)")
    parser.add_argument("--seg-steps", type=int, default=5, help="timed segmentation steps (default: %(default)s)")
    parser.add_argument("--seg-warmup", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--hw12-images", type=int, default=257, help="default: %(default)s")
    parser.add_argument("--overhead-images", type=int, default=4357,
                        help="Office-Home-sized monitor set of the overhead section, 128 px (default: %(default)s, "
                             "train + val)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak for MFU (default: known for H100/H200/A100, else n/a)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the c+compile row (default: %(default)s; --quick: eager, "
                             "which traces the model with dynamo but skips inductor's minutes of C++ codegen on a CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; --quick: 1)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="default: all")
    return parser


QUICK = dict(device="cpu", arch="resnet18", batch_size=8, image_size=32, steps=3, warmup=1, workers=0,
             seg_size=64, seg_batch=2, seg_archs=["fcn32s", "deeplabv3_mobilenet_v3_large"],
             seg_train_archs=["deeplabv3_mobilenet_v3_large"], seg_steps=1, seg_warmup=0, hw12_images=2, compile_backend="eager", threads=1,
             overhead_images=64)


# ---------------------------------------------------------------- timing helpers


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

    argv = ["--data-root", str(cfg.data_root), "--out", str(out), "--arch", cfg.arch, "--batch-size", str(cfg.batch_size),
            "--image-size", str(cfg.image_size), "--workers", str(cfg.workers), "--device", cfg.device_name,
            "--precision", cfg.precision,
            "--epochs", "1", "--max-steps", str(cfg.warmup + cfg.steps + 1), "--warmup-steps", "1",
            "--cache-dir", str(cfg.cache_dir), *extra]
    return p1_pretrain.get_args_parser().parse_args(argv)


# ---------------------------------------------------------------- sections


def bench_aug(cfg: argparse.Namespace, device: torch.device) -> list[dict]:
    """The two views of one uint8 batch on the device: our ops, kornia, torchvision v2 (batch and per image)."""
    import kornia.augmentation as K

    s, b = cfg.image_size, cfg.batch_size
    x = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, device=device)
    ours = batch_views(s, seed=0, memory_format=cfg.prec.memory_format)

    def kornia_view(blur_p: float, solarize_p: float) -> K.AugmentationSequential:
        return K.AugmentationSequential(
            K.RandomResizedCrop((s, s), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), cropping_mode="resample"),
            K.RandomHorizontalFlip(), K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8), K.RandomGrayscale(p=0.2),
            K.RandomGaussianBlur((blur_kernel(s),) * 2, (0.1, 2.0), p=blur_p),
            K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p),
            K.Normalize(torch.tensor(data.IMAGENET_MEAN, device=device), torch.tensor(data.IMAGENET_STD, device=device)))

    kv = [kornia_view(**p) for p in VIEW_PARAMS]
    tv = [byol_view_transform(s, **p) for p in VIEW_PARAMS]
    impls = {
        "ours (hw1.gpu_aug)": ("per image", lambda: [v(x) for v in ours]),
        "kornia.augmentation": ("per image, but one jitter order per batch", lambda: [k(x.float() / 255) for k in kv]),
        "torchvision v2 on the batch": ("NO: one draw for the whole batch", lambda: [t(x) for t in tv]),
        "torchvision v2 per image": ("per image (a Python loop)", lambda: [torch.stack([t(i) for i in x]) for t in tv]),
    }
    rows = []
    for name, (per_image, fn) in impls.items():
        times = timed_steps(fn, device, max(1, cfg.warmup // 2), max(3, cfg.steps // 4))
        rows.append({"row": f"aug: {name}", "images_per_s": rate(b, times), "per_image_params": per_image})
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


def bench_byol_pytorch(cfg: argparse.Namespace, device: torch.device) -> dict:
    """(a) byol-pytorch's README: BYOL(resnet, image_size, hidden_layer='avgpool'), Adam 3e-4, fp32."""
    import torchvision
    from byol_pytorch import BYOL
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2 as T

    tf = T.Compose([T.PILToTensor(), T.Resize((cfg.image_size, cfg.image_size), antialias=True),
                    T.ToDtype(torch.float32, scale=True)])
    dataset = data.ImageListDataset(data.mini_paths(cfg.data_root), transform=tf)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                        pin_memory=device.type == "cuda", drop_last=True)
    resnet = getattr(torchvision.models, cfg.arch)(weights=None).to(device)
    with PeakMemory(device) as mem:
        learner = BYOL(resnet, image_size=cfg.image_size, hidden_layer="avgpool")
        opt = torch.optim.Adam(learner.parameters(), lr=3e-4)
        batches = iter(loader)

        def step() -> None:
            images = next(batches)[0].to(device, non_blocking=True)
            loss = learner(images)
            opt.zero_grad()
            loss.backward()
            opt.step()
            learner.update_moving_average()

        times = timed_steps(step, device, cfg.warmup, cfg.steps)
    return {"row": "a: byol-pytorch README (PIL loader, batch-wide augmentation, fp32)",
            "images_per_s": rate(cfg.batch_size, times), "peak_mem_gib": mem.gib}


@contextlib.contextmanager
def step_times(task: engine.Task, device: torch.device, watch_syncs_from: int | None = None) -> Iterator[list[float]]:
    """Wrap `task.after_step` (it runs once per optimiser step, after the EMA) to stamp the time.

    On CUDA with `watch_syncs_from`, torch's sync debug mode warns at every implicit host-device
    sync from that step on (our own timing sync is excluded).
    """
    stamps: list[float] = []
    inner = task.after_step
    watch = device.type == "cuda" and watch_syncs_from is not None

    def stamp(step: int) -> None:
        if inner:
            inner(step)
        if watch:
            torch.cuda.set_sync_debug_mode(0)
        sync(device)
        stamps.append(time.perf_counter())
        if watch and len(stamps) >= watch_syncs_from:
            torch.cuda.set_sync_debug_mode("warn")

    task.after_step = stamp
    try:
        yield stamps
    finally:
        if watch:
            torch.cuda.set_sync_debug_mode(0)


def bench_step(cfg: argparse.Namespace, device: torch.device, name: str, *flags: str) -> dict:
    """Rows (b), (c): p1_pretrain's own task and loader through engine.fit, timed between steps."""
    import p1_pretrain

    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = pretrain_args(cfg, Path(out), *flags)
        distributed.seed_everything(0)
        with PeakMemory(device) as mem:
            task, loader = p1_pretrain.setup(args, distributed.Dist(), device)
            task.evaluate, task.on_save, task.keep_first = None, None, False
            with step_times(task, device, watch_syncs_from=cfg.warmup + 1) as stamps:
                t0 = time.perf_counter()
                history = engine.fit(args, task, loader, distributed.Dist(), device)
        first = stamps[0] - t0
        times = list(np.diff(stamps))[cfg.warmup:]
    row = {"row": name, "images_per_s": rate(cfg.batch_size, times), "peak_mem_gib": mem.gib, "first_step_s": first,
           **{k: history[-1][k] for k in ("step_s", "data_wait_s", "eval_s", "checkpoint_s")}}
    if device.type == "cuda":  # the loop itself reads the loss back every 20 steps and at the last one
        row["implicit_syncs_in_timed_steps"] = sum("synchroniz" in str(w.message) for w in caught)
    return row


@contextlib.contextmanager
def compile_backend(name: str) -> Iterator[None]:
    """engine.fit calls torch.compile(model) with the default backend (inductor); swap it for this row only."""
    if name == "inductor":
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend=name)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = original  # type: ignore[assignment]


def count_step_flops(cfg: argparse.Namespace, device: torch.device) -> float:
    """FLOPs of one BYOL training step of (c) (forward + backward), counted by FlopCounterMode, per image."""
    from torch.utils.flop_counter import FlopCounterMode

    from hw1.byol import build_byol

    fmt = cfg.prec.memory_format
    model = build_byol(cfg.arch, cfg.image_size, device, augment_fns=batch_views(cfg.image_size, memory_format=fmt),
                       memory_format=fmt)
    x = torch.randint(0, 256, (cfg.batch_size, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8, device=device)
    with FlopCounterMode(display=False) as counter, cfg.prec.autocast():
        loss = model(x)
        loss.backward()
    return counter.get_total_flops() / cfg.batch_size


def bench_seg(cfg: argparse.Namespace, device: torch.device) -> list[dict]:
    """Training step (AdamW, cross-entropy, --precision) and inference images/s of each P2 model."""
    from hw1.seg_models import build_seg_model

    rows = []
    for arch in cfg.seg_archs:
        model = build_seg_model(arch, "none").to(device, memory_format=cfg.prec.memory_format)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        x = torch.randn(cfg.seg_batch, 3, cfg.seg_size, cfg.seg_size, device=device).contiguous(memory_format=cfg.prec.memory_format)
        y = torch.randint(0, 7, (cfg.seg_batch, cfg.seg_size, cfg.seg_size), device=device)
        scaler = cfg.prec.grad_scaler()  # as engine.fit: a pass-through unless fp16

        def train_step() -> None:
            with cfg.prec.autocast():
                loss = F.cross_entropy(model(x)["out"].float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        @torch.no_grad()
        def infer_step() -> None:
            with cfg.prec.autocast():
                model(x)["out"].argmax(1)

        if cfg.seg_train_archs is None or arch in cfg.seg_train_archs:
            model.train()
            with PeakMemory(device) as mem:
                times = timed_steps(train_step, device, cfg.seg_warmup, cfg.seg_steps)
            rows.append({"row": f"seg train: {arch} {cfg.seg_size}px", "images_per_s": rate(cfg.seg_batch, times),
                         "peak_mem_gib": mem.gib})
        model.eval()
        with PeakMemory(device) as mem:
            times = timed_steps(infer_step, device, cfg.seg_warmup, cfg.seg_steps)
        rows.append({"row": f"seg inference: {arch} {cfg.seg_size}px", "images_per_s": rate(cfg.seg_batch, times), "peak_mem_gib": mem.gib})
        del model, opt
    return rows


def bench_hw12(cfg: argparse.Namespace, device: torch.device, work: Path) -> dict:
    """Wall time of `bash hw1_2.sh IMAGES OUT` on generated 512x512 images with a random-weight checkpoint."""
    from hw1.seg_models import build_seg_model

    arch = cfg.seg_archs[-1]
    images = work / "hw12_images"
    make_images(images, cfg.hw12_images, 512, stem="{i:04d}_sat", seed=1)
    ckpt = work / "p2_random.pt"
    meta = {"task": "segment", "arch": arch, "num_classes": 7, "image_size": cfg.seg_size}
    checkpoint.save_checkpoint(ckpt, {"model": build_seg_model(arch, "none").state_dict(), "meta": meta})
    env = {**os.environ, "P2_CHECKPOINT": str(ckpt)}
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    out = work / "hw12_masks"
    t = time.perf_counter()
    proc = subprocess.run(["bash", str(ROOT / "hw1_2.sh"), str(images), str(out)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    written = len(list(out.glob("*_mask.png"))) if out.is_dir() else 0
    row = {"row": f"hw1_2.sh: {cfg.hw12_images} images 512x512 ({arch} at {cfg.seg_size}px, start-up included)", "wall_s": wall,
           "images_per_s": cfg.hw12_images / wall, "masks_written": written, "exit_code": proc.returncode}
    if proc.returncode:
        row["error"] = proc.stderr.strip().splitlines()[-1:] or ["?"]
    return row


def profile_step(cfg: argparse.Namespace, device: torch.device) -> dict:
    """torch.profiler over one step of (c): top ops, and the step's share in each phase."""
    import p1_pretrain
    from torch.profiler import ProfilerActivity, profile, record_function, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with tempfile.TemporaryDirectory() as out:
        args = pretrain_args(cfg, Path(out), "--gpu-aug", "--cache")
        args.max_steps = 4  # steps 0, 1 wait, 2 warms the profiler up, 3 is recorded
        task, loader = p1_pretrain.setup(args, distributed.Dist(), device)
        task.evaluate, task.on_save, task.keep_first = None, None, False
        forward, ema = task.loss_fn, task.after_step

        def loss_fn(m: torch.nn.Module, batch: Any) -> torch.Tensor:
            with record_function("phase: forward"):
                return forward(m, batch)

        prof = profile(activities=activities, schedule=schedule(wait=2, warmup=1, active=1, repeat=1))

        def after_step(step: int) -> None:
            with record_function("phase: ema"):
                ema(step)
            sync(device)
            prof.step()

        task.loss_fn, task.after_step = loss_fn, after_step
        with prof:
            engine.fit(args, task, loader, distributed.Dist(), device)
    events = prof.key_averages()
    on_gpu = device.type == "cuda"

    def total(pred: Callable[[str], bool]) -> float:
        return sum((e.device_time_total if on_gpu else e.cpu_time_total) for e in events if pred(e.key)) / 1e3

    phases = {
        "data": total(lambda k: k.startswith("enumerate(DataLoader)")),
        "forward (incl. augment)": total(lambda k: k == "phase: forward"),
        "augment (part of forward)": total(lambda k: k.startswith("augment: ")),
        "backward": total(lambda k: k.startswith("autograd::engine::evaluate_function")),
        "optimiser": total(lambda k: k.startswith("Optimizer.")),
        "ema": total(lambda k: k == "phase: ema"),
    }
    key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    top = sorted((e for e in events if not e.key.startswith(("phase:", "augment:", "ProfilerStep"))),
                 key=lambda e: getattr(e, key), reverse=True)[:12]
    return {"clock": "device time" if on_gpu else "CPU time", "phases_ms": phases,
            "top_ops": [{"op": e.key, "ms": getattr(e, key) / 1e3, "calls": e.count} for e in top]}


def bench_overhead(cfg: argparse.Namespace, device: torch.device, work: Path) -> dict[str, dict]:
    """Seconds an epoch spends besides its steps (see the module docstring), each before and after issue 12."""
    import p1_pretrain
    from hw1 import cache
    from hw1.byol import TwoViews, build_byol

    rows: dict[str, dict] = {}
    n_val = max(1, round(cfg.overhead_images * 406 / 4357))  # Office-Home's train / val split
    office = {split: make_images(work / "office" / split, n, 128, seed=7 + k)
              for k, (split, n) in enumerate((("train", cfg.overhead_images - n_val), ("val", n_val)))}
    pool = lambda x: x.float().mean((2, 3))  # noqa: E731 - a stand-in for the backbone: the data path alone

    tf = data.classify_eval_transform(128)
    t = time.perf_counter()
    for paths in office.values():  # before: loading.extract_features over the JPEGs, a fresh pool each set
        loading.extract_features(pool, data.ImageListDataset(paths, [0] * len(paths), tf), device, workers=cfg.workers)
    rows["monitor data path, before: decode the JPEGs, 2 fresh loader pools"] = {"seconds": time.perf_counter() - t}
    args = argparse.Namespace(cache=True, cache_dir=str(work / "cache"), data_root=str(work), workers=cfg.workers)
    t = time.perf_counter()
    images = {k: cache.decoded_images(args, paths, f"office_{k}").to(device) for k, paths in office.items()}
    rows["monitor set-up, once a run: build the cache, load it on the device"] = {"seconds": time.perf_counter() - t}
    sync(device)
    t = time.perf_counter()
    for x in images.values():
        p1_pretrain.features(pool, x, 128)
    sync(device)
    rows["monitor data path, now: cached uint8 on the device, in-process"] = {"seconds": time.perf_counter() - t}

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
            p1_pretrain.features(net, images["val"], 128, memory_format=fmt)
            sync(device)
            t = time.perf_counter()
            for x in images.values():
                p1_pretrain.features(net, x, 128, memory_format=fmt)
            sync(device)
        row["seconds"] = time.perf_counter() - t
    rows[f"monitor forward: {cfg.arch} over {cfg.overhead_images} images at 128 px"] = row

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
    del model, opt, state

    paths = data.mini_paths(cfg.data_root)
    c_path = cache.ensure(paths, cfg.cache_dir, "mini_train", workers=cfg.workers)
    for name, dataset in (("(c) cache", cache.CachedImages(c_path)),
                          ("(b) TwoViews", data.ImageListDataset(paths, transform=TwoViews(cfg.image_size)))):
        loader = loading.make_loader(dataset, cfg.batch_size, train=True, workers=cfg.workers, seed=0,
                                     dist=distributed.Dist(), device=device)
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
    return rows


def build_resnet_features(arch: str) -> torch.nn.Module:
    """The backbone the monitor runs: a torchvision ResNet without `fc`."""
    from hw1.models import build_resnet

    net = build_resnet(arch)
    net.fc = torch.nn.Identity()
    return net


# ---------------------------------------------------------------- report


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:,.{digits}f}"
    return str(v)


def markdown(result: dict) -> str:
    env = result["env"]
    lines = [f"# bench.py — {env['date']}", "",
             f"device: {env['device']} · torch {env['torch']} · {env['cpus']} CPUs · command: `{env['command']}`",
             f"config: {env['config']}", "",
             "| row | images/s | peak memory (GiB) | notes |", "|---|---|---|---|"]
    for r in result["rows"]:
        notes = [f"{k}={fmt(v, 2)}" for k, v in r.items() if k not in ("row", "images_per_s", "peak_mem_gib")]
        lines.append(f"| {r['row']} | {fmt(r.get('images_per_s'))} | {fmt(r.get('peak_mem_gib'), 2)} | {'; '.join(notes)} |")
    if result.get("mfu"):
        m = result["mfu"]
        lines += ["", f"MFU of (c): {fmt(m['gflop_per_image'], 2)} GFLOP per image (FlopCounterMode, forward + backward), "
                  f"peak {fmt(m['peak_tflops'])} TFLOP/s → compile off {fmt(m.get('c'), 3)}, compile on {fmt(m.get('c+compile'), 3)}"]
    if result.get("ratios"):
        lines += ["", "ratios: " + ", ".join(f"{k} = {fmt(v, 2)}" for k, v in result["ratios"].items())]
    if result.get("profile"):
        p = result["profile"]
        step = sum(v for k, v in p["phases_ms"].items() if not k.startswith("augment"))
        lines += ["", f"profile of one step of (c) ({p['clock']}, ms; share of the listed phases):", "",
                  "| phase | ms | share |", "|---|---|---|"]
        lines += [f"| {k} | {v:.1f} | {v / step:.0%} |" for k, v in p["phases_ms"].items()]
        lines += ["", "| top op | ms (self) | calls |", "|---|---|---|"]
        lines += [f"| `{o['op']}` | {o['ms']:.1f} | {o['calls']} |" for o in p["top_ops"]]
    if result.get("overhead"):
        lines += ["", "per-epoch overhead (seconds; `before_s`: what every epoch paid before issue 12):", "",
                  "| cost | seconds | notes |", "|---|---|---|"]
        lines += [f"| {k} | {fmt(v.get('seconds'), 3)} | {'; '.join(f'{n}={fmt(x, 3)}' for n, x in v.items() if n != 'seconds')} |"
                  for k, v in result["overhead"].items()]
    if result.get("section_seconds"):
        lines += ["", "seconds per section: " + ", ".join(f"{k} {v}" for k, v in result["section_seconds"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = get_args_parser()
    cfg = parser.parse_args(argv)
    if cfg.quick:
        parser.set_defaults(**QUICK)
        cfg = parser.parse_args(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = distributed.setup_device(cfg.device)
    cfg.device_name = device.type
    cfg.prec = precision.resolve(cfg.precision, device)
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    result: dict = {"rows": []}
    try:
        if cfg.data_root is None:
            n = cfg.images or cfg.batch_size * (cfg.warmup + cfg.steps + 2)
            make_images(work / "hw1_data" / "p1_data" / "mini" / "train", n, cfg.image_size if cfg.quick else 128)
            cfg.data_root = work / "hw1_data"
        cfg.cache_dir = work / "cache"
        rows, sections = result["rows"], set(cfg.sections)
        seconds = result["section_seconds"] = {}
        clock = [time.perf_counter()]

        def lap(name: str) -> None:
            now = time.perf_counter()
            seconds[name] = round(now - clock[0], 1)
            clock[0] = now

        lap("setup")

        def attempt(name: str, fn: Callable[[], Any]) -> Any:
            """Run one section; an error becomes an error row, so a long GPU run keeps its other numbers."""
            if name not in sections:
                return None
            try:
                return fn()
            except Exception as err:  # noqa: BLE001 - reported in the table and the JSON
                rows.append({"row": f"{name}: failed", "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"})
                return None
            finally:
                lap(name)

        def add_rows(name: str, fn: Callable[[], Any]) -> None:
            got = attempt(name, fn)
            rows.extend(got if isinstance(got, list) else [got] if got else [])

        add_rows("aug", lambda: bench_aug(cfg, device))
        add_rows("data", lambda: bench_data(cfg, device))
        add_rows("a", lambda: bench_byol_pytorch(cfg, device))
        add_rows("b", lambda: bench_step(cfg, device, "b: this project's step, CPU augmentation (TwoViews in the loader)",
                                         "--no-gpu-aug", "--no-cache"))
        add_rows("c", lambda: bench_step(cfg, device, "c: cache + batched views on the device", "--gpu-aug", "--cache"))
        with compile_backend(cfg.compile_backend):
            add_rows("c-compile", lambda: bench_step(cfg, device, f"c+compile: (c) with --compile (backend {cfg.compile_backend})",
                                                     "--gpu-aug", "--cache", "--compile"))
        flops = attempt("mfu", lambda: count_step_flops(cfg, device))
        if flops:
            peak = cfg.peak_tflops or next((v for k, v in PEAK_TFLOPS.items()
                                            if device.type == "cuda" and k in torch.cuda.get_device_name(device)), None)
            c_rates = {k: r["images_per_s"] for r in rows for k in ("c", "c+compile") if r["row"].startswith(k + ":")}
            result["mfu"] = {"gflop_per_image": flops / 1e9, "peak_tflops": peak,
                             **{k: (flops * v / (peak * 1e12) if peak else None) for k, v in c_rates.items()}}
        add_rows("seg", lambda: bench_seg(cfg, device))
        add_rows("hw12", lambda: bench_hw12(cfg, device, work))
        result["profile"] = attempt("profile", lambda: profile_step(cfg, device))
        result["overhead"] = attempt("overhead", lambda: bench_overhead(cfg, device, work))
        by = {r["row"].split(":")[0]: r.get("images_per_s") for r in rows}
        result["ratios"] = {k: v for k, v in {
            "c / a": _div(by.get("c"), by.get("a")), "c+compile / a": _div(by.get("c+compile"), by.get("a")),
            "c / b": _div(by.get("c"), by.get("b")),
            "data-c (+ views) / c": _div(next((r["images_per_s"] for r in rows if r["row"].startswith("data-c: cache loader +")), None), by.get("c")),
            "data-b / b": _div(by.get("data-b"), by.get("b")),
        }.items() if v is not None}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["env"] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({cpu_name()})",
        "torch": torch.__version__, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(), "command": "python bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items() if k not in ("out", "prec")},
        "precision": cfg.prec.describe(),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    out = Path(cfg.out)
    io.write_json(out / "bench.json", result)
    io.write_text(out / "bench.md", markdown(result))
    print(markdown(result))
    return result


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


if __name__ == "__main__":
    main()
