"""BYOL pieces around byol-pytorch: per-sample two-view augmentation, view feeding, fused target EMA."""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import byol_pytorch.byol_pytorch as byol_lib
import torch
import torch.distributed as torch_dist
from byol_pytorch import BYOL
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as T

from ..data.folders import normalize
from ..data.recipes import BYOL_VIEWS, ViewRecipe
from .models import build_resnet


def byol_view_transform(size: int, recipe: ViewRecipe) -> T.Compose:
    """One BYOL view for one PIL image; each call draws its own crop, flip, jitter, blur, solarize."""
    return T.Compose([
        T.PILToTensor(),
        T.RandomResizedCrop(size, scale=recipe.scale, ratio=recipe.ratio, antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(*recipe.jitter)], p=recipe.jitter_p),
        T.RandomGrayscale(p=recipe.gray_p),
        T.RandomApply([T.GaussianBlur(recipe.blur_kernel(size), sigma=recipe.sigma)], p=recipe.blur_p),
        T.RandomSolarize(threshold=128, p=recipe.solarize_p),
        T.ToDtype(torch.float32, scale=True),
        normalize(),
    ])


class TwoViews:
    """Dataset transform: a PIL image → a (2, C, H, W) tensor of the two BYOL views."""

    def __init__(self, size: int, recipes: tuple[ViewRecipe, ViewRecipe] = BYOL_VIEWS) -> None:
        self.views = [byol_view_transform(size, recipe) for recipe in recipes]

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.stack([view(img) for view in self.views])


class SelectView(nn.Module):
    """byol-pytorch's `augment_fn` hook: pick view i of a (B, 2, C, H, W) batch made per sample.

    A plain (B, C, H, W) batch passes through: byol-pytorch probes its constructor with one.
    """

    def __init__(self, index: int, memory_format: torch.memory_format = torch.contiguous_format) -> None:
        super().__init__()
        self.index, self.memory_format = index, memory_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, self.index] if x.dim() == 5 else x
        # The view is a strided slice; hand a channels_last network one copy in its own layout.
        return x.contiguous(memory_format=self.memory_format)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks in forward; the gradient of a sum is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        torch_dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch_dist.all_reduce(grad)
        return grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose batch statistics span every DDP rank through a differentiable all-reduce.

    nn.SyncBatchNorm refuses CPU tensors, so a gloo (CPU) run could not sync the projector; this
    works on any device and backend.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch_dist.is_initialized() and torch_dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        count = torch.full((1,), float(x.shape[0]), dtype=torch.float32, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([x.float().sum(0), (x.float() ** 2).sum(0), count]))
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean ** 2).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * total / (total - 1).clamp_min(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased.detach(), self.momentum)
        y = (x.float() - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


def sync_head_batchnorm(byol: BYOL) -> None:
    """Swap the projector/predictor BatchNorm1d layers (online and target) for globally synced ones."""
    for head in (byol.online_encoder.projector, byol.online_predictor, byol.target_encoder.projector):
        for parent, name, module in [(p, n, c) for p in head.modules() for n, c in p.named_children()]:
            if type(module) is nn.BatchNorm1d:
                synced = GlobalBatchNorm1d(module.num_features, module.eps, module.momentum, module.affine,
                                           module.track_running_stats).to(module.weight.device)
                synced.load_state_dict(module.state_dict())
                synced.weight.requires_grad_(module.weight.requires_grad)
                synced.bias.requires_grad_(module.bias.requires_grad)
                setattr(parent, name, synced)


@contextlib.contextmanager
def _plain_batchnorm() -> Iterator[None]:
    """byol-pytorch 0.9 builds its predictor with nn.SyncBatchNorm whenever a process group exists,
    ignoring `sync_batchnorm=False`, and nn.SyncBatchNorm fails on CPU; build plain, then sync ourselves."""
    original = byol_lib.MaybeSyncBatchnorm
    byol_lib.MaybeSyncBatchnorm = lambda is_distributed=None: nn.BatchNorm1d
    try:
        yield
    finally:
        byol_lib.MaybeSyncBatchnorm = original


def build_byol(arch: str, image_size: int, device: torch.device, *,
               augment_fns: tuple[nn.Module, nn.Module] | None = None, projection_size: int = 256,
               projection_hidden_size: int = 4096, simplicial: bool = False,
               memory_format: torch.memory_format = torch.contiguous_format) -> BYOL:
    """byol-pytorch's BYOL on a torchvision ResNet whose `fc` is removed: its output is the pooled feature.

    `memory_format` is the network's and the per-sample views' layout (`Precision.memory_format`). Under DDP
    the projector and predictor batch-norms are synced across ranks (GlobalBatchNorm1d).
    """
    net = build_resnet(arch)
    net.fc = nn.Identity()
    net = net.to(device, memory_format=memory_format)
    fn1, fn2 = augment_fns or (SelectView(0, memory_format), SelectView(1, memory_format))
    with _plain_batchnorm():
        byol = BYOL(
            net, image_size=image_size, hidden_layer=-1, projection_size=projection_size,
            projection_hidden_size=projection_hidden_size, augment_fn=fn1, augment_fn2=fn2,
            use_simplicial_embeddings=simplicial, sync_batchnorm=False,
        )
    if torch_dist.is_initialized() and torch_dist.get_world_size() > 1:
        sync_head_batchnorm(byol)
    return byol


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
