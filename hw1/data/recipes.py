"""The augmentation recipes and the ImageNet normalisation, written once.

The per-image CPU transforms (`byol.byol_view_transform`, `data.classify_train_transform`) and the batched
device ops (`gpu_aug`, which folds the normalisation into one fused op) are both built from these numbers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 image(s) → float, ImageNet mean/std normalised (what `data.normalize()` does inside a transform)."""
    return TF.normalize(TF.to_dtype(x, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)


@dataclass(frozen=True)
class ViewRecipe:
    """One random view: resized crop, horizontal flip (p 0.5), colour jitter, grayscale, blur, solarize, normalise."""

    scale: tuple[float, float]                        # the crop's area range, as a fraction of the image
    jitter: tuple[float, float, float, float]         # brightness, contrast, saturation, hue strengths (0: off)
    jitter_p: float = 1.0                             # chance the colour jitter is applied at all
    gray_p: float = 0.0
    blur_p: float = 0.0
    solarize_p: float = 0.0
    ratio: tuple[float, float] = (3 / 4, 4 / 3)       # the crop's aspect-ratio range
    sigma: tuple[float, float] = (0.1, 2.0)           # the blur's sigma range

    def blur_kernel(self, size: int) -> int:
        """The BYOL paper blurs with a kernel ~10% of the image side (23 px at 224); odd, at least 3."""
        k = max(3, int(round(size * 0.1)))
        return k if k % 2 else k + 1


_BYOL = dict(scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2)
# BYOL's two view distributions (Grill et al. 2020, Table 6): they differ in blur and solarize.
BYOL_VIEWS = (ViewRecipe(**_BYOL, blur_p=1.0), ViewRecipe(**_BYOL, blur_p=0.1, solarize_p=0.2))

# Fine-tuning: a milder crop and jitter, nothing else.
FINETUNE_VIEW = ViewRecipe(scale=(0.5, 1.0), jitter=(0.2, 0.2, 0.2, 0.0))


def byol_views(crop_min_scale: float = BYOL_VIEWS[0].scale[0]) -> tuple[ViewRecipe, ViewRecipe]:
    """BYOL's two views with the crop's smallest area set (`p1_pretrain.py --crop-min-scale`)."""
    return tuple(dataclasses.replace(v, scale=(crop_min_scale, v.scale[1])) for v in BYOL_VIEWS)  # type: ignore
