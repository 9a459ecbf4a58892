"""Pre-train a ResNet backbone on Mini-ImageNet: BYOL without labels (default), or supervised.

Writes OUT/last.pt (full state, for --resume), OUT/log.csv (loss, lr, kNN accuracy) and the
backbone as a plain torchvision state_dict: OUT/backbone_first.pt and OUT/backbone_last.pt.

    python p1_pretrain.py --data-root hw1_data --out runs/pretrain
    torchrun --nproc_per_node 4 p1_pretrain.py --data-root hw1_data --out runs/pretrain
"""
from __future__ import annotations

import argparse
import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from hw1 import cache, data, engine, precision
from hw1.byol import TargetEMA, TwoViews, build_byol
from hw1.gpu_aug import batch_views
from hw1.errors import run_main
from hw1.metrics import knn_accuracy
from hw1.models import ARCHS, backbone_state, build_resnet, pooled_features


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
    parser.add_argument("--gpu-aug", action=argparse.BooleanOptionalAction, default=None,
                        help="BYOL views as batched tensor ops on the training device, from uint8 batches "
                             "(default: on with CUDA); --no-gpu-aug: per-sample PIL/torchvision in the loader workers")
    cache.add_cache_args(parser)
    return parser


def knn_monitor(args: argparse.Namespace, device: torch.device):
    """Cosine kNN accuracy, Office-Home train → val, of a backbone's pooled features (None without the data)."""
    office = Path(args.data_root) / "p1_data" / "office"
    if not (office / "train.csv").is_file():
        print(f"note: {office} not found; the kNN monitor is off")
        return None
    tf = data.classify_eval_transform(args.image_size)
    train_set, val_set = data.office_dataset(args.data_root, "train", tf), data.office_dataset(args.data_root, "val", tf)

    def evaluate(backbone: torch.nn.Module) -> dict:
        features = functools.partial(pooled_features, backbone)  # not the supervised net's class logits
        kw = dict(batch_size=256, workers=args.workers, prec=precision.resolve(args.precision, device))
        train_f, train_y = engine.extract_features(features, train_set, device, desc="kNN train", **kw)
        val_f, val_y = engine.extract_features(features, val_set, device, desc="kNN val", **kw)
        return {"knn_acc": knn_accuracy(train_f, train_y, val_f, val_y, k=args.knn_k)}

    return evaluate


def setup(args: argparse.Namespace, dist: engine.Dist, device: torch.device) -> tuple[engine.Task, torch.utils.data.DataLoader]:
    """The pre-training task and its loader (bench.py times exactly this)."""
    out = Path(args.out)
    paths = data.mini_paths(args.data_root)
    knn = knn_monitor(args, device)
    barrier = torch.distributed.barrier if dist.enabled else None
    extra_state = load_extra_state = None
    memory_format = precision.resolve(args.precision, device).memory_format

    if args.method == "byol":
        gpu_aug = device.type == "cuda" if args.gpu_aug is None else args.gpu_aug
        if gpu_aug:  # the loader yields uint8 images; the model's augment hooks make the two views
            dataset = (cache.cached_dataset(args, paths, "mini_train", is_main=dist.is_main, barrier=barrier)
                       or cache.DecodedImages(paths, cache.image_side(paths)))
            views = batch_views(args.image_size, seed=args.seed * 1009 + dist.rank, memory_format=memory_format)
            generator = views[0].generator  # its state goes into the checkpoint, so a resume draws the same views

            def extra_state() -> dict:
                return {"aug_rng": generator.get_state()}

            def load_extra_state(state: dict) -> None:
                if "aug_rng" in state:
                    generator.set_state(state["aug_rng"])
        else:
            views = None
            dataset = data.ImageListDataset(paths, transform=TwoViews(args.image_size), skip_unreadable=True)
            dataset = cache.maybe_cached(args, dataset, "mini_train", is_main=dist.is_main, barrier=barrier)
        model = build_byol(args.arch, args.image_size, device, augment_fns=views, projection_size=args.projection_size,
                           projection_hidden_size=args.projection_hidden_size, simplicial=args.simplicial,
                           memory_format=memory_format)
        backbone = model.net
        loss_fn = lambda m, batch: m(batch[0])  # noqa: E731 - BYOL returns its symmetric loss
    else:
        labels = [data.mini_label(p) for p in paths]
        dataset = data.ImageListDataset(paths, labels, data.classify_train_transform(args.image_size), skip_unreadable=True)
        dataset = cache.maybe_cached(args, dataset, "mini_train", is_main=dist.is_main, barrier=barrier)
        model = build_resnet(args.arch, num_classes=max(labels) + 1).to(device, memory_format=memory_format)
        backbone = model
        loss_fn = lambda m, batch: F.cross_entropy(m(batch[0]), batch[1])  # noqa: E731

    loader = engine.make_loader(dataset, args.batch_size, train=True, workers=args.workers, seed=args.seed,
                                dist=dist, device=device)
    total_steps = loader.sampler.batches_per_epoch() * args.epochs
    after_step = TargetEMA(model, total_steps, args.ema_start) if args.method == "byol" else None

    def export_backbone(epoch: int, record: dict) -> None:
        state = backbone_state(backbone)
        if epoch == 0:
            engine.save_checkpoint(out / "backbone_first.pt", state)
        engine.save_checkpoint(out / "backbone_last.pt", state)

    task = engine.Task(
        model=model, loss_fn=loss_fn,
        meta={"task": f"pretrain-{args.method}", "arch": args.arch, "image_size": args.image_size},
        evaluate=(lambda m, epoch: knn(backbone)) if knn else None, monitor="knn_acc" if knn else None,
        after_step=after_step, on_epoch_end=export_backbone, keep_first=True,
        extra_state=extra_state, load_extra_state=load_extra_state,
    )
    return task, loader


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    dist, device = engine.init_distributed(args.device)
    engine.seed_everything(args.seed)
    task, loader = setup(args, dist, device)
    dataset = loader.dataset.dataset  # inside engine.Seeded
    out = Path(args.out)
    if dist.is_main:
        print(f"{args.method} pre-training of {args.arch} on {len(dataset)} images, {device}, world size {dist.world_size}")
    history = engine.fit(args, task, loader, dist, device)
    if dist.is_main and history:
        print(f"backbone: {out / 'backbone_last.pt'}")
    engine.cleanup_distributed()


if __name__ == "__main__":
    run_main(main)()
