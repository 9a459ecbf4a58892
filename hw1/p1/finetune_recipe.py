"""Fine-tuning recipes (`p1_finetune.py --recipe`): the seed report's (SPEC §5, the default) and a stronger one,
each a bundle of pieces that a flag of its own can also set; and the pieces that torchvision/torch lack."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torchvision.transforms import v2

from ..errors import UserError
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


class WeightEMA(nn.Module):
    """An EMA of `model`'s weights and BN statistics (`module`: evaluated and kept as best.pt), updated by `update`
    after each optimiser step. Build it after placing the model: it holds the model's tensors from then on."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        fixed = {id(t): t for t in _fixed_tensors(model)}
        # A frozen part is its own average: `module` shares its tensors (and the counters) with `model`, uncopied.
        self.module = copy.deepcopy(model, memo=dict(fixed))
        self.register_buffer("n_averaged", torch.zeros((), dtype=torch.long))  # last.pt's key, as AveragedModel's
        self.decay, self.updates = decay, 0  # `updates`: n_averaged on the host, so the decay needs no device sync
        live = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
        mine = dict(itertools.chain(self.module.named_parameters(), self.module.named_buffers()))
        averaged = [name for name, t in live.items() if id(t) not in fixed]
        self.averaged, self.live = [mine[n] for n in averaged], [live[n] for n in averaged]

    @torch.no_grad()
    def update(self) -> None:
        """Average the model's current weights in, in one multi-tensor op. The decay warms up as (1 + n) / (10 + n),
        so a short run's average is not dominated by its first weights; the first update copies them."""
        n = self.updates
        decay = min(self.decay, (1.0 + n) / (10.0 + n)) if n else 0.0
        if self.averaged:
            torch._foreach_lerp_(self.averaged, self.live, 1.0 - decay)  # at weight 1 (decay 0) lerp is a copy
        self.updates = n + 1
        self.n_averaged.fill_(self.updates)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """`nn.Module.load_state_dict`, and the host's count of updates with it."""
        result = super().load_state_dict(*args, **kwargs)
        self.updates = int(self.n_averaged)
        return result


def _fixed_tensors(model: nn.Module) -> list[torch.Tensor]:
    """What an EMA of `model` need not average: frozen parameters, the buffers of a module whose parameters are all
    frozen (a frozen backbone's BN statistics, kept by its eval mode) and counters (BN's num_batches_tracked)."""
    fixed: list[torch.Tensor] = [p for p in model.parameters() if not p.requires_grad]
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        frozen = bool(own) and not any(p.requires_grad for p in own)
        fixed += [b for b in module.buffers(recurse=False) if frozen or not b.is_floating_point()]
    return fixed
