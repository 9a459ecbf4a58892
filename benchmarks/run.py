"""The sections in their order, each timed and an error row when it fails; then MFU, ratios and the
environment a result was measured in."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .common import make_images
from .data_path import bench_aug, bench_data, bench_loaders
from .overhead import bench_overhead
from .segmentation import bench_hw12, bench_seg
from .training import bench_byol_pytorch, bench_step, compile_backend, count_step_flops, profile_step

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 (datasheet; sparse is twice)


class Sections:
    """Runs the chosen sections, each timed into `seconds`."""

    def __init__(self, chosen: list[str], rows: list[dict], seconds: dict[str, float]) -> None:
        self.chosen, self.rows, self.seconds = set(chosen), rows, seconds
        self.clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.clock, 1)
        self.clock = now

    def attempt(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one section; an error becomes an error row, so a long GPU run keeps its other numbers."""
        if name not in self.chosen:
            return None
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - reported in the table and the JSON
            self.rows.append({"row": f"{name}: failed",
                              "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"})
            return None
        finally:
            self.lap(name)

    def add_rows(self, name: str, fn: Callable[[], Any]) -> None:
        got = self.attempt(name, fn)
        self.rows.extend(got if isinstance(got, list) else [got] if got else [])


def run_sections(cfg: argparse.Namespace, device: torch.device, work: Path) -> dict:
    """Every chosen section in one run on `device`, generated data under `work`; returns the result so far."""
    result: dict = {"rows": []}
    if cfg.data_root is None:
        n = cfg.images or cfg.batch_size * (cfg.warmup + cfg.steps + 2)
        make_images(work / "hw1_data" / "p1_data" / "mini" / "train", n, cfg.image_size if cfg.quick else 128)
        cfg.data_root = work / "hw1_data"
    cfg.cache_dir = work / "cache"
    rows = result["rows"]
    sections = Sections(cfg.sections, rows, result.setdefault("section_seconds", {}))
    sections.lap("setup")
    sections.add_rows("aug", lambda: bench_aug(cfg, device))
    sections.add_rows("data", lambda: bench_data(cfg, device))
    sections.add_rows("loaders", lambda: bench_loaders(cfg, device, work))
    sections.add_rows("a", lambda: bench_byol_pytorch(cfg, device))
    sections.add_rows("b", lambda: bench_step(cfg, device,
                                              "b: this project's step, CPU augmentation (TwoViews in the loader)",
                                              "--no-gpu-aug", "--no-cache"))
    sections.add_rows("c", lambda: bench_step(cfg, device, "c: cache + batched views on the device",
                                              "--gpu-aug", "--cache"))
    with compile_backend(cfg.compile_backend):
        sections.add_rows("c-compile", lambda: bench_step(cfg, device,
                                                          "c+compile: (c) with --compile "
                                                          f"(backend {cfg.compile_backend})",
                                                          "--gpu-aug", "--cache", "--compile"))
    flops = sections.attempt("mfu", lambda: count_step_flops(cfg, device))
    if flops:
        result["mfu"] = mfu(cfg, device, flops, rows)
    sections.add_rows("seg", lambda: bench_seg(cfg, device))
    sections.add_rows("hw12", lambda: bench_hw12(cfg, device, work))
    result["profile"] = sections.attempt("profile", lambda: profile_step(cfg, device))
    result["overhead"] = sections.attempt("overhead", lambda: bench_overhead(cfg, device, work))
    result["ratios"] = ratios(rows)
    return result


def mfu(cfg: argparse.Namespace, device: torch.device, flops: float, rows: list[dict]) -> dict:
    """Model-FLOPs utilisation of rows (c) and c+compile against the device's dense bf16 peak."""
    peak = cfg.peak_tflops or next((v for k, v in PEAK_TFLOPS.items()
                                    if device.type == "cuda" and k in torch.cuda.get_device_name(device)), None)
    c_rates = {k: r["images_per_s"] for r in rows for k in ("c", "c+compile") if r["row"].startswith(k + ":")}
    return {"gflop_per_image": flops / 1e9, "peak_tflops": peak,
            **{k: (flops * v / (peak * 1e12) if peak else None) for k, v in c_rates.items()}}


def ratios(rows: list[dict]) -> dict[str, float]:
    by = {r["row"].split(":")[0]: r.get("images_per_s") for r in rows}
    return {k: v for k, v in {
        "c / a": _div(by.get("c"), by.get("a")), "c+compile / a": _div(by.get("c+compile"), by.get("a")),
        "c / b": _div(by.get("c"), by.get("b")),
        "data-c (+ views) / c": _div(next((r["images_per_s"] for r in rows
                                           if r["row"].startswith("data-c: cache loader +")), None), by.get("c")),
        "data-b / b": _div(by.get("data-b"), by.get("b")),
    }.items() if v is not None}


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def environment(cfg: argparse.Namespace, device: torch.device, argv: list[str] | None, t_start: float) -> dict:
    """Where and how the result was measured: device, torch, CPUs and load, the command, the configuration."""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({cpu_name()})",
        "torch": torch.__version__, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "command": "python bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items() if k not in ("out", "prec")},
        "precision": cfg.prec.describe(),
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()
