"""Accuracy and cosine kNN accuracy for classification features."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor,
                 val_labels: torch.Tensor, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> float:
    """Cosine kNN: each val feature votes its k nearest train labels, weighted by exp(sim / T)."""
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
