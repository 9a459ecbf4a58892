"""BYOL pieces around byol-pytorch: per-sample two-view augmentation, view feeding, fused target EMA."""
from __future__ import annotations

import math

import torch
from byol_pytorch import BYOL
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as T

from .data import normalize
from .models import build_resnet

# The BYOL paper's two view distributions (Grill et al. 2020, Table 6): they differ in blur and solarize.
VIEW_PARAMS = ({"blur_p": 1.0, "solarize_p": 0.0}, {"blur_p": 0.1, "solarize_p": 0.2})


def blur_kernel(size: int) -> int:
    """The paper blurs with a kernel ~10% of the image side (23 px at 224); odd, at least 3."""
    k = max(3, int(round(size * 0.1)))
    return k if k % 2 else k + 1


def byol_view_transform(size: int, blur_p: float, solarize_p: float) -> T.Compose:
    """One BYOL view for one PIL image; each call draws its own crop, flip, jitter, blur, solarize."""
    return T.Compose([
        T.PILToTensor(),
        T.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(blur_kernel(size), sigma=(0.1, 2.0))], p=blur_p),
        T.RandomSolarize(threshold=128, p=solarize_p),
        T.ToDtype(torch.float32, scale=True),
        normalize(),
    ])


class TwoViews:
    """Dataset transform: a PIL image → a (2, C, H, W) tensor of the two BYOL views."""

    def __init__(self, size: int) -> None:
        self.views = [byol_view_transform(size, **p) for p in VIEW_PARAMS]

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.stack([view(img) for view in self.views])


class SelectView(nn.Module):
    """byol-pytorch's `augment_fn` hook: pick view i of a (B, 2, C, H, W) batch made per sample.

    A plain (B, C, H, W) batch passes through: byol-pytorch probes its constructor with one.
    """

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index] if x.dim() == 5 else x


def build_byol(arch: str, image_size: int, device: torch.device, *, augment_fns: tuple[nn.Module, nn.Module] | None = None,
               projection_size: int = 256, projection_hidden_size: int = 4096, simplicial: bool = False,
               sync_batchnorm: bool | None = None) -> BYOL:
    """byol-pytorch's BYOL on a torchvision ResNet whose `fc` is removed: its output is the pooled feature."""
    net = build_resnet(arch)
    net.fc = nn.Identity()
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    net = net.to(device, memory_format=memory_format)
    fn1, fn2 = augment_fns or (SelectView(0), SelectView(1))
    return BYOL(
        net, image_size=image_size, hidden_layer=-1, projection_size=projection_size,
        projection_hidden_size=projection_hidden_size, augment_fn=fn1, augment_fn2=fn2,
        use_simplicial_embeddings=simplicial, sync_batchnorm=sync_batchnorm,
    )


def ema_decay(step: int, total_steps: int, start: float) -> float:
    """BYOL's target decay: cosine from `start` at step 0 to 1.0 at the end of training."""
    return 1.0 - (1.0 - start) * (math.cos(math.pi * min(step, total_steps) / max(1, total_steps)) + 1.0) / 2.0


class TargetEMA:
    """Fused target update (one `_foreach_lerp_` over all tensors, no Python loop over parameters)."""

    def __init__(self, byol: BYOL, total_steps: int, start: float) -> None:
        self.online = list(byol.online_encoder.parameters())
        self.target = list(byol.target_encoder.parameters())
        self.total_steps, self.start = total_steps, start

    @torch.no_grad()
    def __call__(self, step: int) -> None:
        tau = ema_decay(step, self.total_steps, self.start)
        torch._foreach_lerp_(self.target, self.online, 1.0 - tau)
