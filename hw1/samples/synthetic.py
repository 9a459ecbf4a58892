"""Write a small, deterministic, learnable synthetic dataset in the exact `hw1_data/` layout.

Problem 1 classes are shape x fill pattern (stripes, checks, dots, ...), never colour: each image
draws its own colours (muted, from one distribution for every class, as lighting and paint vary in
photos), position, size, tilt and pattern phase, so BYOL's colour jitter, grayscale and crops
remove nothing that defines a class. Mini-ImageNet and Office-Home share the vocabulary but not
the classes (8 shapes x 8 fills vs 13 shapes x 5 fills, 5 shapes in common), as the real two sets
share object kinds but not their label lists.

A data folder says what was written in it (`stamps.py`): the same data is reused, other data refused or replaced.

    python -m hw1.samples.synthetic --out sample_data
"""
from __future__ import annotations

import argparse
import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .. import io
from ..errors import run_main
from .stamps import OWNED, begin_write, check_free, end_write, is_written

SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "star", "halfdisc", "frame", "ell", "tee",
          "crescent", "bar")
FILLS = ("solid", "hstripes", "vstripes", "checker", "dots", "grid", "diagonal", "rings")
MINI_CLASSES = [(s, f) for s in SHAPES[5:13] for f in FILLS]       # 64
OFFICE_CLASSES = [(s, f) for s in SHAPES for f in FILLS[:5]]       # 65
SIZES = {"sample": dict(mini_per_class=20, office_train_per_class=10, office_val_per_class=4),
         "tiny": dict(mini_per_class=3, office_train_per_class=3, office_val_per_class=1)}


def _stripes(u: np.ndarray, period: float) -> np.ndarray:
    return (u % period) < period / 2


def fill_pattern(fill: str, u: np.ndarray, v: np.ndarray, radius: np.ndarray, period: float) -> np.ndarray:
    """Boolean pattern over pixel coordinates `u`, `v` (tilted, shifted) and `radius` from the shape's centre."""
    if fill == "solid":
        return np.ones(u.shape, bool)
    if fill == "hstripes":
        return _stripes(v, period)
    if fill == "vstripes":
        return _stripes(u, period)
    if fill == "checker":
        return (u // (period / 2) + v // (period / 2)) % 2 == 0
    if fill == "dots":
        return ((u % period) - period / 2) ** 2 + ((v % period) - period / 2) ** 2 < (period / 3.2) ** 2
    if fill == "grid":
        return ((u % period) < period / 4) | ((v % period) < period / 4)
    if fill == "diagonal":
        return _stripes(u + v, 1.4 * period)
    return _stripes(radius, period)  # rings, concentric with the shape


def shape_mask(shape: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean mask of one shape of radius `r` centred at (cx, cy)."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    box, w = (cx - r, cy - r, cx + r, cy + r), r / 1.6
    if shape == "disc":
        draw.ellipse(box, fill=255)
    elif shape in ("square", "frame"):
        inner = (cx - .85 * r, cy - .85 * r, cx + .85 * r, cy + .85 * r)
        draw.rectangle(inner, fill=255) if shape == "square" else draw.rectangle(inner, outline=255,
                                                                                 width=max(3, int(r / 2.4)))
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + .8 * r), (cx + r, cy + .8 * r)], fill=255)
    elif shape == "cross":
        for half_w, half_h in ((r, r / 2.6), (r / 2.6, r)):
            draw.rectangle((cx - half_w, cy - half_h, cx + half_w, cy + half_h), fill=255)
    elif shape == "ring":
        draw.ellipse(box, outline=255, width=max(3, int(r / 2.4)))
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=255)
    elif shape == "star":
        angle = np.pi / 2 + np.arange(10) * np.pi / 5
        reach = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        draw.polygon(list(zip(cx + reach * np.cos(angle), cy - reach * np.sin(angle))), fill=255)
    elif shape == "halfdisc":
        draw.pieslice(box, 0, 180, fill=255)
    elif shape == "ell":
        draw.rectangle((cx - r, cy - r, cx - r + w, cy + r), fill=255)
        draw.rectangle((cx - r, cy + r - w, cx + r, cy + r), fill=255)
    elif shape == "tee":
        draw.rectangle((cx - r, cy - r, cx + r, cy - r + w), fill=255)
        draw.rectangle((cx - w / 2, cy - r, cx + w / 2, cy + r), fill=255)
    elif shape == "crescent":
        draw.ellipse(box, fill=255)
        draw.ellipse((cx - .3 * r, cy - r, cx + 1.4 * r, cy + .9 * r), fill=0)
    else:  # bar
        draw.rectangle((cx - r, cy - r / 2.2, cx + r, cy + r / 2.2), fill=255)
    return np.asarray(img) > 127


