"""Pre-train a ResNet backbone on Mini-ImageNet: BYOL without labels (default), or supervised.

Writes OUT/last.pt (full state, for --resume), OUT/log.csv (loss, lr, kNN accuracy, where the time
went) and the backbone as a plain torchvision state_dict: OUT/backbone_first.pt and
OUT/backbone_last.pt (with each last.pt); OUT/best.pt only with --save-best.

    python p1_pretrain.py --data-root hw1_data --out runs/pretrain
    torchrun --nproc_per_node 4 p1_pretrain.py --data-root hw1_data --out runs/pretrain
"""
from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from hw1 import cache, checkpoint, data, distributed, engine, gpu_aug, loading, precision
from hw1.byol import TargetEMA, TwoViews, build_byol
from hw1.errors import run_main
from hw1.metrics import knn_accuracy
from hw1.models import ARCHS, backbone_state, build_resnet, pooled_features
from hw1.recipes import IMAGENET_MEAN, IMAGENET_STD


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    engine.add_common_args(parser, epochs=1000, batch_size=256, image_size=128, warmup_steps=4000, out="runs/pretrain")
    parser.add_argument("--method", choices=["byol", "supervised"], default="byol",
                        help="byol: no labels; supervised: labels from `<class>_<n>.jpg` names (default: %(default)s)")
    parser.add_argument("--arch", choices=ARCHS, default="resnet50", help="default: %(default)s")
    parser.add_argument("--ema-start", type=float, default=0.99, help="target EMA decay at step 0, cosine to 1 (default: %(default)s)")
    parser.add_argument("--projection-size", type=int, default=256)
    parser.add_argument("--projection-hidden-size", type=int, default=4096)
    parser.add_argument("--simplicial", action="store_true", help="byol-pytorch's simplicial embeddings (not BYOL; off)")
    parser.add_argument("--knn-k", type=int, default=20, help="k of the Office-Home kNN monitor (default: %(default)s)")
    gpu_aug.add_arg(parser, "BYOL's two views")
    parser.add_argument("--save-best", action="store_true",
                        help="also keep OUT/best.pt: the weights at the best kNN monitor value, written with last.pt")
    cache.add_cache_args(parser)
    # Long-run cadences (BENCHMARKS.md, "Per-epoch overhead"). At the reference recipe an epoch is ~4 s on a GPU at
    # the speed goal (150 steps x 256 images at ~9,000 images/s). The monitor's forward over the 4,357 cached images
    # is 11.6 TFLOP, ~0.06 s at the training's FLOP rate: allow 0.2 s, and every 10 epochs it costs 0.2 / 40 s =
    # 0.5% (< 2%; 100 points on its curve). last.pt (0.55 GB) + backbone_last.pt took 2.8 s to write on CPU:
    # every 50 epochs that is 2.8 / 200 s = 1.4%, and a SIGKILL loses at most ~3 minutes.
    parser.set_defaults(eval_every=10, save_every=50)
    return parser


