"""Write a small, deterministic, learnable synthetic dataset in the exact `hw1_data/` layout.

Problem 1 classes are what survives BYOL's augmentations, as real object classes do: a class is a
shape (disc, square, …) tiled across the image over a background texture (stripes, checks, …).
Colours are drawn anew for every image and every shape, and change across the background, so
colour is a nuisance that colour jitter and grayscale teach a network to ignore; the tiling's cell size and
phase are drawn per image too, so any crop of RandomResizedCrop's range (8–100% of the area) still
shows the class's shape and texture, at another scale. Mini-ImageNet's 64 classes are 8 shapes x
8 textures; Office-Home's 65 are drawn from the same primitives plus two shapes Mini-ImageNet never
shows (like ImageNet → Office-Home: shared visual parts, not the same class list).

    python -m hw1.sample_data --out sample_data
"""
from __future__ import annotations

import argparse
import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import io
from .errors import run_main
from .seg_data import write_p2_sample

SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "x", "bars", "star", "frame")  # the last two: Office only
TEXTURES = ("noise", "hstripes", "vstripes", "diagonal", "checker", "dots", "grid", "waves")
MINI_SHAPES = 8


def _colour(rng: np.random.Generator, value: float) -> tuple[int, int, int]:
    """A random hue and saturation at a given brightness (HSV value)."""
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.2, 1.0), value))


def texture_mask(rng: np.random.Generator, size: int, texture: str) -> np.ndarray:
    """A (size, size) mask in [0, 1] of the background pattern; period and phase random per image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = size * rng.uniform(0.2, 0.3)
    xx, yy = xx + rng.uniform(0, period), yy + rng.uniform(0, period)
    stripes = lambda t: (np.sin(2 * np.pi * t / period) > 0).astype(np.float64)  # noqa: E731
    if texture == "noise":
        return np.zeros((size, size))
    if texture == "hstripes":
        return stripes(yy)
    if texture == "vstripes":
        return stripes(xx)
    if texture == "diagonal":
        return stripes((xx + yy) / np.sqrt(2))
    if texture == "checker":
        return ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float64)
    if texture == "dots":
        return (np.hypot(xx % period - period / 2, yy % period - period / 2) < period * 0.28).astype(np.float64)
    if texture == "grid":
        return ((xx % period < period * 0.25) | (yy % period < period * 0.25)).astype(np.float64)
    return stripes(yy + 0.18 * size * np.sin(2 * np.pi * xx / (2.5 * period)))  # waves


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    w = max(2.0, r / 3)
    if shape == "disc":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fill)
    elif shape == "cross":
        draw.rectangle((cx - r, cy - w / 1.3, cx + r, cy + w / 1.3), fill=fill)
        draw.rectangle((cx - w / 1.3, cy - r, cx + w / 1.3, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=int(w))
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "x":
        draw.line((cx - r, cy - r, cx + r, cy + r), fill=fill, width=int(w * 1.2))
        draw.line((cx - r, cy + r, cx + r, cy - r), fill=fill, width=int(w * 1.2))
    elif shape == "bars":  # two horizontal bars
        draw.rectangle((cx - r, cy - r, cx + r, cy - r + w), fill=fill)
        draw.rectangle((cx - r, cy + r - w, cx + r, cy + r), fill=fill)
    elif shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        draw.polygon([(cx + q * np.cos(a), cy - q * np.sin(a)) for q, a in zip(radii, angles)], fill=fill)
    else:  # frame: a square outline
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), outline=fill, width=int(w))


def _colour_field(rng: np.random.Generator, size: int, value: float) -> np.ndarray:
    """(size, size, 3): a blend of two random colours of one brightness along a random direction."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)
    ramp = ((ramp - ramp.min()) / np.ptp(ramp))[..., None]
    a, b = (np.array(_colour(rng, value), np.float64) for _ in range(2))
    return a * (1 - ramp) + b * ramp


