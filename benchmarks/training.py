"""Sections `a`, `b`, `c`, `c-compile`, `mfu` and `profile`: BYOL training steps (byol-pytorch's and this
project's, through engine.fit), the FLOPs of one step, and a torch.profiler view of one."""
from __future__ import annotations

import argparse
import contextlib
import functools
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from hw1.data import folders
from hw1.data.gpu_aug import batch_views
from hw1.train import config, distributed, engine

from . import byol_reference
from .common import PeakMemory, pretrain_args, rate, sync, timed_steps


def bench_byol_pytorch(cfg: argparse.Namespace, device: torch.device) -> dict:
    """(a) byol-pytorch's README (`byol_reference`), Adam 3e-4, fp32, fed by a PIL loader."""
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2 as T

    tf = T.Compose([T.PILToTensor(), T.Resize((cfg.image_size, cfg.image_size), antialias=True),
                    T.ToDtype(torch.float32, scale=True)])
    dataset = folders.ImageListDataset(folders.mini_paths(cfg.data_root), transform=tf)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                        pin_memory=device.type == "cuda", drop_last=True)
    with PeakMemory(device) as mem:
        learner = byol_reference.build(cfg.arch, cfg.image_size, device)
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
            task, loader = p1_pretrain.setup(args, distributed.World(), device)
            task.evaluate, task.on_save, task.keep_first = None, None, False
            cfg_train = config.TrainConfig.from_args(args)
            with step_times(task, device, watch_syncs_from=cfg.warmup + 1) as stamps:
                t0 = time.perf_counter()
                history = engine.fit(cfg_train, task, loader, distributed.World(), device)
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

    from hw1.p1.byol import build_byol

    fmt = cfg.prec.memory_format
    model = build_byol(cfg.arch, cfg.image_size, device, augment_fns=batch_views(cfg.image_size, memory_format=fmt),
                       memory_format=fmt)
    x = torch.randint(0, 256, (cfg.batch_size, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8, device=device)
    with FlopCounterMode(display=False) as counter, cfg.prec.autocast():
        loss = model(x)
        loss.backward()
    return counter.get_total_flops() / cfg.batch_size



def profile_step(cfg: argparse.Namespace, device: torch.device) -> dict:
    """torch.profiler over one step of (c): top ops, and the step's share in each phase."""
    from torch.profiler import ProfilerActivity, profile, record_function, schedule

    import p1_pretrain

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with tempfile.TemporaryDirectory() as out:
        args = pretrain_args(cfg, Path(out), "--gpu-aug", "--cache")
        args.max_steps = 4  # steps 0, 1 wait, 2 warms the profiler up, 3 is recorded
        task, loader = p1_pretrain.setup(args, distributed.World(), device)
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
            engine.fit(config.TrainConfig.from_args(args), task, loader, distributed.World(), device)
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
