"""reproduce.py's presets as data: per preset, what it runs and the flags each stage adds to the script's defaults."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..p1 import finetune_recipe
from ..p1.settings import SETTINGS
from ..samples import fashion

# Per preset: the sample data to write (None: use the course data; "fashion": Fashion-MNIST, samples/fashion.py), the
# problems it runs (default both), then extra flags per stage ("<stage>_strong": added under --recipe strong).
# Everything not named here is the script's default, i.e. the reference recipe.
PRESETS: dict[str, dict] = {
    "full": {
        "description": "The reference recipe (SPEC §5) on the course data: ResNet50 BYOL for 1000 epochs, fine-tuning "
                       "A–E and the control E0 for 500 epochs, VGG16-FCN32s and DeepLabV3-ResNet101 at 512 px from "
                       "torchvision's pretrained weights (docs/presets.md).",
        "sample_data": None, "workers": None,
        "byol": [], "supervised": ["--epochs", "100"], "finetune": [], "probe": [], "tsne": [],
        "fcn32s": [], "deeplabv3": [],
    },
    "sample": {
        "description": "The sample preset: ResNet18 at 32 px on synthetic data in the course layout (classes by shape "
                       "and fill pattern, never colour), tens to hundreds of steps, both segmentation models from "
                       "random weights; a few minutes on two CPU cores (docs/presets.md). Absolute numbers are "
                       "far below the reference; the Findings say which of the homework's comparisons this small run "
                       "shows.",
        "sample_data": "sample", "workers": "1",
        # batched views (--gpu-aug): cheaper than per-image PIL on the CPU too (BENCHMARKS.md, "aug")
        "byol": ["--arch", "resnet18", "--image-size", "32", "--epochs", "6", "--batch-size", "64", "--lr", "1e-3",
                 "--warmup-steps", "10", "--projection-hidden-size", "1024", "--gpu-aug", "--eval-every", "1"],
        "supervised": ["--arch", "resnet18", "--image-size", "32", "--epochs", "4", "--batch-size", "64",
                       "--lr", "2e-3", "--warmup-steps", "10"],
        "finetune": ["--arch", "resnet18", "--image-size", "32", "--epochs", "8", "--batch-size", "64", "--lr", "2e-3",
                     "--warmup-steps", "10"],
        "probe": ["--arch", "resnet18", "--image-size", "32", "--epochs", "10", "--batch-size", "64", "--lr", "1e-2",
                  "--warmup-steps", "10"],
        "probe_strong": ["--epochs", "60", "--lr", "1e-3"],  # as the fashion preset's (measured there)
        "tsne": ["--perplexity", "20"],
        # vgg16_bn: plain VGG16 does not train from random weights; 96 px, narrow fc6/fc7: cheap steps (README)
        "fcn32s": ["--weights", "none", "--vgg", "vgg16_bn", "--fc-width", "512", "--image-size", "96",
                   "--epochs", "24", "--batch-size", "8", "--lr", "2e-3", "--warmup-steps", "10", "--eval-every", "6",
                   "--save-every", "6", "--bn-recalibrate", "3"],
        "deeplabv3": ["--weights", "none", "--arch", "deeplabv3_mobilenet_v3_large", "--image-size", "128",
                      "--epochs", "50", "--batch-size", "8", "--aux-weight", "0", "--lr", "4e-3",
                      "--warmup-steps", "10", "--eval-every", "10", "--bn-recalibrate", "3"],
    },
    "fashion": {
        "description": "The Fashion-MNIST preset: Problem 1 on real photographs (Fashion-MNIST's 28 px grayscale "
                       "product photos, SPEC §10) laid out as the course's data by `hw1/samples/fashion.py`: "
                       "10,000 unlabelled "
                       "training images to pre-train on, 50 labelled a class to fine-tune on, 100 a class from the "
                       "test set to validate on; ResNet18 at 32 px on two CPU cores (docs/presets.md). Problem 2 "
                       "is left out: its only data here is synthetic (`--preset sample` runs it).",
        "sample_data": "fashion", "workers": "1", "problems": ("p1",),
        "data_note": "real photographs, Fashion-MNIST (SPEC §10), that `hw1/samples/fashion.py` lays out in the course "
                     "layout: "
                     "10 classes of clothing, 28 px grayscale",
        "classes_note": "One Office-Home-layout training image per class, classes 0–9 left to right: "
                        + ", ".join(fashion.CLASSES) + " (Fashion-MNIST).",
        # 468 steps; crops of at least 20% of a 28 px image (docs/presets.md: what was tried)
        "byol": ["--arch", "resnet18", "--image-size", "32", "--epochs", "3", "--batch-size", "64", "--lr", "1e-3",
                 "--warmup-steps", "10", "--projection-hidden-size", "1024", "--gpu-aug", "--eval-every", "1",
                 "--crop-min-scale", "0.2"],
        "supervised": ["--arch", "resnet18", "--image-size", "32", "--epochs", "2", "--batch-size", "64",
                       "--lr", "2e-3", "--warmup-steps", "10"],
        # 5e-4, not the sample's 2e-3: at 2e-3 B's first epoch erases what its frozen probe D shows (docs/presets.md)
        "finetune": ["--arch", "resnet18", "--image-size", "32", "--epochs", "8", "--batch-size", "64", "--lr", "5e-4",
                     "--warmup-steps", "10"],
        "probe": ["--arch", "resnet18", "--image-size", "32", "--epochs", "10", "--batch-size", "64", "--lr", "1e-2",
                  "--warmup-steps", "10"],
        # --recipe strong: its BN-MLP probe for 6x the steps at 1e-3 (docs/recipes.md); full fine-tuning as the seed's
        "probe_strong": ["--epochs", "60", "--lr", "1e-3"],
        "tsne": ["--perplexity", "20"],
    },
    "tiny": {
        "description": "The tiny preset (tests): every stage for one or two optimiser steps on tiny synthetic data.",
        "sample_data": "tiny", "workers": "0",
        "byol": ["--arch", "resnet18", "--image-size", "32", "--epochs", "1", "--batch-size", "32",
                 "--max-steps", "1", "--projection-hidden-size", "64", "--projection-size", "32"],
        "supervised": ["--arch", "resnet18", "--image-size", "32", "--epochs", "1", "--batch-size", "32",
                       "--max-steps", "1"],
        "finetune": ["--arch", "resnet18", "--image-size", "32", "--epochs", "2", "--batch-size", "128"],
        "probe": ["--arch", "resnet18", "--image-size", "32", "--epochs", "2", "--batch-size", "128"],
        "tsne": ["--perplexity", "5"],
        "fcn32s": ["--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--max-steps", "1"],
        "deeplabv3": ["--weights", "none", "--arch", "deeplabv3_mobilenet_v3_large", "--image-size", "32",
                      "--epochs", "2", "--batch-size", "8", "--max-steps", "2", "--aux-weight", "0"],
    },
}


def finetune_flags(preset: dict, frozen: bool, recipe: str, pretrained: bool = True) -> list[str]:
    """A fine-tuning stage's flags under a preset: the probe's (frozen settings) or full fine-tuning's, then for a
    recipe other than the seed's `--recipe` and the preset's flags for it (`probe_strong`…); the seed's flags alone
    where that recipe trains exactly the seed's run (strong's full fine-tuning: its MLP head is the probes')."""
    kind = "probe" if frozen else "finetune"
    extra = preset.get(f"{kind}_{recipe}", [])
    if recipe == "seed" or not extra and _resolved(recipe, frozen, pretrained) == _resolved("seed", frozen, pretrained):
        return list(preset[kind])
    return [*preset[kind], "--recipe", recipe, *extra]


def _resolved(recipe: str, frozen: bool, pretrained: bool) -> finetune_recipe.FinetuneRecipe:
    """What p1_finetune.py trains with under `--recipe recipe` and no piece's flag."""
    return finetune_recipe.from_args(argparse.Namespace(recipe=recipe), frozen, pretrained)


def shared_with_seed(preset: dict) -> dict[str, tuple[str, ...]]:
    """Per recipe other than the seed's, the settings it fine-tunes with the seed's flags: reproduce.py runs those
    once, under the seed's names and folders, and both recipes' columns read that run."""
    return {recipe: tuple(name for name, s in SETTINGS.items()
                          if finetune_flags(preset, s.frozen, recipe, s.needs_backbone)
                          == finetune_flags(preset, s.frozen, "seed"))
            for recipe in finetune_recipe.RECIPES if recipe != "seed"}


GIVEN_BACKBONE = Path("p1_data") / "pretrain_model_SL.pt"  # the course's supervised ResNet50 backbone
MODEL_TREES = {"classifier": "ResNet50 classifier (settings A–E)", "fcn32s": "model A: VGG16-FCN32s",
               "deeplabv3": "model B: DeepLabV3-ResNet101"}
