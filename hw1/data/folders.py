"""Problem 1 data: image folders, the Office-Home CSV, and the classification transforms."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from ..errors import WARNINGS, UserError
from .recipes import FINETUNE_VIEW, IMAGENET_MEAN, IMAGENET_STD, ViewRecipe

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
CSV_COLUMNS = ("id", "filename", "label")
NUM_OFFICE_CLASSES = 65


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open any image (grayscale, RGBA, palette, 16-bit) as 8-bit RGB, or raise a clear error."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                img = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8))
            return img.convert("RGB")
    except FileNotFoundError as err:
        raise UserError(path, "image file not found", "check the image folder and the CSV's filename column") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(path, f"unreadable image ({str(err).splitlines()[0][:100]})",
                        "replace or remove the file") from err


def data_dir(root: str | os.PathLike, *parts: str) -> Path:
    """`root/parts…`, failing clearly when the data root itself is missing."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(root, "data root not found",
                        "pass --data-root pointing at hw1_data (it holds p1_data/ and p2_data/)")
    return root.joinpath(*parts)


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(folder, "image folder not found", "check --data-root (it should hold p1_data/ and p2_data/)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise UserError(folder, "no images in this folder", "check --data-root")
    return files


@dataclass
class CsvRow:
    id: str
    filename: str
    label: int | None


def read_image_csv(csv_path: str | os.PathLike, image_dir: str | os.PathLike, *, need_labels: bool,
                   num_classes: int = NUM_OFFICE_CLASSES) -> list[CsvRow]:
    """Read an `id,filename,label` CSV, checking columns, ids, files and (if needed) labels."""
    csv_path, image_dir = Path(csv_path), Path(image_dir)
    if not csv_path.is_file():
        raise UserError(csv_path, "CSV file not found", "check the path")
    fix = "pass the id,filename,label CSV file"  # not an image, archive or other binary file in its place
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(csv_path, f"not a text CSV (byte {err.start} is not UTF-8)", fix) from None
    if "\0" in text:
        raise UserError(csv_path, "not a text CSV (it holds NUL bytes)", fix)
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        required = CSV_COLUMNS if need_labels else CSV_COLUMNS[:2]
        missing = [c for c in required if c not in header]
        if missing:
            raise UserError(csv_path, f"missing column(s) {', '.join(missing)} (found: {', '.join(header) or 'none'})",
                            "the header must be id,filename,label")
        reader.fieldnames = header
        rows = []
        seen: set[str] = set()
        for line, raw in enumerate(reader, start=2):
            rid, name = (raw.get("id") or "").strip(), (raw.get("filename") or "").strip()
            if not name:
                raise UserError(csv_path, f"line {line}: empty filename", "fill in the filename column")
            if rid in seen:
                raise UserError(csv_path, f"line {line}: duplicate id {rid!r}", "ids must be unique")
            seen.add(rid)
            label = _parse_label(raw.get("label"), csv_path, line, num_classes) if need_labels else None
            if not (image_dir / name).is_file():
                raise UserError(image_dir / name, f"image named on line {line} of {csv_path.name} not found",
                                "check the image folder argument")
            rows.append(CsvRow(rid, name, label))
    if not rows:
        raise UserError(csv_path, "the CSV has no rows", "check the file")
    return rows


def _parse_label(value: str | None, csv_path: Path, line: int, num_classes: int) -> int:
    text = (value or "").strip()
    try:
        label = int(text)
    except ValueError:
        raise UserError(csv_path, f"line {line}: label {text!r} is not an integer", "labels must be 0..64") from None
    if not 0 <= label < num_classes:
        raise UserError(csv_path, f"line {line}: label {label} is outside 0..{num_classes - 1}", "fix the label")
    return label


class ImageListDataset(Dataset):
    """Images from a list of paths, with optional integer labels (-1 when unlabelled).

    With `skip_unreadable` (training sets) an unreadable image is counted as a warning and the next
    readable one is used in its place, so one bad file among thousands does not end a long run.
    """

    def __init__(self, paths: list[Path], labels: list[int] | None = None, transform: Callable | None = None,
                 skip_unreadable: bool = False) -> None:
        self.paths, self.transform, self.skip_unreadable = paths, transform, skip_unreadable
        self.labels = labels if labels is not None else [-1] * len(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self.paths) if self.skip_unreadable else 1):
            i = (index + offset) % len(self.paths)
            try:
                img = load_rgb(self.paths[i])
            except UserError as err:
                if not self.skip_unreadable:
                    raise
                WARNINGS.add("unreadable training image skipped (the next one used instead)",
                             f"{self.paths[i]}: {err.problem}")
                continue
            return (self.transform(img) if self.transform else img), self.labels[i]
        raise UserError(self.paths[index].parent, "no training image could be read", "check the image files")


def office_dataset(root: str | os.PathLike, split: str, transform: Callable | None, need_labels: bool = True,
                   skip_unreadable: bool = False) -> ImageListDataset:
    """Office-Home `split` ('train' or 'val') from `root/p1_data/office`."""
    office = data_dir(root, "p1_data", "office")
    rows = read_image_csv(office / f"{split}.csv", office / split, need_labels=need_labels)
    return ImageListDataset([office / split / r.filename for r in rows],
                            [r.label if r.label is not None else -1 for r in rows], transform, skip_unreadable)


def mini_label(path: Path) -> int:
    """Mini-ImageNet file names may encode the class as `<class>_<n>.jpg` (used only by supervised pre-training)."""
    head = path.stem.split("_")[0]
    if not head.isdigit():
        raise UserError(path, "file name does not start with a class index (`<class>_<n>.jpg`)",
                        "supervised pre-training needs labelled names; use --method byol")
    return int(head)


def mini_paths(root: str | os.PathLike) -> list[Path]:
    return list_images(data_dir(root, "p1_data", "mini", "train"))


def normalize() -> T.Normalize:
    return T.Normalize(IMAGENET_MEAN, IMAGENET_STD)


def classify_train_transform(size: int, recipe: ViewRecipe = FINETUNE_VIEW, trivial_augment: bool = False
                              ) -> T.Compose:
    """Fine-tuning augmentation (the recipe's crop, flip, colour jitter; TrivialAugmentWide first when asked),
    one image per call."""
    return T.Compose([
        T.PILToTensor(), *([T.TrivialAugmentWide()] if trivial_augment else []),
        T.RandomResizedCrop(size, scale=recipe.scale, ratio=recipe.ratio, antialias=True),
        T.RandomHorizontalFlip(), T.ColorJitter(*recipe.jitter), T.ToDtype(torch.float32, scale=True), normalize(),
    ])


def classify_eval_transform(size: int) -> T.Compose:
    """Deterministic validation / inference transform: resize to the model's size."""
    return T.Compose([T.PILToTensor(), T.Resize((size, size), antialias=True), T.ToDtype(torch.float32, scale=True),
                      normalize()])
