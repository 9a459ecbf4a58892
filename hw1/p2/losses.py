"""Multi-class focal loss (Lin et al. 2017) for dense prediction."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, alpha: float | torch.Tensor = 0.25, gamma: float = 2.0,
               ignore_index: int = 255) -> torch.Tensor:
    """Mean of `-alpha_t (1 - p_t)^gamma log p_t` over pixels whose target is not `ignore_index`.

    `logits` N x C x ..., `target` N x ... class ids; `alpha` a scalar or a per-class tensor of C.
    log p_t comes from log-softmax in float32, so confident wrong predictions stay finite.
    gamma=0, alpha=1 is exactly cross-entropy.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    log_pt = log_p.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    loss = -log_pt
    if gamma:
        loss = loss * (1 - log_pt.exp()).clamp(min=0).pow(gamma)
    if isinstance(alpha, torch.Tensor):
        loss = loss * alpha.to(loss.device, loss.dtype)[safe_target]
    elif alpha != 1:
        loss = loss * alpha
    valid_f = valid.to(loss.dtype)
    return (loss * valid_f).sum() / valid_f.sum().clamp(min=1)

