"""Plots as PNG (matplotlib's Agg backend, written atomically): t-SNE maps, training curves, mask overlays."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only, never a window (also on machines without a display)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from . import io  # noqa: E402


def palette(n: int) -> np.ndarray:
    """`n` distinct RGB colours in [0, 1]: tab20, tab20b, tab20c (60), then evenly spaced hues."""
    tabs = np.concatenate([plt.get_cmap(name).colors for name in ("tab20", "tab20b", "tab20c")])[:, :3]
    if n <= len(tabs):
        return tabs[:n]
    hues = plt.get_cmap("hsv")(np.linspace(0, 1, n - len(tabs), endpoint=False))[:, :3]
    return np.concatenate([tabs, hues])


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write `fig` as a PNG via a temp file + rename, then close it."""
    path = Path(path)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def save_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an HxWx3 uint8 array as a PNG, atomically."""
    path = Path(path)
    with io.atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


# ---------------------------------------------------------------- t-SNE


def _scatter(ax: plt.Axes, embedding: np.ndarray, labels: np.ndarray, title: str, num_classes: int) -> None:
    colours = palette(num_classes)
    ax.scatter(embedding[:, 0], embedding[:, 1], c=colours[labels], s=4, linewidths=0, alpha=0.85)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def save_tsne(path: str | os.PathLike, embedding: np.ndarray, labels: np.ndarray, title: str,
              num_classes: int | None = None) -> Path:
    """One 2-D map, each class its own colour (65 distinct colours for Office-Home)."""
    labels = np.asarray(labels, dtype=int)
    num_classes = num_classes or int(labels.max()) + 1
    fig, ax = plt.subplots(figsize=(6, 6))
    _scatter(ax, embedding, labels, title, num_classes)
    return save_figure(fig, path)


def save_tsne_grid(path: str | os.PathLike, embeddings: Sequence[np.ndarray], labels: np.ndarray,
                   titles: Sequence[str], num_classes: int | None = None) -> Path:
    """The maps side by side, same colours, for comparing checkpoints (e.g. first vs last epoch)."""
    labels = np.asarray(labels, dtype=int)
    num_classes = num_classes or int(labels.max()) + 1
    fig, axes = plt.subplots(1, len(embeddings), figsize=(5.5 * len(embeddings), 5.5), squeeze=False)
    for ax, emb, title in zip(axes[0], embeddings, titles):
        _scatter(ax, emb, labels, title, num_classes)
    return save_figure(fig, path)


# ---------------------------------------------------------------- training curves

_NOT_METRICS = {"epoch", "step", "train_loss", "lr", "seconds", "step_s", "data_wait_s", "eval_s", "checkpoint_s"}


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rows])


def save_curves(log_csv: str | os.PathLike, path: str | os.PathLike, title: str = "",
                metrics: Sequence[str] | None = None) -> Path:
    """Loss, learning rate and the validation metrics (by default every other numeric column) per epoch."""
    rows = io.read_csv_rows(log_csv)
    if not rows:
        raise ValueError(f"{log_csv}: no rows to plot")
    epochs = _column(rows, "epoch")
    if metrics is None:
        metrics = [k for k in rows[0] if k not in _NOT_METRICS and not k.startswith("iou_")
                   and not np.all(np.isnan(_column(rows, k)))]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    panels = (("train loss", ["train_loss"]), ("learning rate", ["lr"]), ("validation", list(metrics)))
    for ax, (name, keys) in zip(axes, panels):
        for key in keys:
            if key in rows[0]:
                ys = _column(rows, key)
                ax.plot(epochs[~np.isnan(ys)], ys[~np.isnan(ys)], marker="o" if len(rows) < 30 else None, ms=3,
                        label=key)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if name == "validation" and keys:
            ax.legend(fontsize=8)
    axes[1].yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.1e"))
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


# ---------------------------------------------------------------- mask overlays


def mask_overlay(image: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """Blend each boolean HxW mask over the HxWx3 uint8 image in its own colour, largest first (small on top)."""
    out = image.astype(np.float32).copy()
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    colours = palette(max(len(masks), 1)) * 255
    for rank, i in enumerate(order):
        m = masks[i].astype(bool)
        out[m] = (1 - alpha) * out[m] + alpha * colours[rank]
    return np.clip(out, 0, 255).astype(np.uint8)


def save_overlay(path: str | os.PathLike, image: np.ndarray, masks: Sequence[np.ndarray], title: str = "") -> Path:
    """The image beside its overlay, as one PNG."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=10)
    axes[1].imshow(mask_overlay(image, masks))
    axes[1].set_title(title or f"{len(masks)} masks", fontsize=10)
    for ax in axes:
        ax.axis("off")
    return save_figure(fig, path)


def save_image_grid(path: str | os.PathLike, rows: Sequence[Sequence[np.ndarray]], row_titles: Sequence[str],
                    col_titles: Sequence[str]) -> Path:
    """A grid of images (e.g. one validation image per row: image | early | middle | final)."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3 * n_cols, 3 * n_rows), squeeze=False)
    for r, images in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c])
            if r == 0 and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=10)
        axes[r][0].text(-0.05, 0.5, row_titles[r], transform=axes[r][0].transAxes, rotation=90,
                        ha="right", va="center", fontsize=10)
    return save_figure(fig, path)
