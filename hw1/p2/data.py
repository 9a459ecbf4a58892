"""Problem 2 data: the mask colour codec, sat/mask pairs, joint augmentation, synthetic sample data."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .. import io
from ..data.folders import load_rgb
from ..data.recipes import normalize_uint8
from ..errors import WARNINGS, UserError

CLASS_NAMES = ("urban", "agriculture", "rangeland", "forest", "water", "barren", "unknown")
CLASS_COLOURS = np.array([(0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0),
                          (0, 0, 255), (255, 255, 255), (0, 0, 0)], dtype=np.uint8)
NUM_CLASSES = len(CLASS_NAMES)
UNKNOWN = 6
EVAL_CLASSES = 6                 # mIoU averages classes 0..5; Unknown is not a scored class
IGNORE_INDEX = 255               # never produced by the codec; losses skip it
# The course's reader: channels thresholded at 128, code = 4R + 2G + B, then this table.
# Code 4 (pure red) is no class; the course leaves it unassigned, we read it as Unknown and warn.
CODE_TO_CLASS = np.array([6, 4, 3, 0, 6, 2, 1, 5], dtype=np.uint8)
RED_CODE = 4
SAT_SUFFIX, MASK_SUFFIX = "_sat.jpg", "_mask.png"
AUGMENTS = ("none", "flip", "flip+scale")
SNAPSHOT_STEMS = ("0013", "0062", "0104")


# ---------------------------------------------------------------- colour codec


def classes_to_rgb(ids: np.ndarray) -> np.ndarray:
    """H x W class ids → H x W x 3 uint8 map colours."""
    return CLASS_COLOURS[np.asarray(ids, dtype=np.intp)]


def rgb_to_classes(rgb: np.ndarray, where: object = "mask") -> np.ndarray:
    """H x W x 3 colours → H x W class ids by the course's rule; pure-red pixels become Unknown (counted)."""
    bits = (np.asarray(rgb)[..., :3] >= 128).astype(np.uint8)
    code = 4 * bits[..., 0] + 2 * bits[..., 1] + bits[..., 2]
    n_red = int(np.count_nonzero(code == RED_CODE))
    if n_red:
        WARNINGS.add("pure-red mask pixels (code 4, no class) read as Unknown", f"{where}: {n_red} px", n_red)
    return CODE_TO_CLASS[code]


def read_mask(path: str | os.PathLike) -> np.ndarray:
    return rgb_to_classes(np.asarray(load_rgb(path)), where=path)


def write_mask(path: str | os.PathLike, ids: np.ndarray) -> None:
    """An RGB PNG of map colours, written atomically (never a partial file)."""
    with io.atomic_path(path) as tmp:
        Image.fromarray(classes_to_rgb(ids), "RGB").save(tmp, format="PNG")


# ---------------------------------------------------------------- pairs and the dataset


@dataclass
class Pair:
    stem: str
    image: Path
    mask: Path | None


def image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(path, f"unreadable image ({str(err).splitlines()[0][:100]})",
                        "replace or remove the file") from err


def find_pairs(folder: str | os.PathLike, *, need_masks: bool) -> list[Pair]:
    """Every `xxxx_sat.jpg` in `folder`, with its `xxxx_mask.png` (required, same size) when `need_masks`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(folder, "folder not found",
                        "check the path (training reads DATA_ROOT/p2_data/{train,validation})")
    images = sorted(p for p in folder.iterdir() if p.name.lower().endswith(SAT_SUFFIX) and not p.name.startswith("."))
    if not images:
        raise UserError(folder, f"no xxxx{SAT_SUFFIX} images in this folder", "check the path")
    pairs = []
    for image in images:
        stem = image.name[:-len(SAT_SUFFIX)]
        mask = folder / f"{stem}{MASK_SUFFIX}"
        if need_masks:
            if not mask.is_file():
                raise UserError(mask, f"mask missing for image {image.name}",
                                f"every xxxx{SAT_SUFFIX} needs its xxxx{MASK_SUFFIX} beside it")
            (iw, ih), (mw, mh) = image_size_of(image), image_size_of(mask)
            if (iw, ih) != (mw, mh):
                raise UserError(mask, f"mask is {mw}x{mh} but its image {image.name} is {iw}x{ih}",
                                "a mask must have its image's width and height")
        pairs.append(Pair(stem, image, mask if need_masks else None))
    return pairs


def resize_image(x: torch.Tensor, size: int) -> torch.Tensor:
    """A uint8 C x H x W image resized (bilinear, antialiased) to size x size, if it is not already."""
    return x if x.shape[-2:] == (size, size) else TF.resize(x, [size, size], antialias=True)


def resize_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Class ids resized by nearest neighbour, so no in-between ids appear."""
    if mask.shape[-2:] == (size, size):
        return mask
    return TF.resize(mask[None], [size, size], interpolation=InterpolationMode.NEAREST_EXACT)[0]


