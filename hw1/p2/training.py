"""The Problem 2 training run that p2_train_fcn32.py and p2_train_deeplab.py share, and prediction.

Validation mIoU (the course's rule, from a confusion matrix kept on the device and summed over
ranks) and each class's IoU go into OUT/log.csv; `best.pt` follows the mIoU. Predictions of the
snapshot images (0013, 0062, 0104) are saved at the first, middle and final epochs.
"""
from __future__ import annotations

import argparse
import datetime
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import io
from ..data.folders import data_dir, load_rgb
from ..errors import UserError
from ..train import config, distributed, engine, loading, precision
from ..train.metrics import confusion_matrix, iou_from_confusion
from ..train.precision import Precision
from .data import (
    AUGMENTS,
    CLASS_NAMES,
    EVAL_CLASSES,
    NUM_CLASSES,
    SNAPSHOT_STEMS,
    SatMaskDataset,
    classes_to_rgb,
    collate,
    find_pairs,
    write_mask,
)
from .models import WEIGHTS, build_seg_model

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def add_args(parser: argparse.ArgumentParser) -> None:
    """Flags both P2 training scripts take beside `config.add_common_args`."""
    parser.add_argument("--weights", choices=WEIGHTS, default="default",
                        help="default: torchvision's pretrained weights (downloaded once into $TORCH_HOME); "
                             "none: random initialisation, no download (default: %(default)s)")
    parser.add_argument("--augment", choices=AUGMENTS, default="flip",
                        help="joint image/mask augmentation: flip = identity / horizontal / vertical flip (the "
                             "reference), flip+scale adds a random zoom-in crop (default: %(default)s)")
    parser.add_argument("--results", default="runs/p2_results.csv",
                        help="append the final mIoU here (default: %(default)s)")
    parser.add_argument("--bn-recalibrate", type=int, default=0, metavar="BATCHES",
                        help="before each validation, re-estimate batch-norm statistics from this many training "
                             "batches; for short runs from --weights none, whose running averages trail the "
                             "fast-moving weights (default: %(default)s, off)")


# ---------------------------------------------------------------- prediction and evaluation


def predict_classes(model: nn.Module, images: torch.Tensor, sizes: list[tuple[int, int]],
                    tta: bool = False) -> list[torch.Tensor]:
    """Class ids at each image's own size: scores upsampled bilinearly, then argmax.

    `tta` averages the softmax over the identity, horizontal and vertical flips.
    """
    scores = model(images)["out"].float()
    if tta:
        scores = scores.softmax(1)
        for dim in (-1, -2):
            scores = scores + model(images.flip(dim))["out"].float().softmax(1).flip(dim)
    sizes = [tuple(int(v) for v in s) for s in sizes]
    if len(set(sizes)) == 1:  # the usual case: one resize for the whole batch
        if tuple(scores.shape[-2:]) != sizes[0]:
            scores = F.interpolate(scores, size=sizes[0], mode="bilinear", align_corners=False)
        return list(scores.argmax(1))
    return [F.interpolate(s[None], size=size, mode="bilinear", align_corners=False).argmax(1)[0]
            for s, size in zip(scores, sizes)]


