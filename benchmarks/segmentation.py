"""Sections `seg` and `hw12`: P2 training and inference images/s, and the wall time of the grading
script `hw1_2.sh`."""
from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hw1.train import checkpoint

from .common import PeakMemory, make_images, rate, timed_steps

ROOT = Path(__file__).resolve().parents[1]


def bench_seg(cfg: argparse.Namespace, device: torch.device) -> list[dict]:
    """Training step (AdamW, cross-entropy, --precision) and inference images/s of each P2 model."""
    return [row for arch in cfg.seg_archs for row in _bench_seg_model(cfg, device, arch)]


def _bench_seg_model(cfg: argparse.Namespace, device: torch.device, arch: str) -> list[dict]:
    """One model's rows; its memory is freed when this returns."""
    from hw1.p2.models import build_seg_model

    rows = []
    model = build_seg_model(arch, "none").to(device, memory_format=cfg.prec.memory_format)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randn(cfg.seg_batch, 3, cfg.seg_size, cfg.seg_size,
                    device=device).contiguous(memory_format=cfg.prec.memory_format)
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
    rows.append({"row": f"seg inference: {arch} {cfg.seg_size}px", "images_per_s": rate(cfg.seg_batch, times),
                 "peak_mem_gib": mem.gib})
    return rows


def bench_hw12(cfg: argparse.Namespace, device: torch.device, work: Path) -> dict:
    """Wall time of `bash hw1_2.sh IMAGES OUT` on generated 512x512 images with a random-weight checkpoint."""
    from hw1.p2.models import build_seg_model

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
    proc = subprocess.run(["bash", str(ROOT / "hw1_2.sh"), str(images), str(out)], env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t
    written = len(list(out.glob("*_mask.png"))) if out.is_dir() else 0
    row = {"row": f"hw1_2.sh: {cfg.hw12_images} images 512x512 ({arch} at {cfg.seg_size}px, start-up included)",
           "wall_s": wall, "images_per_s": cfg.hw12_images / wall, "masks_written": written,
           "exit_code": proc.returncode}
    if proc.returncode:
        row["error"] = proc.stderr.strip().splitlines()[-1:] or ["?"]
    return row
