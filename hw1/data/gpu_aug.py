"""Random views as batched tensor ops on any device: uint8 (B, 3, H, W) in, normalised float out. BYOL's two
views (`--gpu-aug` of p1_pretrain.py) and fine-tuning's crop, flip and jitter (`--gpu-aug` of p1_finetune.py).

Each image draws its own crop, flip, jitter (with its own order of the jitter steps, as torchvision's ColorJitter
does per call), grayscale, blur sigma and solarize from the same recipe (`hw1.data.recipes`) as the per-image CPU path.
With the same parameters the output equals torchvision's per-image ops (tests/test_speed.py), except that values
stay float between steps (torchvision rounds to uint8 after each) and the bilinear crop reads the real neighbouring
pixel at the crop's 1-px border, where torchvision repeats the edge.

Why our own ops (the measured comparison: BENCHMARKS.md, bench.py's `aug` section): torchvision v2 on a batch draws
one set of parameters for the whole batch, and per sample it is a Python loop; kornia draws per sample but applies
one jitter order per batch and reads that order back to the host (a sync on a GPU). Here the parameters are drawn
on the host from a CPU generator (the same seed gives the same views on CPU and GPU, and nothing is read back from
the device); the crop is one `roi_align` over per-sample boxes; each jitter step runs on a contiguous slice of a
batch sorted by the step each image takes at each position.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import roi_align

from .. import compat
from ..train.distributed import step_seed
from .recipes import BYOL_VIEWS, IMAGENET_MEAN, IMAGENET_STD, ViewRecipe

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


@dataclass
class ViewParams:
    """One view's per-image parameters, all CPU tensors of length B, and the recipe they were drawn from."""

    boxes: torch.Tensor     # (B, 4) crop x1, y1, x2, y2 in source pixels (integers, as torchvision draws them)
    flip: torch.Tensor      # (B,) bool
    jitter: torch.Tensor    # (B,) bool: colour jitter applied
    factors: torch.Tensor   # (B, 4) brightness, contrast, saturation factors and hue shift
    order: torch.Tensor     # (B, 4) each image's order of the four jitter steps (a permutation of 0..3)
    gray: torch.Tensor      # (B,) bool
    blur: torch.Tensor      # (B,) bool
    sigma: torch.Tensor     # (B,) blur sigma (drawn for every image, used where `blur`)
    solarize: torch.Tensor  # (B,) bool
    recipe: ViewRecipe      # its jitter steps of strength 0 are skipped

    def crop_area(self, height: int, width: int) -> torch.Tensor:
        """Each crop's area as a fraction of the source image."""
        b = self.boxes
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (height * width)


