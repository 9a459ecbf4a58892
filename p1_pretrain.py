"""Pre-train a ResNet backbone on Mini-ImageNet: BYOL without labels (default), or supervised.

Writes OUT/last.pt (full state, for --resume), OUT/log.csv (loss, lr, kNN accuracy, where the time
went) and the backbone as a plain torchvision state_dict: OUT/backbone_first.pt and
OUT/backbone_last.pt (with each last.pt); OUT/best.pt only with --save-best.

    python p1_pretrain.py --data-root hw1_data --out runs/pretrain
    torchrun --nproc_per_node 4 p1_pretrain.py --data-root hw1_data --out runs/pretrain
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from hw1.data import cache, gpu_aug
from hw1.errors import run_main
from hw1.p1.models import ARCHS
from hw1.p1.pretraining import PretrainConfig, Pretraining
from hw1.train import config, distributed, engine


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_common_args(parser, epochs=1000, batch_size=256, image_size=128,
                                 warmup_steps=4000, out="runs/pretrain")
    parser.add_argument("--method", choices=["byol", "supervised"], default="byol",
                        help="byol: no labels; supervised: labels from `<class>_<n>.jpg` names (default: %(default)s)")
    parser.add_argument("--arch", choices=ARCHS, default="resnet50", help="default: %(default)s")
    parser.add_argument("--ema-start", type=float, default=0.99,
                        help="target EMA decay at step 0, cosine to 1 (default: %(default)s)")
    parser.add_argument("--crop-min-scale", type=float, default=0.08,
                        help="smallest area of a view's random crop, as a fraction of the image (default: %(default)s, "
                             "the BYOL paper's)")
    parser.add_argument("--projection-size", type=int, default=256)
    parser.add_argument("--projection-hidden-size", type=int, default=4096)
    parser.add_argument("--simplicial", action="store_true",
                        help="byol-pytorch's simplicial embeddings (not BYOL; off)")
    parser.add_argument("--knn-k", type=int, default=20, help="k of the Office-Home kNN monitor (default: %(default)s)")
    gpu_aug.add_arg(parser, "BYOL's two views")
    parser.add_argument("--save-best", action="store_true",
                        help="also keep OUT/best.pt: the weights at the best kNN monitor value, written with last.pt")
    cache.add_cache_args(parser)
    # 1000 short epochs: the monitor every 10, last.pt every 50 (their cost: BENCHMARKS.md, "Per-epoch overhead").
    parser.set_defaults(eval_every=10, save_every=50)
    return parser


def setup(args: argparse.Namespace, world: distributed.World, device: torch.device) -> tuple[engine.Task, DataLoader]:
    """The pre-training task and its loader (bench.py times exactly this)."""
    pretraining = Pretraining(PretrainConfig.from_args(args), cache.CacheConfig.from_args(args), world, device)
    return pretraining.task(), pretraining.loader


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    world, device = distributed.init_distributed(args.device)
    distributed.seed_everything(args.seed)
    task, loader = setup(args, world, device)
    dataset = loader.dataset.dataset  # inside loading.Seeded
    out = Path(args.out)
    if world.is_main:
        print(f"{args.method} pre-training of {args.arch} on {len(dataset)} images, {device}, world size {world.size}")
    history = engine.fit(config.TrainConfig.from_args(args), task, loader, world, device)
    if world.is_main and history:
        print(f"backbone: {out / 'backbone_last.pt'}")
    distributed.cleanup_distributed()


if __name__ == "__main__":
    run_main(main)()