def joint_augment(image: torch.Tensor, mask: torch.Tensor, augment: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random geometry on image (C x H x W) and mask (H x W), drawn from torch's RNG.

    `flip`: identity, horizontal or vertical flip, equally likely (the reference report's set).
    `flip+scale`: first a random square crop of 50-100% of the side, resized back (zoom in).
    """
    if augment == "none":
        return image, mask
    if augment == "flip+scale":
        h, w = mask.shape
        side = max(1, int(min(h, w) * float(torch.empty(()).uniform_(0.5, 1.0))))
        top, left = int(torch.randint(0, h - side + 1, ())), int(torch.randint(0, w - side + 1, ()))
        image = TF.resize(image[:, top:top + side, left:left + side], [h, w], antialias=True)
        mask = TF.resize(mask[None, top:top + side, left:left + side], [h, w],
                         interpolation=InterpolationMode.NEAREST_EXACT)[0]
    choice = int(torch.randint(0, 3, ()))
    if choice:
        dim = -1 if choice == 1 else -2
        image, mask = image.flip(dim), mask.flip(dim)
    return image, mask


class SatMaskDataset(Dataset):
    """Items `{"image", "mask"}` or, without masks, `{"image", "size", "index"}` (size = original H, W).

    The image is resized to `size`; the training mask too (nearest), while `full_res_masks` keeps
    the mask at its own size so validation scores at the labels' resolution, as the course does.
    """

    def __init__(self, pairs: list[Pair], size: int, *, augment: str = "none", full_res_masks: bool = False) -> None:
        if augment not in AUGMENTS:
            raise UserError("--augment", f"unknown augmentation {augment!r}", f"use one of {', '.join(AUGMENTS)}")
        self.pairs, self.size, self.augment, self.full_res_masks = pairs, size, augment, full_res_masks

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        img = load_rgb(pair.image)
        x = resize_image(TF.pil_to_tensor(img), self.size)
        if pair.mask is None:
            return {"image": normalize_uint8(x), "size": torch.tensor([img.height, img.width]), "index": index}
        mask = torch.from_numpy(read_mask(pair.mask).astype(np.int64))
        if not self.full_res_masks:
            x, mask = joint_augment(x, resize_mask(mask, self.size), self.augment)
        return {"image": normalize_uint8(x), "mask": mask}


def collate(items: list[dict]) -> dict:
    """Stack each field; masks of different sizes (validation at native resolution) stay a list."""
    batch = {}
    for key in items[0]:
        values = [torch.as_tensor(it[key]) for it in items]
        same = all(v.shape == values[0].shape for v in values)
        batch[key] = torch.stack(values) if same else values
    return batch


# ---------------------------------------------------------------- synthetic sample data

# Each class is a texture as well as a colour, as real land cover is. Lengths are in pixels of a
# 512 px image (scaled with the image). Each image gets its own lighting and each region its own
# tint, so the base colours overlap and a model has to read structure too.
_BASE = np.array([(135, 135, 140), (150, 160, 75), (150, 135, 95), (45, 85, 45), (40, 65, 105),
                  (195, 185, 165), (10, 10, 10)], np.float32)


def _sample_regions(rng: np.random.Generator, size: int, classes: list[int]) -> np.ndarray:
    """A warped Voronoi map: one region per entry of `classes` (so large, irregular regions)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    warp = 0.06 * np.sin(2 * np.pi * (rng.uniform(1, 3) * yy + rng.uniform()))
    xx = xx + warp
    yy = yy + 0.06 * np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + rng.uniform()))
    seeds = rng.uniform(0, 1, (len(classes), 2)).astype(np.float32)
    dist = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    return np.asarray(classes, dtype=np.uint8)[dist.argmin(0)]


