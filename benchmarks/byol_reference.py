"""byol-pytorch's own BYOL, built as its README shows it: the one reference pipeline the benchmarks compare with.

`BYOL(resnet, image_size, hidden_layer='avgpool')` on a torchvision ResNet that keeps its classifier layer (the
hook reads the pooled feature), trained with `update_moving_average()` after each step (its fixed 0.99 decay). Every
byol-pytorch default unless a caller says otherwise: 4096-wide projector and predictor, simplicial embeddings on
(0.9.1), its batch-wide augmentation (one draw of each op for the whole batch) on float images in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def build(arch: str, image_size: int, device: torch.device, *, projection_hidden_size: int = 4096,
          simplicial: bool = True, augment_fns: tuple[nn.Module, nn.Module] | None = None) -> nn.Module:
    """byol-pytorch's BYOL on a random torchvision `arch`; `augment_fns` replace its augmentation (view hooks)."""
    import torchvision
    from byol_pytorch import BYOL

    net = torchvision.models.get_model(arch, weights=None).to(device)
    fn1, fn2 = augment_fns or (None, None)
    return BYOL(net, image_size=image_size, hidden_layer="avgpool", projection_hidden_size=projection_hidden_size,
                use_simplicial_embeddings=simplicial, augment_fn=fn1, augment_fn2=fn2)


def float_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, 3, H, W) → float in [0, 1] at `size` px: the input its own augmentation expects."""
    x = images.float().div_(255)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x
