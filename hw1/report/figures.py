"""The report's figures: training curves, runs compared, segmentation mask progress; PNGs in the report folder."""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np

from .. import io, viz
from ..data.folders import load_rgb
from .results import csv_rows, to_float

SNAPSHOT_STEMS = ("0013", "0062", "0104")
PROGRESS_TAGS = ("early", "middle", "final")


class Figures:
    """Writes or copies PNGs into the report folder and returns their relative links."""

    def __init__(self, report_dir: Path) -> None:
        self.dir = report_dir

    def copy(self, src: Path, name: str) -> str:
        with io.atomic_path(self.dir / name) as tmp:
            shutil.copyfile(src, tmp)
        return name

    def curves(self, log_csv: Path, name: str, title: str, metrics: list[str] | None = None) -> str | None:
        if not csv_rows(log_csv):
            return None
        viz.save_curves(log_csv, self.dir / name, title=title, metrics=metrics)
        return name


def compare_runs(path: Path, logs: dict[str, Path], metric: str, ylabel: str) -> bool:
    """One plot of `metric` per epoch for several runs (e.g. validation accuracy of A–E)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = False
    for name, log in logs.items():
        rows = [r for r in csv_rows(log) if not math.isnan(to_float(r.get(metric)))]
        if rows:
            ax.plot([to_float(r["epoch"]) for r in rows], [to_float(r[metric]) for r in rows], marker="o", ms=3,
                    label=name)
            drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    viz.save_figure(fig, path)
    return True


def progress_figure(path: Path, snapshots: Path, val_dir: Path) -> bool:
    """Rows = snapshot images; columns = image | ground truth | early | middle | final prediction."""
    from ..p2.data import classes_to_rgb, read_mask

    rows, names = [], []
    for stem in SNAPSHOT_STEMS:
        masks = sorted(snapshots.glob(f"{stem}_epoch*_mask.png"))
        if not masks:
            continue
        by_tag: dict[str, Path] = {}
        for m in masks:  # <stem>_epochNNN_<tags>_mask.png, tags like early-middle
            for tag in m.name[:-len("_mask.png")].split("_")[-1].split("-"):
                by_tag[tag] = m
        images = []
        sat, gt = val_dir / f"{stem}_sat.jpg", val_dir / f"{stem}_mask.png"
        images.append(np.asarray(load_rgb(sat)) if sat.is_file() else np.zeros((8, 8, 3), np.uint8))
        images.append(classes_to_rgb(read_mask(gt)) if gt.is_file() else np.zeros((8, 8, 3), np.uint8))
        images += [np.asarray(load_rgb(by_tag[t])) if t in by_tag else np.zeros((8, 8, 3), np.uint8)
                   for t in PROGRESS_TAGS]
        epochs = {t: re.search(r"_epoch(\d+)_", by_tag[t].name).group(1).lstrip("0") for t in by_tag}  # type: ignore[union-attr]
        rows.append(images)
        names.append(stem)
    if not rows:
        return False
    cols = ["image", "ground truth"] + [f"{t} (epoch {epochs.get(t, '?')})" for t in PROGRESS_TAGS]
    viz.save_image_grid(path, rows, names, cols)
    return True


def class_montage(path: Path, office: Path, side: int = 64, per_row: int = 13) -> bool:
    """One Office-Home training image per class (the first listed), `per_row` classes a row, labels in order."""
    from PIL import Image

    first: dict[int, Path] = {}
    for row in csv_rows(office / "train.csv"):
        first.setdefault(int(row["label"]), office / "train" / row["filename"])
    if not first:
        return False
    labels = sorted(first)
    n_rows = math.ceil(len(labels) / per_row)
    montage = Image.new("RGB", (per_row * side, n_rows * side), "white")
    for i, label in enumerate(labels):
        montage.paste(load_rgb(first[label]).resize((side, side)), ((i % per_row) * side, (i // per_row) * side))
    with io.atomic_path(path) as tmp:
        montage.save(tmp, format="PNG")
    return True