def _smooth_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Noise of unit sd whose blobs are about `cell` px wide (a coarse grid, upsampled bicubically)."""
    coarse = rng.normal(0, 1, (max(2, math.ceil(size / cell) + 1),) * 2).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.BICUBIC))
    return (field - field.mean()) / (field.std() + 1e-6)


def _shade(rng: np.random.Generator, c: int, size: int) -> np.ndarray:
    """Class `c`'s brightness pattern (about 1) over the whole canvas; the caller keeps its region."""
    s = size / 512
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    grain = rng.normal(0, 1, (size, size)).astype(np.float32)
    if c == 0:  # urban: a grid of blocks, each roof its own brightness, between darker streets
        cell = rng.uniform(26, 40) * s
        u, v = (xx + rng.uniform(0, cell)) / cell, (yy + rng.uniform(0, cell)) / cell
        roofs = rng.uniform(0.6, 1.4, (int(v.max()) + 1, int(u.max()) + 1))
        street = (u % 1 < 0.2) | (v % 1 < 0.2)
        return np.where(street, 0.5, roofs[v.astype(int), u.astype(int)]) + 0.05 * grain
    if c == 1:  # agriculture: parallel stripes of alternating crops, one direction per field
        theta = rng.uniform(0, np.pi)
        t = (xx * np.cos(theta) + yy * np.sin(theta)) / (rng.uniform(18, 28) * s)
        return 1 + 0.22 * np.sign(np.sin(2 * np.pi * t)) + 0.05 * grain
    if c == 2:  # rangeland: speckled, dark shrubs scattered over dry grass
        return 1 - 0.35 * (_smooth_noise(rng, size, 7 * s) > 1.0) + 0.1 * grain
    if c == 3:  # forest: blobby canopy, bright crowns and dark gaps
        return 0.8 + 0.35 * np.tanh(2 * _smooth_noise(rng, size, 12 * s)) + 0.05 * grain
    if c == 4:  # water: smooth, with slow low-frequency ripples
        theta = rng.uniform(0, np.pi)
        t = (xx * np.cos(theta) + yy * np.sin(theta)) / (rng.uniform(50, 80) * s)
        return 1 + 0.07 * np.sin(2 * np.pi * t + _smooth_noise(rng, size, 100 * s)) + 0.015 * grain
    if c == 5:  # barren: bright and grainy
        return 1 + 0.07 * _smooth_noise(rng, size, 30 * s) + 0.11 * grain
    return 1 + 0.3 * grain  # unknown: black, a little noise


def _render(rng: np.random.Generator, ids: np.ndarray) -> np.ndarray:
    """The satellite image of a class map: each region its class's texture and a tint, the image one lighting."""
    size = ids.shape[0]
    img = np.zeros((size, size, 3), np.float32)
    for c in np.unique(ids):
        where = ids == c
        tint = _BASE[c] + rng.normal(0, 12, 3)
        img[where] = (_shade(rng, int(c), size)[..., None] * tint)[where]
    lighting = rng.uniform(0.8, 1.15) * rng.normal(1, 0.06, 3)
    return np.clip(img * lighting + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def write_p2_sample(root: str | os.PathLike, preset: str = "sample", seed: int = 0) -> Path:
    """`root/p2_data/{train,validation}`: synthetic region maps of the 7 classes in the course layout.

    `sample`: 24 train / 8 validation images of 512 x 512; `tiny` (tests): 32 / 6 of 64 x 64.
    Validation holds the snapshot stems 0013, 0062 and 0104; every split shows all six scored classes.
    """
    size, n_train, n_val = {"sample": (512, 24, 8), "tiny": (64, 32, 6)}[preset]
    rng = np.random.default_rng(seed + 2)
    p2 = Path(root) / "p2_data"
    val_stems = list(SNAPSHOT_STEMS) + [f"{200 + i:04d}" for i in range(n_val - len(SNAPSHOT_STEMS))]
    for split, stems in (("train", [f"{i:04d}" for i in range(n_train)]), ("validation", val_stems)):
        folder = p2 / split
        folder.mkdir(parents=True, exist_ok=True)
        # Cycle the six scored classes across the split's regions so each appears; Unknown now and then.
        cycle = [int(c) for c in rng.permutation(EVAL_CLASSES)] * math.ceil(len(stems) * 5 / EVAL_CLASSES)
        for n, stem in enumerate(stems):
            k = int(rng.integers(3, 6))
            classes = [cycle.pop() for _ in range(k)] + ([UNKNOWN] if n % 5 == 4 else [])
            ids = _sample_regions(rng, size, classes)
            Image.fromarray(_render(rng, ids)).save(folder / f"{stem}{SAT_SUFFIX}", quality=92)
            Image.fromarray(classes_to_rgb(ids)).save(folder / f"{stem}{MASK_SUFFIX}")
    return p2
