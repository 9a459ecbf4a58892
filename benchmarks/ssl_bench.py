"""BYOL side by side: this project's pipeline (batched views, and per-image views) and byol-pytorch's README pipeline,
on the same images, model, batch, optimiser, schedule and steps; only the pipeline differs.

Each pipeline trains from the same random initialisation (the seed) and is scored by the project's kNN monitor
(`pretraining.KnnMonitor`: cosine kNN, Office-Home-layout train → val, pooled backbone features) at step 0 and
every --eval-every steps, with the training images/s between evaluations. Writes OUT/ssl.json, OUT/ssl.md and
OUT/ssl.png (kNN against steps and against seconds), and says where each curve crosses its random initialisation.

    python -m hw1.fashion --out sample_data/fashion
    python -m benchmarks.ssl_bench --data-root sample_data/fashion --out runs/ssl
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from hw1 import cache, data, distributed, io, optim
from hw1.errors import run_main
from hw1.pretraining import KnnMonitor, PretrainConfig, Pretraining

PIPELINES = ("ours-gpu-aug", "ours-per-image", "byol-pytorch")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="hw1_data layout: mini/train to train, office to score")
    parser.add_argument("--out", default="runs/ssl", help="default: %(default)s")
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    parser.add_argument("--arch", default="resnet18", help="default: %(default)s")
    parser.add_argument("--image-size", type=int, default=32, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per pipeline (default: %(default)s)")
    parser.add_argument("--eval-every", type=int, default=50, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW, for every pipeline (default: %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="default: %(default)s")
    parser.add_argument("--warmup-steps", type=int, default=10, help="then cosine to 0 (default: %(default)s)")
    parser.add_argument("--projection-hidden-size", type=int, default=1024, help="default: %(default)s")
    parser.add_argument("--workers", type=int, default=1, help="loader processes (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _pretraining(args: argparse.Namespace, gpu_aug: bool, world: distributed.World,
                 device: torch.device) -> Pretraining:
    """This project's BYOL pre-training, built as p1_pretrain.py builds it (model, views, loader, EMA, monitor)."""
    import p1_pretrain

    flags = p1_pretrain.get_args_parser().parse_args([
        "--data-root", args.data_root, "--out", str(Path(args.out) / "unused"), "--arch", args.arch,
        "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
        "--seed", str(args.seed), "--projection-hidden-size", str(args.projection_hidden_size), "--no-cache",
        "--gpu-aug" if gpu_aug else "--no-gpu-aug", "--precision", "fp32",
        "--epochs", str(1 + args.steps * args.batch_size // max(1, len(data.mini_paths(args.data_root)))),
    ])
    return Pretraining(PretrainConfig.from_args(flags), cache.CacheConfig.from_args(flags), world, device)


class ByolPytorchReadme:
    """byol-pytorch as its README shows it: `BYOL(resnet, image_size, hidden_layer='avgpool')` with every default
    (its batch-wide augmentation, one draw for the whole batch; in 0.9.1 simplicial embeddings on), and
    `update_moving_average()` after each step (decay 0.99). Fed the same uint8 images, as floats in [0, 1]."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        import torchvision
        from byol_pytorch import BYOL

        self.net = torchvision.models.get_model(args.arch, weights=None).to(device)
        self.model = BYOL(self.net, image_size=args.image_size, hidden_layer="avgpool")
        self.size = args.image_size

    def loss(self, model: nn.Module, batch: tuple) -> torch.Tensor:
        x = batch[0].float().div_(255)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return model(x)

    def after_step(self, step: int) -> None:
        self.model.update_moving_average()


def batches(loader: torch.utils.data.DataLoader, device: torch.device) -> Iterator[tuple]:
    """The loader's batches epoch after epoch, on the device."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch, 0)  # type: ignore[attr-defined]
        for batch in loader:
            yield tuple(t.to(device, non_blocking=True) if torch.is_tensor(t) else t for t in batch)
        epoch += 1


def run_pipeline(name: str, args: argparse.Namespace, world: distributed.World, device: torch.device) -> dict:
    """Train one pipeline for --steps from the seed's initialisation; the monitor at 0 and every --eval-every."""
    distributed.seed_everything(args.seed)
    pretraining = _pretraining(args, gpu_aug=name != "ours-per-image", world=world, device=device)
    monitor: KnnMonitor = pretraining.monitor  # type: ignore[assignment]
    if name.startswith("ours"):
        model, backbone, loss_fn = pretraining.model, pretraining.backbone, pretraining.loss
        before = pretraining.before_step if pretraining.views else None
        after: Callable[[int], None] = pretraining.ema  # type: ignore[assignment]
    else:  # byol-pytorch's model, augmentation and EMA, on the batched pipeline's uint8 loader
        distributed.seed_everything(args.seed)  # the same initial weights as ours
        reference = ByolPytorchReadme(args, device)
        model, backbone, loss_fn, before, after = (reference.model, reference.net, reference.loss, None,
                                                   reference.after_step)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optim.build_optimizer(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999), fused=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, optim.warmup_cosine_lambda(args.warmup_steps, args.steps))

    def score(step: int, train_s: float) -> dict:
        model.eval()
        with torch.no_grad():
            row = {"step": step, "train_s": round(train_s, 1), **monitor(backbone)}
        model.train()
        return row

    curve = [score(0, 0.0)]
    train_s, window_s = 0.0, 0.0
    stream = batches(pretraining.loader, device)
    model.train()
    for step in range(args.steps):
        t0 = time.perf_counter()
        batch = next(stream)  # the wait for data counts: the per-image pipeline's views are made in its loader
        if before:
            before(step)
        loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        after(step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        train_s, window_s = train_s + dt, window_s + dt
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            row = score(step + 1, train_s)
            done = step + 1 - curve[-1]["step"]
            row.update(loss=round(loss.item(), 4), images_per_s=round(done * args.batch_size / window_s, 1))
            curve.append(row)
            window_s = 0.0
            print(f"{name} step {row['step']}: kNN {row['knn_acc']:.3f}, view gap {row['view_gap']:.3f}, "
                  f"{row['images_per_s']} img/s", flush=True)
    return {"pipeline": name, "curve": curve, "crosses_at": crossing(curve)}


def crossing(curve: list[dict]) -> int | None:
    """The first step after the start whose kNN is above the random initialisation's, or None."""
    start = curve[0]["knn_acc"]
    return next((row["step"] for row in curve[1:] if row["knn_acc"] > start), None)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        steps = [row["step"] for row in r["curve"]]
        seconds = [row["train_s"] for row in r["curve"]]
        knn = [row["knn_acc"] for row in r["curve"]]
        axes[0].plot(steps, knn, marker="o", label=r["pipeline"])
        axes[1].plot(seconds, knn, marker="o", label=r["pipeline"])
    for ax, xlabel in zip(axes, ("optimiser step", "training seconds (evaluation excluded)")):
        ax.axhline(results[0]["curve"][0]["knn_acc"], color="grey", linestyle="--", linewidth=1,
                   label="random initialisation")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("kNN accuracy (monitor)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    steps = [row["step"] for row in results[0]["curve"]]
    lines = ["| pipeline | " + " | ".join(f"kNN @ {s}" for s in steps) + " | images/s | crosses its start |",
             "|---|" + "---|" * (len(steps) + 2)]
    for r in results:
        rates = [row["images_per_s"] for row in r["curve"][1:] if row.get("images_per_s")]
        crosses = f"step {r['crosses_at']}" if r["crosses_at"] else f"no, within {args.steps} steps"
        lines.append(f"| {r['pipeline']} | " + " | ".join(f"{row['knn_acc']:.3f}" for row in r["curve"])
                     + f" | {sorted(rates)[len(rates) // 2] if rates else '—'} | {crosses} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = distributed.setup_device(args.device)
    world = distributed.World()
    out = io.ensure_dir(args.out)
    results = []
    for name in args.pipelines:
        results.append(run_pipeline(name, args, world, device))
        io.write_json(out / "ssl.json", {"args": vars(args), "results": results})  # each pipeline as it ends
    table = markdown(results, args)
    io.write_text(out / "ssl.md", table)
    plot(results, out / "ssl.png")
    print(table)
    print(json.dumps({r["pipeline"]: r["crosses_at"] for r in results}))


if __name__ == "__main__":
    run_main(main)()
