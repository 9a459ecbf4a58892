"""Fine-tuning recipes (`p1_finetune.py --recipe`): the seed report's (SPEC §5, the default) and a stronger one,
each a bundle of pieces that a flag of its own can also set; and the pieces that torchvision/torch lack."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torchvision.transforms import v2

from .errors import UserError
from .models import HEADS
AUGMENTS = ("crop", "trivialaugment")  # the seed's crop, flip and jitter; or TrivialAugmentWide, then those
MIXES = ("none", "mixup", "cutmix", "mixup-cutmix")


@dataclass(frozen=True)
class FinetuneRecipe:
    """What a fine-tuning run adds to AdamW + warm-up/cosine on cross-entropy; each field has its own flag."""

    head: str = "linear"            # the frozen settings' (D, E, E0) classifier: one Linear, or the BN-MLP head
    augment: str = "crop"           # per-image augmentation of the training images
    label_smoothing: float = 0.0
    mix: str = "none"               # mixup/CutMix of each batch (torchvision.transforms.v2)
    ema_decay: float = 0.0          # evaluate and keep as best.pt an EMA of the weights (0: off)
    backbone_lr_scale: float = 1.0  # a pre-trained backbone's lr as a fraction of the head's (full fine-tuning)


# The strong recipe keeps only what helped on real images (docs/recipes.md: each piece, 3 seeds of Fashion-MNIST).
RECIPES = {
    "seed": FinetuneRecipe(),
    "strong": FinetuneRecipe(head="mlp"),
}
RECIPE_NOTES = {"seed": "the reference report's, SPEC §5",
                "strong": "the seed's plus what helped on real images, docs/recipes.md"}


def add_args(parser: argparse.ArgumentParser) -> None:
    """--recipe and one flag per piece (None: the recipe's value)."""
    g = parser.add_argument_group("fine-tuning recipe (a piece's flag overrides the recipe's value)")
    g.add_argument("--recipe", choices=sorted(RECIPES), default="seed",
                   help="seed: the reference report's recipe (SPEC §5); strong: what helped on real images "
                        "(docs/recipes.md) (default: %(default)s)")
    g.add_argument("--head", choices=HEADS, default=None,
                   help="the classifier of the frozen settings D, E, E0: linear, or mlp = Linear(F, 4096) → "
                        "BatchNorm1d → ReLU → Linear(65) (default: the recipe's; full fine-tuning keeps linear)")
    g.add_argument("--augment", choices=AUGMENTS, default=None,
                   help="trivialaugment: TrivialAugmentWide before the crop, flip and jitter (default: the recipe's)")
    g.add_argument("--label-smoothing", type=float, default=None, help="default: the recipe's")
    g.add_argument("--mix", choices=MIXES, default=None,
                   help="mix each training batch: mixup, CutMix or one of the two per batch (default: the recipe's)")
    g.add_argument("--ema-decay", type=float, default=None,
                   help="evaluate (and keep as best.pt) an EMA of the weights with this decay, warmed up over the "
                        "first steps; 0: off (default: the recipe's)")
    g.add_argument("--backbone-lr-scale", type=float, default=None,
                   help="a pre-trained backbone's learning rate as a fraction of --lr (the head's) when the full "
                        "model trains (default: the recipe's)")


def from_args(args: argparse.Namespace, frozen: bool, pretrained: bool) -> FinetuneRecipe:
    """The recipe --recipe names, with each piece's flag where given; checked."""
    base = RECIPES[args.recipe]
    if not frozen:  # the MLP head is the frozen settings'; full fine-tuning keeps the torchvision fc
        base = dataclasses.replace(base, head="linear")
    if not pretrained:  # nothing pre-trained to protect with a lower learning rate
        base = dataclasses.replace(base, backbone_lr_scale=1.0)
    picked = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneRecipe)
              if getattr(args, f.name, None) is not None}
    recipe = dataclasses.replace(base, **picked)
    if not 0.0 <= recipe.label_smoothing < 1.0:
        raise UserError("--label-smoothing", f"must be in [0, 1), not {recipe.label_smoothing}", "e.g. 0.1")
    if not 0.0 <= recipe.ema_decay < 1.0:
        raise UserError("--ema-decay", f"must be in [0, 1), not {recipe.ema_decay}", "e.g. 0.999, or 0 for off")
    if not 0.0 < recipe.backbone_lr_scale <= 1.0:
        raise UserError("--backbone-lr-scale", f"must be in (0, 1], not {recipe.backbone_lr_scale}", "e.g. 0.1")
    return recipe


def batch_mixer(mix: str, num_classes: int) -> Callable | None:
    """(images, labels) → (mixed images, soft labels), or None for no mixing."""
    choices = {"mixup": [v2.MixUp(alpha=0.2, num_classes=num_classes)],
               "cutmix": [v2.CutMix(alpha=1.0, num_classes=num_classes)]}
    choices["mixup-cutmix"] = choices["mixup"] + choices["cutmix"]
    return v2.RandomChoice(choices[mix]) if mix != "none" else None


def trivial_augment_batch(images: torch.Tensor) -> torch.Tensor:
    """TrivialAugmentWide on a uint8 batch on the device, each image its own draw (torchvision's draws one op per
    call, so a batched call would give the whole batch the same op)."""
    augment = v2.TrivialAugmentWide()
    return torch.stack([augment(image) for image in images])


def ema_model(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An EMA of `model`'s weights and BN statistics. The decay warms up as (1 + n) / (10 + n) so a short run's
    average is not dominated by its first weights."""

    def average(ema: torch.Tensor, current: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return ema * d + current * (1.0 - d)

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=average, use_buffers=True)
