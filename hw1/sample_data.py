"""Write a small, deterministic, learnable synthetic dataset in the exact `hw1_data/` layout.

Problem 1 classes differ by shape x colour (x background texture for Mini-ImageNet), each image
with its own position, size and noise, so both a classifier and BYOL have something to learn.

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

SHAPES = ("disc", "square", "triangle", "cross", "ring")


def _palette(n: int, offset: float) -> list[tuple[int, int, int]]:
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((offset + i / n) % 1.0, 0.85, 0.95)) for i in range(n)]


def draw_shape_image(rng: np.random.Generator, size: int, shape: str, colour: tuple[int, int, int], texture: int) -> Image.Image:
    """One image: a coloured shape at a random place and scale over a noisy textured background."""
    yy, xx = np.mgrid[0:size, 0:size]
    base = rng.integers(40, 110)
    period = 6 + 4 * texture
    background = base + 25 * np.sin(2 * np.pi * (xx if texture % 2 else yy) / period)[..., None]
    arr = np.clip(background + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    r = size * rng.uniform(0.2, 0.35)
    cx, cy = rng.uniform(r, size - r, 2)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "disc":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "cross":
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    else:
        draw.ellipse(box, outline=colour, width=max(2, int(r / 3)))
    return img


def _class_specs(n_classes: int, n_shapes: int, offset: float) -> list[tuple[str, tuple[int, int, int], int]]:
    colours = _palette(int(np.ceil(n_classes / n_shapes)), offset)
    return [(SHAPES[c % n_shapes], colours[c // n_shapes], c % 3) for c in range(n_classes)]


def write_p1(root: Path, *, mini_per_class: int, office_train_per_class: int, office_val_per_class: int,
             size: int = 128, seed: int = 0) -> None:
    """Mini-ImageNet (`<class>_<n>.jpg`, 64 classes) and Office-Home (65 classes, CSVs) under `root/p1_data`."""
    rng = np.random.default_rng(seed)
    mini = root / "p1_data" / "mini" / "train"
    mini.mkdir(parents=True, exist_ok=True)
    for c, (shape, colour, texture) in enumerate(_class_specs(64, 4, 0.03)):
        for n in range(mini_per_class):
            draw_shape_image(rng, size, shape, colour, texture).save(mini / f"{c}_{n}.jpg", quality=92)
    office = root / "p1_data" / "office"
    specs = _class_specs(65, 5, 0.0)
    for split, per_class in (("train", office_train_per_class), ("val", office_val_per_class)):
        (office / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for n in range(per_class):
            for c, (shape, colour, _) in enumerate(specs):
                name = f"{c}_{n + (1000 if split == 'val' else 0)}.jpg"
                draw_shape_image(rng, size, shape, colour, n % 3).save(office / split / name, quality=92)
                rows.append([len(rows), name, c])
        io.write_csv(office / f"{split}.csv", ["id", "filename", "label"], rows)


def write_sample_data(root: str | Path, *, preset: str = "sample", seed: int = 0) -> Path:
    """Write every problem's sample data under `root`; `tiny` is the tests' size."""
    root = io.ensure_dir(root)
    counts = {"sample": dict(mini_per_class=12, office_train_per_class=8, office_val_per_class=2),
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