def _muted_colour(rng: np.random.Generator, value: float) -> np.ndarray:
    """Any hue at low saturation: colour varies from image to image but says nothing of the class."""
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.35), value)) * 255


def draw_shape_image(rng: np.random.Generator, size: int, shape: str, fill: str) -> Image.Image:
    """One image: a shape filled with a two-tone pattern over a shaded background, all colours drawn per image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    r = size * rng.uniform(0.3, 0.45)
    cx, cy = rng.uniform(0.8 * r, size - 0.8 * r, 2)
    period = size * rng.uniform(0.18, 0.26)  # ≥ 5 px at the sample's 32 px: the pattern survives the resize
    tilt = rng.uniform(-0.15, 0.15)
    u = (xx - cx) * np.cos(tilt) - (yy - cy) * np.sin(tilt) + rng.uniform(0, period)
    v = (xx - cx) * np.sin(tilt) + (yy - cy) * np.cos(tilt) + rng.uniform(0, period)
    pattern = fill_pattern(fill, u, v, np.hypot(xx - cx, yy - cy), period)
    dark, light = sorted(rng.uniform(0.15, 1.0, 2))
    if light - dark < 0.35:  # the two tones must differ in brightness, so grayscale keeps the pattern
        dark, light = 0.2, 0.95
    arr = np.empty((size, size, 3))
    arr[:] = _muted_colour(rng, rng.uniform(0.2, 0.9))
    arr += 30 * np.sin(2 * np.pi * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / size)[..., None]
    mask = shape_mask(shape, size, cx, cy, r)
    tones = np.where(pattern[..., None], _muted_colour(rng, light), _muted_colour(rng, dark))
    arr[mask] = tones[mask]
    arr += rng.normal(0, 10, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_p1(root: Path, *, mini_per_class: int, office_train_per_class: int, office_val_per_class: int,
             size: int = 128, seed: int = 0) -> None:
    """Mini-ImageNet (`<class>_<n>.jpg`, 64 classes) and Office-Home (65 classes, CSVs) under `root/p1_data`."""
    rng = np.random.default_rng(seed)
    mini = root / "p1_data" / "mini" / "train"
    mini.mkdir(parents=True, exist_ok=True)
    for c, (shape, fill) in enumerate(MINI_CLASSES):
        for n in range(mini_per_class):
            draw_shape_image(rng, size, shape, fill).save(mini / f"{c}_{n}.jpg", quality=92)
    office = root / "p1_data" / "office"
    for split, per_class in (("train", office_train_per_class), ("val", office_val_per_class)):
        (office / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for n in range(per_class):
            for c, (shape, fill) in enumerate(OFFICE_CLASSES):
                name = f"{c}_{n + (1000 if split == 'val' else 0)}.jpg"
                draw_shape_image(rng, size, shape, fill).save(office / split / name, quality=92)
                rows.append([len(rows), name, c])
        io.write_csv(office / f"{split}.csv", ["id", "filename", "label"], rows)


def data_stamp(preset: str, seed: int) -> dict:
    """What `write_sample_data` writes, as its folder's stamp says it."""
    # "writer": the module's name when stamps began, kept so that folders written before the move still match
    return {"writer": "hw1.sample_data", "preset": preset, "seed": seed, "counts": dict(SIZES[preset])}


def write_sample_data(root: str | Path, *, preset: str = "sample", seed: int = 0, replace: bool = False) -> Path:
    """Write every problem's sample data under `root` (`tiny` is the tests' size), or reuse it there when written."""
    from ..p2.data import write_p2_sample  # it imports torch: the stamps and fashion.py do without it

    stamp = data_stamp(preset, seed)
    if is_written(root, stamp):
        return Path(root)
    check_free(root, stamp, OWNED, replace=replace)
    root = begin_write(root, stamp, OWNED)
    write_p1(root, seed=seed, size=128 if preset == "sample" else 64, **SIZES[preset])
    write_p2_sample(root, preset, seed)
    end_write(root, stamp)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="sample_data", help="folder to write (default: %(default)s)")
    parser.add_argument("--preset", choices=["sample", "tiny"], default="sample", help="size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replace", action="store_true",
                        help="delete the data of another preset or seed (or unstamped) in --out, then write")
    args = parser.parse_args(argv)
    stamp = data_stamp(args.preset, args.seed)
    done = "reused" if is_written(args.out, stamp) else "wrote"
    print(f"{done} {write_sample_data(args.out, preset=args.preset, seed=args.seed, replace=args.replace)}")


if __name__ == "__main__":
    run_main(main)()