def evaluate_miou(model: nn.Module, loader: DataLoader, device: torch.device, show: bool = True,
                  memory_format: torch.memory_format = torch.contiguous_format) -> dict:
    """Validation mIoU and per-class IoU over this rank's share of `loader`, summed over ranks."""
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long, device=device)
    for batch in tqdm(loader, desc="validation", leave=False, dynamic_ncols=True, disable=not show):
        batch = loading.to_device(batch, device, memory_format)
        masks = list(batch["mask"])
        for pred, mask in zip(predict_classes(model, batch["image"], [m.shape for m in masks]), masks):
            cm += confusion_matrix(pred, mask, NUM_CLASSES)
    ious, miou = iou_from_confusion(distributed.all_reduce_sum(cm), EVAL_CLASSES)
    return {"miou": miou, **{f"iou_{name}": v for name, v in zip(CLASS_NAMES, ious)}}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: DataLoader, device: torch.device, batches: int, world_size: int,
                          memory_format: torch.memory_format = torch.contiguous_format) -> None:
    """Set every batch-norm layer's running statistics to their plain average over `batches` training
    batches ("precise BN"), averaged over ranks; the model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average over the batches seen
    if norms:
        model.train()
        for _, batch in zip(range(batches), loader):
            model(loading.to_device(batch, device, memory_format)["image"])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        distributed.all_reduce_sum(m.running_mean).div_(world_size)
        distributed.all_reduce_sum(m.running_var).div_(world_size)
    model.eval()


# ---------------------------------------------------------------- snapshots


def snapshot_tags(epoch: int, epochs: int, last: bool) -> list[str]:
    """Which of early / middle / final the (0-based) epoch is; one epoch may be several."""
    return [tag for tag, hit in (("early", epoch == 0), ("middle", epoch == (epochs - 1) // 2), ("final", last)) if hit]


@torch.no_grad()
def write_snapshots(model: nn.Module, val_set: SatMaskDataset, out: Path, epoch: int, tags: list[str],
                    device: torch.device, prec: Precision) -> None:
    """For each snapshot stem present: OUT/snapshots/<stem>_epochNNN_<tags>_mask.png and a figure
    image | ground truth | prediction beside it."""
    from ..viz import save_image_grid  # matplotlib: imported by training runs only, when a snapshot is due

    was_training = model.training
    model.eval()
    for index, pair in enumerate(val_set.pairs):
        if pair.stem not in SNAPSHOT_STEMS:
            continue
        item = val_set[index]
        with prec.autocast():
            image = loading.to_device(item["image"][None], device, prec.memory_format)
            pred = predict_classes(model, image, [item["mask"].shape])[0]
        pred = pred.cpu().numpy()
        name = f"{pair.stem}_epoch{epoch + 1:03d}_{'-'.join(tags)}"
        write_mask(out / "snapshots" / f"{name}_mask.png", pred)
        save_image_grid(out / "snapshots" / f"{name}.png",
                        [[np.asarray(load_rgb(pair.image)), classes_to_rgb(item["mask"].numpy()),
                          classes_to_rgb(pred)]],
                        row_titles=[pair.stem],
                        col_titles=["image", "ground truth", f"epoch {epoch + 1} ({', '.join(tags)})"])
    model.train(was_training)


# ---------------------------------------------------------------- the run


def _check_batch_norm_batch(model: nn.Module, arch: str, images_per_step: int) -> None:
    """Batch norm in training mode cannot normalise one image: a model with any (DeepLabV3, FCN32s on vgg16_bn)
    needs 2."""
    if images_per_step < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise UserError("--batch-size", f"{arch}'s batch norm needs at least 2 training images per process and step",
                        "use --batch-size 2 or more per process")


def train(args: argparse.Namespace, *, arch: str, criterion: Criterion, aux_weight: float = 0.0,
          model_options: dict | None = None) -> list[dict]:
    """Build data, model and `engine.Task`, run `engine.fit`; `model_options` (FCN32s's `fc_width` and `vgg`) also
    go into the checkpoint's meta, so inference rebuilds exactly this model. Returns the epoch log."""
    model_options = model_options or {}
    world, device = distributed.init_distributed(args.device)
    distributed.seed_everything(args.seed)
    out = Path(args.out)
    p2 = data_dir(args.data_root, "p2_data")
    train_set = SatMaskDataset(find_pairs(p2 / "train", need_masks=True), args.image_size, augment=args.augment)
    val_set = SatMaskDataset(find_pairs(p2 / "validation", need_masks=True), args.image_size, full_res_masks=True)
    kw = dict(workers=args.workers, seed=args.seed, world=world, device=device, collate_fn=collate)
    loader = loading.make_loader(train_set, args.batch_size, train=True, **kw)
    val_loader = loading.make_loader(val_set, args.batch_size, train=False, **kw)
    model = build_seg_model(arch, args.weights, aux=aux_weight > 0, **model_options)
    _check_batch_norm_batch(model, arch, min(loader.sampler.local_batch, len(train_set) // world.size))
    prec = precision.resolve(args.precision, device)
    model = model.to(device, memory_format=prec.memory_format)

    def loss_fn(m: nn.Module, batch: dict) -> torch.Tensor:
        outputs = m(batch["image"])
        loss = criterion(outputs["out"], batch["mask"])
        if aux_weight:
            loss = loss + aux_weight * criterion(outputs["aux"], batch["mask"])
        return loss

    def on_epoch_end(epoch: int, record: dict) -> None:
        last = record["epoch"] == args.epochs or (args.max_steps is not None and record["step"] >= args.max_steps)
        tags = snapshot_tags(epoch, args.epochs, last)
        if tags:
            write_snapshots(model, val_set, out, epoch, tags, device, prec)

    def evaluate(m: nn.Module, epoch: int) -> dict:
        if args.bn_recalibrate:
            recalibrate_batchnorm(m, loader, device, args.bn_recalibrate, world.size, prec.memory_format)
        return evaluate_miou(m, val_loader, device, show=world.is_main, memory_format=prec.memory_format)

    task = engine.Task(
        model=model, loss_fn=loss_fn, monitor="miou", on_epoch_end=on_epoch_end,
        evaluate=evaluate,
        meta={"task": "segment", "arch": arch, "num_classes": NUM_CLASSES, "image_size": args.image_size,
              "weights": args.weights, "aux": aux_weight > 0, **model_options},
    )
    if world.is_main:
        print(f"{arch} (weights {args.weights}): {len(train_set)} train / {len(val_set)} validation images at "
              f"{args.image_size} px, augment {args.augment}, {device}, world size {world.size}")
    history = engine.fit(config.TrainConfig.from_args(args), task, loader, world, device)
    if world.is_main and history:
        final = history[-1].get("miou", math.nan)
        best = max((r["miou"] for r in history if "miou" in r), default=math.nan)
        print(f"{arch}: final validation mIoU {final:.4f} (best {best:.4f}) — checkpoints in {out}")
        io.append_csv_row(args.results, {
            "arch": arch, "weights": args.weights, "miou": final, "best_miou": best, "epochs": history[-1]["epoch"],
            "steps": history[-1]["step"], "out": str(out),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
        })
    distributed.cleanup_distributed()
    return history
