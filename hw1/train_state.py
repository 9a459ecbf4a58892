"""The state of a training run (model, optimiser, schedule, scaler, step and best monitor value): set up fresh,
resumed from a checkpoint, and written back as one."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from . import checkpoint, io, optim, precision
from .checkpoint import rng_state, set_rng_state
from .distributed import World
from .errors import UserError
from .loading import EpochSampler
from .precision import Precision

if TYPE_CHECKING:
    from .engine import Task


@dataclass
class TrainState:
    """What `fit` carries from step to step and epoch to epoch; `as_checkpoint` is what `last.pt` holds."""

    args: argparse.Namespace
    task: Task
    out: Path
    world: World
    device: torch.device
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    prec: Precision
    scaler: Any                 # torch.amp.GradScaler: a pass-through unless fp16
    steps_per_epoch: int
    max_steps: float            # --max-steps, or inf
    step: int = 0
    best: float = -math.inf     # the monitor's best value so far
    last_save: float = 0.0      # time.monotonic() of the last epoch-end `last.pt`
    unsaved_best: dict | None = None  # `best.pt` to be: the best weights on the CPU, written with the next `last.pt`

    @property
    def sampler(self) -> EpochSampler:
        return self.loader.sampler  # type: ignore[return-value]

    def best_checkpoint(self, epoch: int) -> dict:
        """What `best.pt` holds: the model's weights now (copied to the CPU, so training can go on) and its meta."""
        weights = {k: v.detach().to("cpu", copy=True) for k, v in self.task.model.state_dict().items()}
        return {"model": weights, "meta": self.task.meta, "epoch": epoch, "best": self.best, "args": vars(self.args)}

    def as_checkpoint(self, epoch: int, batch_in_epoch: int) -> dict:
        return {
            "model": self.task.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(), "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "step": self.step, "best": self.best, "args": vars(self.args), "meta": self.task.meta, "rng": rng_state(),
            "scaler": self.scaler.state_dict(),
        }


def start(args: argparse.Namespace, task: Task, loader: DataLoader, world: World, device: torch.device) -> TrainState:
    """A fresh run: the optimiser, the warm-up/cosine schedule over the run's steps, the precision."""
    optimizer = optim.build_optimizer([p for p in task.model.parameters() if p.requires_grad], args, device)
    steps_per_epoch = loader.sampler.batches_per_epoch()  # type: ignore[attr-defined]
    if steps_per_epoch == 0:
        raise UserError(args.data_root, "no training batches (the training set is empty)", "check --data-root")
    warmup, total = optim.schedule_lengths(args, steps_per_epoch, verbose=world.is_main)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, optim.warmup_cosine_lambda(warmup, total))
    prec = precision.resolve(args.precision, device)
    return TrainState(args, task, Path(args.out), world, device, loader, optimizer, scheduler, prec, prec.grad_scaler(),
                      steps_per_epoch, args.max_steps if args.max_steps is not None else math.inf)


def resume(run: TrainState) -> tuple[int, int]:
    """Load --resume's checkpoint into the run; returns the (epoch, batch in epoch) to start from."""
    args, out = run.args, run.out
    path = out / "last.pt" if args.resume == "auto" else Path(args.resume)
    if args.resume == "auto" and not path.exists():
        print(f"note: {path} not found; starting from scratch")
        return 0, 0
    ckpt = checkpoint.load_checkpoint(path)
    if missing := [k for k in ("model", "optimizer", "lr_scheduler", "epoch", "step", "rng") if k not in ckpt]:
        raise UserError(path, f"not a training checkpoint (no {', '.join(missing)})",
                        "--resume takes the last.pt a training run wrote")
    checkpoint.check_meta(path, ckpt.get("meta", {}), run.task.meta)
    checkpoint.warn_changed_recipe(path, ckpt.get("args", {}), args)
    try:
        run.task.model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise UserError(path, f"weights do not fit this model ({str(err).splitlines()[0][:120]})",
                        "resume with the flags the checkpoint was trained with") from err
    optim.restore(run.optimizer, run.scheduler, ckpt, args.lr)
    start_epoch, start_batch, run.step = ckpt["epoch"], ckpt.get("batch_in_epoch", 0), ckpt["step"]
    run.best = ckpt.get("best", -math.inf)
    if ckpt.get("scaler"):  # empty when the checkpointed run did not scale (bf16, fp32)
        run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])  # starting a loader draws nothing from it (make_loader)
    if run.world.is_main:
        print(f"resumed from {path}: epoch {start_epoch}, batch {start_batch}, step {run.step}")
        _drop_rows_after(out / "log.csv", start_epoch)
    return start_epoch, start_batch


def _drop_rows_after(log: Path, epoch: int) -> None:
    """A resumed run redoes the epochs after its checkpoint: drop their rows, so each epoch is logged once."""
    if not log.is_file():
        return
    rows = io.read_csv_rows(log)
    kept = [r for r in rows if int(r["epoch"]) <= epoch]
    if len(kept) < len(rows):
        io.write_csv(log, list(rows[0]), [list(r.values()) for r in kept])
        print(f"note: {log}: dropped the rows of epochs after {epoch}, which this run redoes")
