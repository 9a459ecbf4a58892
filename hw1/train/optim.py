"""AdamW and its linear warm-up + cosine schedule: built from the flags, and restored from a checkpoint under
the current flags."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn


def build_optimizer(params: list[nn.Parameter], *, lr: float, weight_decay: float, betas: tuple[float, float],
                    fused: bool, lr_scales: Sequence[float] | None = None) -> torch.optim.Optimizer:
    """AdamW (fused: CUDA); weight decay skips biases and norm weights (1-D tensors). `lr_scales`, one per
    parameter, gives each its fraction of `lr` (a pre-trained backbone's lower rate); a group records it."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for scale in dict.fromkeys(lr_scales or [1.0]):  # in order of appearance; per scale: decayed, then not
        groups[(scale, True)], groups[(scale, False)] = [], []
    for p, scale in zip(params, lr_scales or [1.0] * len(params)):
        if p.requires_grad:
            groups[(scale, p.dim() > 1)].append(p)
    return torch.optim.AdamW([{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": lr * scale,
                               "lr_scale": scale} for (scale, decay), ps in groups.items() if ps],
                             lr=lr, betas=tuple(betas), fused=fused)


def warmup_cosine_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up from ~0 to 1 over `warmup_steps`, then cosine to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def schedule_lengths(warmup_steps: int, total: int, verbose: bool = True) -> tuple[int, int]:
    """(warm-up, total) steps; a warm-up longer than a short run is cut to a tenth of it, with a note."""
    warmup = warmup_steps
    if warmup >= total:
        warmup = max(1, total // 10)
        if verbose:
            print(f"note: warm-up of {warmup_steps} steps exceeds the run's {total} steps; using {warmup}")
    return warmup, total


def restore(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, ckpt: dict,
            lr: float) -> None:
    """Load a checkpoint's optimiser and schedule state, keeping this run's betas, weight decay and `lr` (times
    each group's `lr_scale`)."""
    flags = [(g["betas"], g["weight_decay"], g.get("lr_scale", 1.0)) for g in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    match_parameter_layouts(optimizer)
    scheduler.load_state_dict(ckpt["lr_scheduler"])
    # The saved optimiser holds the old lr, betas and weight decay: the current flags apply from here on.
    for group, (betas, weight_decay, scale), factor in zip(optimizer.param_groups, flags, scheduler.lr_lambdas):
        group.update(betas=betas, weight_decay=weight_decay, lr_scale=scale, initial_lr=lr * scale,
                     lr=lr * scale * factor(scheduler.last_epoch))
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]


def match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each moment its parameter's memory layout. `load_state_dict` keeps the saved one, so a CPU checkpoint
    (contiguous) resumed on a GPU (channels_last) would stop fused AdamW at its first step ("same layout")."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