def sample_crops(n: int, height: int, width: int, recipe: ViewRecipe, gen: torch.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop draw, for n images at once: 10 tries, else a centre crop."""
    area, (r0, r1) = height * width, recipe.ratio
    target = area * torch.empty(n, 10, dtype=torch.float64).uniform_(*recipe.scale, generator=gen)
    log_r = torch.empty(n, 10, dtype=torch.float64).uniform_(math.log(r0), math.log(r1), generator=gen)
    w = torch.sqrt(target * log_r.exp()).round()
    h = torch.sqrt(target / log_r.exp()).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(1, keepdim=True)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    found = ok.any(1)
    fw, fh = _centre_crop_size(height, width, recipe.ratio)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    u = torch.rand(n, 2, dtype=torch.float64, generator=gen)
    top = torch.where(found, (u[:, 0] * (height - h + 1)).floor(), (height - h) // 2)
    left = torch.where(found, (u[:, 1] * (width - w + 1)).floor(), (width - w) // 2)
    return torch.stack([left, top, left + w, top + h], 1).float()


def _centre_crop_size(height: int, width: int, ratios: tuple[float, float]) -> tuple[float, float]:
    ratio = width / height
    if ratio < ratios[0]:
        return float(width), float(round(width / ratios[0]))
    if ratio > ratios[1]:
        return float(round(height * ratios[1])), float(height)
    return float(width), float(height)


def sample_view(n: int, height: int, width: int, recipe: ViewRecipe, gen: torch.Generator) -> ViewParams:
    """Draw one view's parameters for n images of height x width (every draw is made whatever the recipe, so a
    generator's stream does not depend on it)."""
    def coin(p: float) -> torch.Tensor:
        return torch.rand(n, generator=gen) < p

    b, c, s, hue = recipe.jitter
    lo = torch.tensor([1 - b, 1 - c, 1 - s, -hue])
    hi = torch.tensor([1 + b, 1 + c, 1 + s, hue])
    return ViewParams(
        boxes=sample_crops(n, height, width, recipe, gen), flip=coin(0.5), jitter=coin(recipe.jitter_p),
        factors=lo + (hi - lo) * torch.rand(n, 4, generator=gen), order=torch.rand(n, 4, generator=gen).argsort(1),
        gray=coin(recipe.gray_p), blur=coin(recipe.blur_p), sigma=torch.empty(n).uniform_(*recipe.sigma, generator=gen),
        solarize=coin(recipe.solarize_p), recipe=recipe,
    )


# ---------------------------------------------------------------- ops on float (N, 3, H, W) in [0, 255]
# Pixel values stay in 0..255 until the final normalisation (saves a pass); the jitter steps write
# into their slice in place where they can.


def gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def _per_image(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def brightness_(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x.mul_(_per_image(f)).clamp_(0, 255)


def contrast_(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = gray(x).mean((-3, -2, -1), keepdim=True)
    return x.lerp_(mean, 1 - _per_image(f)).clamp_(0, 255)


def saturation_(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x.lerp_(gray(x), 1 - _per_image(f)).clamp_(0, 255)


def hue_(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by f turns; value and saturation stay (torchvision's adjust_hue, in closed form)."""
    r, g, b = x.unbind(-3)
    maxc, minc = x.amax(-3), x.amin(-3)
    chroma = maxc - minc
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h6 = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h6 = h6.add_(6 * f.view(-1, 1, 1))
    # HSV → RGB: channel = V - C * clamp(min(k, 4 - k), 0, 1), k = (n + H/60°) mod 6
    for c, n in enumerate((5, 3, 1)):
        k = torch.remainder(h6 + n, 6)
        x[:, c] = maxc - chroma * torch.minimum(k, 4 - k).clamp_(0, 1)
    return x


JITTER_STEPS = (brightness_, contrast_, saturation_, hue_)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur with each image's own sigma, reflect padding (torchvision's GaussianBlur)."""
    n, c, h, w = x.shape
    t = torch.arange(kernel, device=x.device, dtype=x.dtype) - (kernel - 1) / 2
    k = torch.exp(-0.5 * (t / sigma.to(x.dtype).view(-1, 1)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, kernel)
    pad = kernel // 2
    y = nn.functional.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = nn.functional.conv2d(y, k.view(n * c, 1, 1, kernel), groups=n * c)
    y = nn.functional.conv2d(y, k.view(n * c, 1, kernel, 1), groups=n * c)
    return y.view(n, c, h, w)


# ---------------------------------------------------------------- the plan (host) and its execution (device)
# Each jitter position k sorts the batch by the step each image takes there (images without jitter
# last), so a step is one contiguous slice. A last sort groups images by (blur, solarize, gray,
# flip): flip and grayscale commute with the blur (same symmetric kernel on every channel), so all
# three, and solarize after them, are slices too. One gather at the end restores the batch order.


@dataclass
class _Plan:
    rois: torch.Tensor      # (B, 5) float: batch index, box
    sorts: torch.Tensor     # (5, B) long: the gather before each of 4 jitter positions and the last grouping
    restore: torch.Tensor   # (B,) long: back to the batch order
    factors: torch.Tensor   # (4, B, 4) float: jitter factors in each position's row order
    sigma: torch.Tensor     # (B,) float: blur sigma in the last order
    bounds: list[list[int]]                   # per position: row where each of steps 0..3 ends
    groups: list[tuple[int, int, int]]        # last order: (start, end, code) of each non-empty group
    n_blur: int


_FLIP, _GRAY, _SOLARIZE, _BLUR = 1, 2, 4, 8


def _plan(p: ViewParams) -> _Plan:
    n = p.flip.shape[0]
    perm, sorts, factors, bounds = torch.arange(n), [], [], []
    for k in range(4):
        key = torch.where(p.jitter, p.order[:, k], 4)[perm]
        sort = key.argsort(stable=True)
        perm = perm[sort]
        sorts.append(sort)
        factors.append(p.factors[perm])
        bounds.append(torch.bincount(key, minlength=5).cumsum(0)[:4].tolist())
    code = (p.flip * _FLIP + p.gray * _GRAY + p.solarize * _SOLARIZE + p.blur * _BLUR)[perm]
    sort = (-code).argsort(stable=True)  # blur first, then solarize, …
    perm = perm[sort]
    sorts.append(sort)
    counts = torch.bincount(code, minlength=16).flip(0)
    ends = counts.cumsum(0).tolist()
    groups = [(e - c, e, 15 - i) for i, (c, e) in enumerate(zip(counts.tolist(), ends)) if c]
    rois = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], p.boxes], 1)
    return _Plan(rois, torch.stack(sorts), perm.argsort(), torch.stack(factors), p.sigma[perm], bounds, groups,
                 int(p.blur.sum()))


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host → device without a sync: pinned memory and a non-blocking copy."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of x in `index` order (on 2-D rows: the CPU kernel is ~10x faster than on 4-D)."""
    return x.view(x.shape[0], -1).index_select(0, index).view_as(x)


def apply_view(images: torch.Tensor, p: ViewParams, size: int,
               memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Augment a uint8 (B, 3, H, W) batch with the drawn parameters → normalised float (B, 3, size, size)
    in `memory_format` (the network's)."""
    dev, plan = images.device, _plan(p)
    rois, factors, sigma = (_to(t, dev) for t in (plan.rois, plan.factors, plan.sigma))
    sorts, restore = _to(plan.sorts, dev), _to(plan.restore, dev)
    x = roi_align(images.float(), rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    for k in range(4):
        x = _gather(x, sorts[k])
        for step, (a, z) in enumerate(zip([0] + plan.bounds[k][:3], plan.bounds[k])):
            if z > a and p.recipe.jitter[step] > 0:
                JITTER_STEPS[step](x[a:z], factors[k, a:z, step])
    x = _gather(x, sorts[4])
    for a, z, code in plan.groups:
        if code & _GRAY:
            x[a:z] = gray(x[a:z])
        if code & _FLIP:
            x[a:z] = x[a:z].flip(-1)
    if plan.n_blur:
        x[:plan.n_blur] = gaussian_blur(x[:plan.n_blur], sigma[:plan.n_blur], p.recipe.blur_kernel(size))
    for a, z, code in plan.groups:
        if code & _SOLARIZE:
            s = x[a:z]
            s.copy_(torch.where(s >= 128, 255 - s, s))
    scale = _to(torch.tensor([1 / (255 * s) for s in IMAGENET_STD]), dev).view(1, 3, 1, 1)
    shift = _to(torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]), dev).view(1, 3, 1, 1)
    x = torch.addcmul(shift, _gather(x, restore), scale)
    return x.contiguous(memory_format=memory_format)


class BatchView(nn.Module):
    """One view of a uint8 batch, each image its own draw from `recipe` (also byol-pytorch's `augment_fn` hook).

    A float batch passes through unchanged: byol-pytorch probes its constructor with `randn`. The view is
    computed in fp32 whatever autocast the caller runs under (BYOL's forward runs under bf16/fp16).
    """

    def __init__(self, size: int, recipe: ViewRecipe, generator: torch.Generator,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        super().__init__()
        self.size, self.recipe, self.generator = size, recipe, generator
        self.memory_format = memory_format
        self.last: ViewParams | None = None

    def reseed(self, seed: int, rank: int, step: int) -> None:
        """Draw a step's views from (seed, rank, step) alone: a resume, on any rank, draws them again."""
        self.generator.manual_seed(step_seed(seed, rank, step))

    def sample(self, n: int, height: int, width: int) -> ViewParams:
        return sample_view(n, height, width, self.recipe, self.generator)

    @torch.compiler.disable  # host-side draws and data-dependent slices: keep it out of torch.compile graphs
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        # Under bf16 autocast the blur convolution alone moved pixels by up to 0.03 (normalised units).
        with torch.profiler.record_function("augment: view"), torch.autocast(images.device.type, enabled=False):
            self.last = self.sample(images.shape[0], images.shape[-2], images.shape[-1])
            return apply_view(images, self.last, self.size, self.memory_format)

    def extra_repr(self) -> str:
        return f"size={self.size}, {self.recipe}"


def add_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--gpu-aug", action=compat.BooleanOptionalAction, default=None,
                        help=f"{what} as batched tensor ops on the training device, from uint8 batches (default: on "
                             "with CUDA); --no-gpu-aug: per image with torchvision in the loader workers")


def wanted(flag: bool | None, device: torch.device) -> bool:
    """--gpu-aug's value: on with CUDA unless the user said otherwise."""
    return device.type == "cuda" if flag is None else flag


def batch_views(size: int, seed: int = 0, memory_format: torch.memory_format = torch.contiguous_format,
                recipes: tuple[ViewRecipe, ViewRecipe] = BYOL_VIEWS) -> tuple[BatchView, BatchView]:
    """The two BYOL views (hw1.data.recipes.BYOL_VIEWS by default) sharing one seeded host generator."""
    gen = torch.Generator().manual_seed(seed)
    v1, v2 = (BatchView(size, recipe, gen, memory_format) for recipe in recipes)
    return v1, v2
