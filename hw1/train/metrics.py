"""Accuracy, cosine kNN accuracy and BYOL's view gap for classification features; confusion matrix and mIoU for
masks."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


@torch.no_grad()
def view_gap(fn: Callable[[torch.Tensor], torch.Tensor], first: torch.Tensor, second: torch.Tensor) -> float:
    """Mean cosine of two views of one image minus that of views of different images, over `fn`'s features.

    BYOL trains for the first to be high without the second following (a collapse raises both); a random
    network already has some gap. It says nothing of classes: that is the kNN accuracy's job.
    """
    with torch.autocast(first.device.type, enabled=False):
        cos = F.normalize(fn(first).float(), dim=1) @ F.normalize(fn(second).float(), dim=1).T
    n = len(cos)
    same = cos.diagonal().mean()
    return (same - (cos.sum() - cos.diagonal().sum()) / max(1, n * n - n)).item()


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor,
                 val_labels: torch.Tensor, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> float:
    """Cosine kNN: each val feature votes its k nearest train labels, weighted by exp(sim / T); in fp32 even
    under the training loop's autocast (a bf16 similarity would also rank near-ties by rounding)."""
    with torch.autocast(train_feats.device.type, enabled=False):
        return _knn_accuracy(train_feats, train_labels, val_feats, val_labels, k, temperature, chunk)


def _knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor,
                  val_labels: torch.Tensor, k: int, temperature: float, chunk: int) -> float:
    train_feats = F.normalize(train_feats.float(), dim=1)
    val_feats = F.normalize(val_feats.float(), dim=1)
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    k = min(k, len(train_feats))
    correct = 0
    for start in range(0, len(val_feats), chunk):
        sims, idx = (val_feats[start:start + chunk] @ train_feats.T).topk(k, dim=1)
        votes = torch.zeros(len(idx), num_classes, device=idx.device)
        votes.scatter_add_(1, train_labels[idx], (sims / temperature).exp())
        correct += (votes.argmax(1) == val_labels[start:start + chunk]).sum().item()
    return correct / len(val_feats)


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`num_classes` x `num_classes` counts, rows = label, columns = prediction, on the inputs' device.

    Labels outside 0..num_classes-1 (an ignore index) are left out.
    """
    label, pred = label.reshape(-1).long(), pred.reshape(-1).long()
    keep = (label >= 0) & (label < num_classes)
    codes = label[keep] * num_classes + pred[keep]
    return torch.bincount(codes, minlength=num_classes ** 2).view(num_classes, num_classes)


def iou_from_confusion(cm: torch.Tensor, scored: int) -> tuple[list[float], float]:
    """Per-class IoU for classes 0..scored-1 and their mean, by the course's rule.

    tp_fp counts every pixel predicted as the class, whatever its label (Unknown-labelled pixels
    included); tp_fn every pixel labelled as the class. A class absent from both gives NaN, and
    so a NaN mean, as the course's evaluator does.
    """
    cm = cm.double().cpu()
    tp = cm.diagonal()[:scored]
    tp_fp, tp_fn = cm[:, :scored].sum(0), cm[:scored, :].sum(1)
    iou = tp / (tp_fp + tp_fn - tp)
    return iou.tolist(), float(iou.mean())
