"""Fine-tune a ResNet on Office-Home (65 classes) in one of the report's settings A–E, or the control E0.

  A   no pre-training, train the full model
  B   supervised backbone (the course's given file), train the full model
  C   our BYOL backbone, train the full model
  D   supervised backbone, frozen (weights and BN statistics), train the classifier only
  E   our BYOL backbone, frozen, train the classifier only
  E0  control for E: the same linear probe on a frozen, randomly initialised backbone (what pre-training adds)

Writes OUT/{first,last,best}.pt, OUT/log.csv (loss, train acc, val acc per epoch) and appends the
final validation accuracy to --results. --recipe strong adds what helped on real images (docs/recipes.md);
each of its pieces has a flag of its own.

    python p1_finetune.py --setting C --backbone runs/pretrain/backbone_last.pt --out runs/finetune_C
    python p1_finetune.py --setting E --recipe strong --out runs/finetune_E_strong
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from hw1 import io
from hw1.data import cache, folders, gpu_aug
from hw1.data.recipes import FINETUNE_VIEW
from hw1.errors import UserError, run_main
from hw1.p1 import finetune_recipe
from hw1.p1.models import ARCHS, Classifier, load_backbone_into
from hw1.p1.settings import SETTINGS
from hw1.train import config, distributed, engine, loading, precision

OUR_BACKBONE = "runs/pretrain/backbone_last.pt"  # p1_pretrain.py's default --out


def default_backbone(setting: str, data_root: str) -> Path:
    """B/D: the course's supervised backbone inside --data-root; C/E: our BYOL pre-training's export."""
    supervised = SETTINGS[setting].backbone == "supervised"
    return Path(data_root) / "p1_data" / "pretrain_model_SL.pt" if supervised else Path(OUR_BACKBONE)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_common_args(parser, epochs=500, batch_size=128, image_size=128,
                                 warmup_steps=100, out="runs/finetune")
    parser.set_defaults(save_every=25)  # 500 short epochs: last.pt and best.pt 20 times, not 500 (BENCHMARKS.md)
    parser.add_argument("--setting", choices=sorted(SETTINGS), required=True,
                        help="report setting A–E, or E0 (frozen random backbone)")
    parser.add_argument("--backbone", default=None,
                        help="backbone for B–E: a state_dict file, or p1_pretrain.py's last.pt / best.pt (its "
                             "online network is taken) (default: B/D DATA_ROOT/p1_data/pretrain_model_SL.pt, "
                             f"C/E {OUR_BACKBONE})")
    parser.add_argument("--arch", choices=ARCHS, default="resnet50", help="default: %(default)s")
    parser.add_argument("--results", default="runs/p1_results.csv",
                        help="append the final accuracy here (default: %(default)s)")
    gpu_aug.add_arg(parser, "the crop, flip and jitter of each training image")
    cache.add_cache_args(parser)
    finetune_recipe.add_args(parser)
    return parser


def build_classifier(args: argparse.Namespace, head: str) -> tuple[Classifier, str]:
    setting = SETTINGS[args.setting]
    model = Classifier(args.arch, folders.NUM_OFFICE_CLASSES, frozen=setting.frozen, head=head)
    if not setting.needs_backbone:
        if args.backbone:
            raise UserError("--backbone", f"setting {args.setting} starts from random initialisation",
                            "drop --backbone or pick B–E")
        return model, "none"
    path = args.backbone or default_backbone(args.setting, args.data_root)
    load_backbone_into(model.net, path, args.arch)
    return model, str(path)


def training_images(args: argparse.Namespace, recipe: finetune_recipe.FinetuneRecipe, caching: cache.CacheConfig,
                    world: distributed.World, device: torch.device, memory_format: torch.memory_format
                    ) -> tuple[Dataset, Callable | None, Callable | None]:
    """The training set, and with --gpu-aug the batch augmentation the loss applies and its per-step reseed (the
    loader then yields uint8 images); without, the loader's transforms augment and both are None."""
    trivial = recipe.augment == "trivialaugment"
    train_transform = folders.classify_train_transform(args.image_size, trivial_augment=trivial)
    train_set = folders.office_dataset(args.data_root, "train", train_transform, skip_unreadable=True)
    if not gpu_aug.wanted(args.gpu_aug, device):
        return cache.maybe_cached(caching, train_set, "office_train", world), None, None
    images = cache.uint8_images(caching, train_set.paths, "office_train", world, labels=train_set.labels)
    view = gpu_aug.BatchView(args.image_size, FINETUNE_VIEW, torch.Generator(), memory_format)
    augment = (lambda batch: view(finetune_recipe.trivial_augment_batch(batch))) if trivial else view
    return images, augment, functools.partial(view.reseed, args.seed, world.rank)


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    world, device = distributed.init_distributed(args.device)
    distributed.seed_everything(args.seed)
    setting = SETTINGS[args.setting]
    recipe = finetune_recipe.from_args(args, setting.frozen, pretrained=setting.needs_backbone)
    model, backbone = build_classifier(args, recipe.head)
    memory_format = precision.resolve(args.precision, device).memory_format
    model = model.to(device, memory_format=memory_format)
    ema = finetune_recipe.WeightEMA(model, recipe.ema_decay) if recipe.ema_decay else None

    caching = cache.CacheConfig.from_args(args)
    train_set, augment, before_step = training_images(args, recipe, caching, world, device, memory_format)
    val_set = folders.office_dataset(args.data_root, "val", folders.classify_eval_transform(args.image_size))
    val_set = cache.maybe_cached(caching, val_set, "office_val", world)
    loader = loading.make_loader(train_set, args.batch_size, train=True, workers=args.workers, seed=args.seed,
                                 world=world, device=device)
    val_loader = loading.make_loader(val_set, args.batch_size, train=False, workers=args.workers, seed=args.seed,
                                     world=world, device=device)

    mixer = finetune_recipe.batch_mixer(recipe.mix, folders.NUM_OFFICE_CLASSES)

    def loss_fn(m: torch.nn.Module, batch: tuple) -> torch.Tensor:
        images, targets = batch
        images = augment(images) if augment else images
        if mixer:  # soft targets: each image's share of two labels
            images, targets = mixer(images, targets)
        return F.cross_entropy(m(images), targets, label_smoothing=recipe.label_smoothing)

    def evaluate(m: torch.nn.Module, epoch: int) -> dict:
        """Validation accuracy, summed over ranks (each rank sees its share of the val set)."""
        counts = torch.zeros(2, device=device)
        for images, labels in val_loader:
            images, labels = loading.to_device((images, labels), device, memory_format)
            correct = (m(images).argmax(1) == labels).sum()
            counts += torch.stack([correct, torch.tensor(len(labels), device=device)]).float()
        correct, total = distributed.all_reduce_sum(counts).tolist()
        return {"val_acc": correct / total}

    task = engine.Task(
        model=model, loss_fn=loss_fn, evaluate=evaluate, monitor="val_acc", keep_first=True, before_step=before_step,
        meta={"task": "classify", "arch": args.arch, "num_classes": folders.NUM_OFFICE_CLASSES,
              "image_size": args.image_size, "setting": args.setting, "backbone": backbone, "recipe": args.recipe,
              **model.head_meta()},
        lr_scale=lambda name: 1.0 if Classifier.is_head(name) else recipe.backbone_lr_scale, ema=ema,
    )
    if world.is_main:
        frozen = "backbone frozen" if model.frozen else "full model"
        print(f"setting {args.setting}: {args.arch}, backbone {backbone}, {frozen}, {len(train_set)} train / "
              f"{len(val_set)} val images, {device}; recipe {args.recipe}: {recipe}")
    # last.pt records the recipe's pieces as they ran, not None for "the recipe's": a resume compares them
    cfg = config.TrainConfig.from_args(argparse.Namespace(**{**vars(args), **dataclasses.asdict(recipe)}))
    history = engine.fit(cfg, task, loader, world, device)
    if world.is_main and history:
        record_result(args, backbone, recipe.head, history)
    distributed.cleanup_distributed()


def record_result(args: argparse.Namespace, backbone: str, head: str, history: list[dict]) -> None:
    """Print the run's final and best validation accuracy and append them to --results."""
    final = history[-1].get("val_acc", float("nan"))
    best = max(r.get("val_acc", 0.0) for r in history)
    print(f"setting {args.setting}: final val acc {final:.4f} (best {best:.4f}) — checkpoints in {args.out}")
    io.append_csv_row(args.results, {
        "setting": args.setting, "arch": args.arch, "backbone": backbone, "recipe": args.recipe, "head": head,
        "val_acc": final, "best_val_acc": best, "epochs": history[-1]["epoch"], "steps": history[-1]["step"],
        "out": str(Path(args.out)), "date": datetime.datetime.now().isoformat(timespec="seconds"),
    })


if __name__ == "__main__":
    run_main(main)()