@torch.no_grad()
def features(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, size: int, batch_size: int = 256,
             memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """`fn` over uint8 (N, 3, H, W) images in batches on their device, each batch as
    `data.classify_eval_transform(size)` makes it (resize, scale, normalise)."""
    out = []
    for x in images.split(batch_size):
        if tuple(x.shape[-2:]) != (size, size):
            x = TF.resize(x, [size, size], antialias=True)
        x = TF.normalize(TF.to_dtype(x, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)
        out.append(fn(loading.to_device(x, x.device, memory_format)).float())  # the model's memory format
    return torch.cat(out)


@torch.no_grad()
def view_gap(fn: Callable[[torch.Tensor], torch.Tensor], first: torch.Tensor, second: torch.Tensor) -> float:
    """Mean cosine of two views of one image minus that of views of different images, over `fn`'s features.

    BYOL trains for the first to be high without the second following (a collapse raises both); a random
    network already has some gap. It says nothing of classes: that is the kNN accuracy's job.
    """
    with torch.autocast(first.device.type, enabled=False):
        cos = F.normalize(fn(first).float(), dim=1) @ F.normalize(fn(second).float(), dim=1).T
    n = len(cos)
    same = cos.diagonal().mean()
    return (same - (cos.sum() - cos.diagonal().sum()) / max(1, n * n - n)).item()


def knn_monitor(args: argparse.Namespace, world: distributed.World, device: torch.device, memory_format: torch.memory_format):
    """Cosine kNN accuracy, Office-Home train → val, of a backbone's pooled features (None without the data),
    and `view_gap`: BYOL's own aim, measured on the backbone (see `view_gap`).

    The images are decoded once (the cache, or here when it is off) and kept on the training device as
    uint8; each evaluation only runs the backbone over them: no decoding, no loader workers.
    """
    office = Path(args.data_root) / "p1_data" / "office"
    if not (office / "train.csv").is_file():
        print(f"note: {office} not found; the kNN monitor is off")
        return None
    barrier = torch.distributed.barrier if world.enabled else None
    sets = []
    for split in ("train", "val"):
        listed = data.office_dataset(args.data_root, split, None)
        images = cache.decoded_images(args, listed.paths, f"office_{split}", is_main=world.is_main, barrier=barrier)
        sets.append((images.to(device), torch.tensor(listed.labels, device=device)))
    # The same two BYOL views of up to 256 val images at every evaluation (a fixed seed), so the curve moves with the network only.
    first_view, second_view = gpu_aug.batch_views(args.image_size, seed=args.seed, memory_format=memory_format)
    view_pair = [view(sets[1][0][:256]) for view in (first_view, second_view)]

    def evaluate(backbone: torch.nn.Module) -> dict:
        (train_x, train_y), (val_x, val_y) = sets
        pooled = functools.partial(pooled_features, backbone)  # not the supervised net's class logits
        with torch.autocast(device.type, enabled=False):  # the monitor in fp32, whatever the training's autocast
            train_f, val_f = (features(pooled, x, args.image_size, memory_format=memory_format) for x in (train_x, val_x))
        return {"knn_acc": knn_accuracy(train_f, train_y, val_f, val_y, k=args.knn_k), "view_gap": view_gap(pooled, *view_pair)}

    return evaluate


def setup(args: argparse.Namespace, world: distributed.World, device: torch.device) -> tuple[engine.Task, torch.utils.data.DataLoader]:
    """The pre-training task and its loader (bench.py times exactly this)."""
    out = Path(args.out)
    paths = data.mini_paths(args.data_root)
    memory_format = precision.resolve(args.precision, device).memory_format
    knn = knn_monitor(args, world, device, memory_format)
    barrier = torch.distributed.barrier if world.enabled else None
    before_step = None

    if args.method == "byol":
        if gpu_aug.wanted(args.gpu_aug, device):  # the loader yields uint8 images; the model's augment hooks make the two views
            dataset = cache.uint8_images(args, paths, "mini_train", is_main=world.is_main, barrier=barrier)
            views = gpu_aug.batch_views(args.image_size, memory_format=memory_format)
            before_step = gpu_aug.reseed_each_step(views[0].generator, args.seed, world.rank)
        else:
            views = None
            dataset = data.ImageListDataset(paths, transform=TwoViews(args.image_size), skip_unreadable=True)
            dataset = cache.maybe_cached(args, dataset, "mini_train", is_main=world.is_main, barrier=barrier)
        model = build_byol(args.arch, args.image_size, device, augment_fns=views, projection_size=args.projection_size,
                           projection_hidden_size=args.projection_hidden_size, simplicial=args.simplicial,
                           memory_format=memory_format)
        backbone = model.net
        loss_fn = lambda m, batch: m(batch[0])  # noqa: E731 - BYOL returns its symmetric loss
    else:
        labels = [data.mini_label(p) for p in paths]
        dataset = data.ImageListDataset(paths, labels, data.classify_train_transform(args.image_size), skip_unreadable=True)
        dataset = cache.maybe_cached(args, dataset, "mini_train", is_main=world.is_main, barrier=barrier)
        model = build_resnet(args.arch, num_classes=max(labels) + 1).to(device, memory_format=memory_format)
        backbone = model
        loss_fn = lambda m, batch: F.cross_entropy(m(batch[0]), batch[1])  # noqa: E731

    loader = loading.make_loader(dataset, args.batch_size, train=True, workers=args.workers, seed=args.seed,
                                 world=world, device=device)
    total_steps = loader.sampler.batches_per_epoch() * args.epochs
    after_step = TargetEMA(model, total_steps, args.ema_start) if args.method == "byol" else None

    def export_backbone(epoch: int) -> None:
        state = backbone_state(backbone)
        if epoch == 0:
            checkpoint.save_checkpoint(out / "backbone_first.pt", state)
        checkpoint.save_checkpoint(out / "backbone_last.pt", state)

    task = engine.Task(
        model=model, loss_fn=loss_fn,
        meta={"task": f"pretrain-{args.method}", "arch": args.arch, "image_size": args.image_size},
        evaluate=(lambda m, epoch: knn(backbone)) if knn else None, monitor="knn_acc" if knn else None,
        evaluate_at_start=True,  # the random initialisation: the honest baseline of the monitor's curve
        before_step=before_step, after_step=after_step, on_save=export_backbone, keep_first=True, keep_best=args.save_best,
    )
    return task, loader


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    world, device = distributed.init_distributed(args.device)
    distributed.seed_everything(args.seed)
    task, loader = setup(args, world, device)
    dataset = loader.dataset.dataset  # inside loading.Seeded
    out = Path(args.out)
    if world.is_main:
        print(f"{args.method} pre-training of {args.arch} on {len(dataset)} images, {device}, world size {world.size}")
    history = engine.fit(args, task, loader, world, device)
    if world.is_main and history:
        print(f"backbone: {out / 'backbone_last.pt'}")
    distributed.cleanup_distributed()


if __name__ == "__main__":
    run_main(main)()
