"""What changes as a training run goes (`TrainState`): set up fresh, written as `last.pt`, resumed from it."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import io
from ..errors import UserError
from . import checkpoint, optim
from .checkpoint import rng_state, set_rng_state
from .config import TrainConfig
from .distributed import World
from .precision import Precision


@dataclass
class TrainState:
    """What changes as a run goes; `last.pt` holds it with the model's weights and the RNG states."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: Any                         # torch.amp.GradScaler: a pass-through unless fp16
    step: int = 0
    best: float = -math.inf             # the monitor's best value so far
    last_save: float = 0.0              # time.monotonic() of the last epoch-end `last.pt`
    unsaved_best: dict | None = None    # `best.pt` to be: the best weights on the CPU, written with the next `last.pt`


def fresh(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int, prec: Precision, device: torch.device,
          verbose: bool, lr_scale: Callable[[str], float] | None = None) -> TrainState:
    """AdamW over the trainable parameters (`lr_scale`: parameter name → its fraction of the lr), the warm-up/cosine
    schedule over the run's steps, the precision's scaler."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    optimizer = optim.build_optimizer([p for _, p in trainable], lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      betas=cfg.betas, fused=device.type == "cuda",
                                      lr_scales=[lr_scale(name) for name, _ in trainable] if lr_scale else None)
    warmup, total = optim.schedule_lengths(cfg.warmup_steps, cfg.schedule_steps or steps_per_epoch * cfg.epochs,
                                           verbose=verbose)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, optim.warmup_cosine_lambda(warmup, total))
    return TrainState(optimizer, scheduler, prec.grad_scaler())


def as_checkpoint(state: TrainState, model: nn.Module, meta: dict, cfg: TrainConfig, epoch: int,
                  batch_in_epoch: int, ema: nn.Module | None = None) -> dict:
    """What `last.pt` holds (with the EMA of the weights when the run keeps one)."""
    ckpt = {
        "model": model.state_dict(), "optimizer": state.optimizer.state_dict(),
        "lr_scheduler": state.scheduler.state_dict(), "epoch": epoch, "batch_in_epoch": batch_in_epoch,
        "step": state.step, "best": state.best, "args": cfg.flags, "meta": meta, "rng": rng_state(),
        "scaler": state.scaler.state_dict(),
    }
    if ema is not None:
        ckpt["ema"] = ema.state_dict()
    return ckpt


def resume(state: TrainState, model: nn.Module, meta: dict, cfg: TrainConfig, world: World,
           ema: nn.Module | None = None) -> tuple[int, int]:
    """Load --resume's checkpoint into the model and `state`; returns the (epoch, batch in epoch) to start from."""
    path = cfg.out / "last.pt" if cfg.resume == "auto" else Path(cfg.resume)  # type: ignore[arg-type]
    if cfg.resume == "auto" and not path.exists():
        print(f"note: {path} not found; starting from scratch")
        return 0, 0
    ckpt = checkpoint.load_checkpoint(path)
    if missing := [k for k in ("model", "optimizer", "lr_scheduler", "epoch", "step", "rng") if k not in ckpt]:
        raise UserError(path, f"not a training checkpoint (no {', '.join(missing)})",
                        "--resume takes the last.pt a training run wrote")
    checkpoint.check_meta(path, ckpt.get("meta", {}), meta)
    saved = checkpoint.recorded_flags(ckpt)
    _check_ema(path, "ema" in ckpt, ema is not None, saved.get("ema_decay"), cfg.flags.get("ema_decay"))
    changed = checkpoint.changed_recipe(path, saved, cfg.flags)
    try:
        if ema is not None:  # first: the tensors it shares with the model (a frozen backbone) take the model's values
            ema.load_state_dict(ckpt["ema"])
        model.load_state_dict(ckpt["model"])
        optim.restore(state.optimizer, state.scheduler, ckpt, cfg.lr)
    except (RuntimeError, ValueError) as err:  # other weights, or other optimiser groups (--backbone-lr-scale)
        was = ", ".join(f"{checkpoint.flag_name(k)} {old}" for k, (old, _) in changed.items())
        raise UserError(path, f"does not fit this run ({str(err).splitlines()[0][:120]})",
                        f"resume with the flags it was trained with{f' ({was})' if was else ''}") from err
    checkpoint.warn_changed_recipe(path, changed)
    start_epoch, start_batch, state.step = ckpt["epoch"], ckpt.get("batch_in_epoch", 0), ckpt["step"]
    state.best = ckpt.get("best", -math.inf)
    if ckpt.get("scaler"):  # empty when the checkpointed run did not scale (bf16, fp32)
        state.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])  # starting a loader draws nothing from it (make_loader)
    if world.is_main:
        print(f"resumed from {path}: epoch {start_epoch}, batch {start_batch}, step {state.step}")
        _drop_rows_after(cfg.out / "log.csv", start_epoch)
    return start_epoch, start_batch


def _check_ema(path: Path, saved: bool, kept: bool, saved_decay: Any, decay: Any) -> None:
    """A resume keeps an EMA of the weights exactly when its checkpoint has one: dropping it would lose the average,
    and `best` (the EMA's score) would then be compared with the live model's, and the other way round."""
    if saved and not kept:
        raise UserError("--ema-decay", f"{path} holds an EMA of the weights (--ema-decay {saved_decay}), whose score "
                        "is the run's best: without --ema-decay this run would drop it",
                        f"resume with --ema-decay {saved_decay}")
    if kept and not saved:
        raise UserError("--ema-decay", f"{path} holds no EMA of the weights for --ema-decay {decay} to go on from "
                        "(its best score is the live model's)", "resume without --ema-decay, or train anew in another "
                        "--out")


def _drop_rows_after(log: Path, epoch: int) -> None:
    """A resumed run redoes the epochs after its checkpoint: drop their rows, so each epoch is logged once."""
    if not log.is_file():
        return
    rows = io.read_csv_rows(log)
    kept = [r for r in rows if int(r["epoch"]) <= epoch]
    if len(kept) < len(rows):
        io.write_csv(log, list(rows[0]), [list(r.values()) for r in kept])
        print(f"note: {log}: dropped the rows of epochs after {epoch}, which this run redoes")