def draw_class_image(rng: np.random.Generator, size: int, shape: str, texture: str) -> Image.Image:
    """One image of class (shape, texture): random colours, tiling scale and phase, jitter and noise.

    Brightness, not hue, separates the parts (shape far from the background, texture nearer), so
    the class still shows in grayscale and under colour jitter. Hues change across the image
    (every shape its own, background and texture blended between two), so two crops of one image
    share its shape and texture but not its colours: colour is no shortcut for BYOL's views either.
    """
    v_bg = rng.uniform(0.3, 0.7)
    v_tex = np.clip(v_bg + rng.choice([-1, 1]) * rng.uniform(0.2, 0.3), 0.05, 0.95)
    v_shape = (0.85, 1.0) if v_bg < 0.5 else (0.0, 0.15)
    mask = texture_mask(rng, size, texture)[..., None]
    arr = _colour_field(rng, size, v_bg) * (1 - mask) + _colour_field(rng, size, v_tex) * mask
    img = Image.fromarray(np.clip(arr + rng.normal(0, 10, arr.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    cell = size * rng.uniform(0.4, 0.6)  # about 2 shapes across: each one large enough at 32 px
    ox, oy = rng.uniform(0, cell, 2)
    for gy in np.arange(oy - cell, size + cell, cell):
        for gx in np.arange(ox - cell, size + cell, cell):
            r = cell * rng.uniform(0.28, 0.38)
            jx, jy = rng.uniform(-0.08, 0.08, 2) * cell
            _draw(draw, shape, gx + jx, gy + jy, r, _colour(rng, rng.uniform(*v_shape)))
    return img


def mini_classes() -> list[tuple[str, str]]:
    """The 64 Mini-ImageNet classes: each of the first 8 shapes on each texture."""
    return [(s, t) for s in SHAPES[:MINI_SHAPES] for t in TEXTURES]


def office_classes() -> list[tuple[str, str]]:
    """65 of the 80 (shape, texture) pairs, a fixed draw: most shared with Mini-ImageNet, some new."""
    pairs = [(s, t) for s in SHAPES for t in TEXTURES]
    return [pairs[i] for i in sorted(np.random.default_rng(65).permutation(len(pairs))[:65])]


def write_p1(root: Path, *, mini_per_class: int, office_train_per_class: int, office_val_per_class: int,
             size: int = 128, seed: int = 0) -> None:
    """Mini-ImageNet (`<class>_<n>.jpg`, 64 classes) and Office-Home (65 classes, CSVs) under `root/p1_data`."""
    rng = np.random.default_rng(seed)
    mini = root / "p1_data" / "mini" / "train"
    mini.mkdir(parents=True, exist_ok=True)
    for c, (shape, texture) in enumerate(mini_classes()):
        for n in range(mini_per_class):
            draw_class_image(rng, size, shape, texture).save(mini / f"{c}_{n}.jpg", quality=92)
    office = root / "p1_data" / "office"
    specs = office_classes()
    for split, per_class in (("train", office_train_per_class), ("val", office_val_per_class)):
        (office / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for n in range(per_class):
            for c, (shape, texture) in enumerate(specs):
                name = f"{c}_{n + (1000 if split == 'val' else 0)}.jpg"
                draw_class_image(rng, size, shape, texture).save(office / split / name, quality=92)
                rows.append([len(rows), name, c])
        io.write_csv(office / f"{split}.csv", ["id", "filename", "label"], rows)


def write_sample_data(root: str | Path, *, preset: str = "sample", seed: int = 0) -> Path:
    """Write every problem's sample data under `root`; `tiny` is the tests' size."""
    root = io.ensure_dir(root)
    # sample: 4 val images a class, so one image is 0.4% and the report's comparisons are not one-image noise
    counts = {"sample": dict(mini_per_class=20, office_train_per_class=8, office_val_per_class=4),
              "tiny": dict(mini_per_class=3, office_train_per_class=3, office_val_per_class=1)}[preset]
    write_p1(root, seed=seed, size=128 if preset == "sample" else 64, **counts)
    write_p2_sample(root, preset, seed)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="sample_data", help="folder to write (default: %(default)s)")
    parser.add_argument("--preset", choices=["sample", "tiny"], default="sample", help="size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"wrote {write_sample_data(args.out, preset=args.preset, seed=args.seed)}")


if __name__ == "__main__":
    run_main(main)()
