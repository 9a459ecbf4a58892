"""The one training loop. `fit` runs a script's `Task` with AdamW + warm-up/cosine: resume, the epochs, evaluation,
the checkpoint cadence and the `log.csv` rows. `train_one_epoch` holds the step."""
from __future__ import annotations

import argparse
import datetime
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import checkpoint, compat, io, optim, precision, stopping
from .checkpoint import rng_state, set_rng_state
from .distributed import World, all_reduce_sum, seed_step
from .errors import WARNINGS, UserError
from .loading import to_device
from .models import describe_model
from .precision import Precision


# ---------------------------------------------------------------- arguments


def add_common_args(
    parser: argparse.ArgumentParser, *, epochs: int, batch_size: int, image_size: int,
    warmup_steps: int, lr: float = 1e-4, weight_decay: float = 0.05, out: str = "runs/run",
) -> None:
    """The flags every training script shares (SPEC §7), defaults set to the reference recipe."""
    g = parser.add_argument_group("common training flags")
    g.add_argument("--data-root", default="hw1_data", help="course data folder (default: %(default)s)")
    g.add_argument("--out", default=out, help="checkpoints, logs and figures go here (default: %(default)s)")
    g.add_argument("--epochs", type=int, default=epochs, help="default: %(default)s")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps (smoke runs)")
    g.add_argument("--batch-size", type=int, default=batch_size,
                   help="global batch, split across DDP ranks (default: %(default)s)")
    g.add_argument("--image-size", type=int, default=image_size, help="default: %(default)s")
    g.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="data-loader processes (default: %(default)s)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: %(default)s")
    g.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="resume from CKPT, or from OUT/last.pt when no path is given")
    g.add_argument("--save-every", type=int, default=1, metavar="N",
                   help="write OUT/last.pt every N epochs, after the last and on SIGTERM/SIGINT (default: %(default)s)")
    g.add_argument("--save-minutes", type=float, default=10.0, metavar="M",
                   help="also write it at the first epoch end M minutes after the previous write "
                        "(default: %(default)s)")
    g.add_argument("--lr", type=float, default=lr, help="AdamW learning rate (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=weight_decay, help="default: %(default)s")
    g.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), help="AdamW betas (default: 0.9 0.999)")
    g.add_argument("--warmup-steps", type=int, default=warmup_steps,
                   help="linear warm-up iterations, then cosine (default: %(default)s)")
    g.add_argument("--eval-every", type=int, default=1,
                   help="evaluate every N epochs (and after the last) (default: %(default)s)")
    precision.add_arg(g)
    g.add_argument("--compile", action=compat.BooleanOptionalAction, default=False,
                   help="torch.compile the model (default: off)")
    g.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    g.add_argument("--print-model", action="store_true",
                   help="write the module tree and parameter counts to OUT/model.txt and stdout, then exit without "
                        "training")


@dataclass(frozen=True)
class TrainConfig:
    """The common flags `fit` reads, typed; `flags` is every flag of the script, as `last.pt` records them."""

    out: Path
    epochs: int
    max_steps: float            # --max-steps, or inf
    seed: int
    resume: str | None          # a path, "auto" (OUT/last.pt) or None
    save_every: int
    save_minutes: float
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_steps: int
    eval_every: int
    precision: str
    compile: bool
    print_model: bool
    flags: dict

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        for flag in ("eval_every", "save_every"):
            if getattr(args, flag) < 1:
                raise UserError(f"--{flag.replace('_', '-')}", f"must be 1 or more, not {getattr(args, flag)}",
                                "pass a number of epochs")
        return cls(Path(args.out), args.epochs, math.inf if args.max_steps is None else args.max_steps, args.seed,
                   args.resume, args.save_every, args.save_minutes, args.lr, args.weight_decay, tuple(args.betas),
                   args.warmup_steps, args.eval_every, args.precision, args.compile, args.print_model, dict(vars(args)))


@dataclass
class Task:
    """What a script plugs into `fit`: its model, loss and optional hooks."""

    model: nn.Module                                            # whose state is checkpointed
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]           # (model for forward, batch on device) → loss
    meta: dict                                                  # task, arch, num_classes, image_size…
    evaluate: Callable[[nn.Module, int], dict] | None = None    # (model, epoch) → metrics, run on every rank
    monitor: str | None = None                                  # metric for `best.pt` (higher is better)
    before_step: Callable[[int], None] | None = None            # e.g. seed the batched views for this step
    after_step: Callable[[int], None] | None = None             # e.g. the BYOL target EMA
    on_epoch_end: Callable[[int, dict], None] | None = None     # rank 0 only: snapshots
    on_save: Callable[[int], None] | None = None                # rank 0, with each epoch-end `last.pt`: exports
    keep_first: bool = False                                    # also write `first.pt` (and `last.pt`) after epoch 0
    keep_best: bool = True                                      # write `best.pt` when the monitor improves
    evaluate_at_start: bool = False                             # also evaluate the initial model (epoch 0 in log.csv)


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


# ---------------------------------------------------------------- the training loop


def fit(cfg: TrainConfig, task: Task, loader: DataLoader, world: World, device: torch.device) -> list[dict]:
    """Train `task.model` on `loader`'s batches; log, checkpoint and resume. Returns the epoch log."""
    if cfg.print_model:
        if world.is_main:
            text = describe_model(task.model)
            io.write_text(cfg.out / "model.txt", text)
            print(text + f"\nwrote {cfg.out / 'model.txt'}")
        return []
    if world.is_main:
        io.ensure_dir(cfg.out)  # an unwritable --out fails now, not after the first epoch
    steps_per_epoch = loader.sampler.batches_per_epoch()  # type: ignore[attr-defined]
    if steps_per_epoch == 0:
        raise UserError(cfg.flags.get("data_root", "--data-root"), "no training batches (the training set is empty)",
                        "check --data-root")
    prec = precision.resolve(cfg.precision, device)
    state = _fresh_state(task.model, cfg, steps_per_epoch, prec, device, verbose=world.is_main)
    start_epoch, start_batch = _resume(state, task, cfg, world) if cfg.resume else (0, 0)
    train_model = _wrap(task.model, cfg, world, device)
    history: list[dict] = []
    if task.evaluate and task.evaluate_at_start and state.step == 0:  # the baseline a run's progress is measured from
        history.append(_evaluate_initial(task, prec, cfg, world))
    state.last_save = time.monotonic()
    with stopping.StopRequested() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            if state.step >= cfg.max_steps:
                break
            loader.sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)  # type: ignore[attr-defined]
            done = train_one_epoch(train_model, task, loader, state, cfg, prec, world, device, epoch, stop)
            history.append(_end_epoch(task, state, cfg, prec, world, epoch, done))
            if done.stopping:  # the signal came with the epoch's last batch: the epoch ended normally above
                if world.is_main:
                    print(f"stopped after epoch {epoch + 1}; resume with --resume")
                stopping.exit_stopped()
    return history


@dataclass
class _Epoch:
    """How one pass over the loader went."""

    mean_loss: float
    finished: bool       # it reached the epoch's last batch
    next_batch: int      # where a resume would pick the epoch up
    stopping: bool       # a SIGTERM/SIGINT came, on any rank
    step_s: float        # wall time of the steps, data wait included
    data_wait_s: float   # blocked on the loader (its start-up included)


def train_one_epoch(train_model: nn.Module, task: Task, loader: DataLoader, state: TrainState, cfg: TrainConfig,
                    prec: Precision, world: World, device: torch.device, epoch: int,
                    stop: stopping.StopRequested) -> _Epoch:
    """The epoch's steps, from a resumed batch on; a stop request mid-epoch checkpoints and exits here."""
    task.model.train()
    sampler = loader.sampler  # an EpochSampler (loading.make_loader)
    first_batch, steps_per_epoch = sampler.start_batch, sampler.batches_per_epoch()  # type: ignore[attr-defined]
    loss_sum = torch.zeros((), device=device)
    first_bad = torch.full((), math.inf, device=device)
    n_steps, stop_now, data_wait, next_batch = 0, False, 0.0, first_batch
    t0 = t_ready = time.perf_counter()
    bar = tqdm(iter(loader), total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not world.is_main,
               leave=False, dynamic_ncols=True)
    for next_batch, batch in enumerate(bar, start=first_batch + 1):  # numbered as the batch after it
        data_wait += time.perf_counter() - t_ready
        batch = to_device(batch, device, prec.memory_format)
        seed_step(cfg.seed, world, state.step)  # under DDP: each rank's dropout from (seed, rank, step)
        if task.before_step:
            task.before_step(state.step)
        with prec.autocast():
            loss = task.loss_fn(train_model, batch)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)  # fp16: skipped while the scaled gradients hold inf/NaN
        state.scaler.update()
        _advance_schedule(state)
        if task.after_step:
            task.after_step(state.step)
        state.step += 1

        loss = loss.detach().float()
        n_steps += 1
        loss_sum += loss
        first_bad = torch.where(torch.isfinite(loss), first_bad, first_bad.clamp(max=float(state.step)))  # no sync
        # Ranks agree on stopping (NaN, SIGTERM) at these steps; the last batch of an epoch is one of them.
        if (n_steps % 20 == 0 or state.step >= cfg.max_steps or next_batch >= steps_per_epoch
                or (stop.requested and not world.enabled)):
            stop_now = stopping.agree_to_stop(first_bad, stop.requested, cfg.out)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{state.scheduler.get_last_lr()[0]:.2e}")
        if stop_now or state.step >= cfg.max_steps:
            break
        t_ready = time.perf_counter()
    bar.close()
    finished = next_batch >= steps_per_epoch if n_steps else True
    if stop_now and not finished:
        stopping.raise_if_nonfinite(task.model, state.step, cfg.out)
        if world.is_main:
            _write_last(state, cfg, _checkpoint(state, task, cfg, epoch, next_batch))
            print(f"saved {cfg.out / 'last.pt'} (epoch {epoch + 1}, batch {next_batch}); resume with --resume")
        stopping.exit_stopped()
    mean_loss = all_reduce_sum(loss_sum.clone()).item() / max(1, n_steps * world.size)  # a sync: the steps are done
    stopping.raise_if_nonfinite(task.model, state.step, cfg.out)
    return _Epoch(mean_loss, finished, next_batch, stop_now, time.perf_counter() - t0, data_wait)


def _advance_schedule(state: TrainState) -> None:
    """fp16: GradScaler skips the steps whose scaled gradients overflowed (the first few of a run, while it finds
    its scale); the schedule advances on them too, by design, so that steps, warm-up and resume count alike.
    torch warns about that as a misordered call: silenced for those runs only."""
    if not state.scaler.is_enabled():
        state.scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer")
        state.scheduler.step()


def _wrap(model: nn.Module, cfg: TrainConfig, world: World, device: torch.device) -> nn.Module:
    """The module the steps call: DDP across ranks, then torch.compile when asked; `model` stays the one saved."""
    if world.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return torch.compile(model) if cfg.compile else model


# ---------------------------------------------------------------- the epoch's end: evaluation, checkpoints, log


def _end_epoch(task: Task, state: TrainState, cfg: TrainConfig, prec: Precision, world: World, epoch: int,
               done: _Epoch) -> dict:
    """Evaluate when due, write the checkpoints due, log the epoch's row; returns the row."""
    t_steps = time.perf_counter()
    record = {"epoch": epoch + 1, "step": state.step, "train_loss": done.mean_loss,
              "lr": state.scheduler.get_last_lr()[0]}
    last = epoch + 1 == cfg.epochs or state.step >= cfg.max_steps
    if task.evaluate and ((epoch + 1) % cfg.eval_every == 0 or last):
        record.update(_evaluate(task, prec, epoch))
    t_eval = time.perf_counter()
    _save_due(task, state, cfg, world, epoch, done, record, last)
    t_saved = time.perf_counter()
    # Where the epoch's wall time went (on a GPU, a stall shows here): steps (data wait included), monitor, files.
    record.update(step_s=round(done.step_s, 3), data_wait_s=round(done.data_wait_s, 3),
                  eval_s=round(t_eval - t_steps, 3), checkpoint_s=round(t_saved - t_eval, 3))
    if world.is_main:
        io.append_csv_row(cfg.out / "log.csv", record)
        if task.on_epoch_end:
            task.on_epoch_end(epoch, record)
        print(_describe(record))
        WARNINGS.flush()
    return record


def _evaluate(task: Task, prec: Precision, epoch: int) -> dict:
    """The task's metrics, in eval mode and under the run's autocast (epoch -1: before the first step)."""
    task.model.eval()
    with torch.no_grad(), prec.autocast():
        return task.evaluate(task.model, epoch)  # type: ignore[misc]


def _evaluate_initial(task: Task, prec: Precision, cfg: TrainConfig, world: World) -> dict:
    """Epoch 0 of the log: the monitor on the model before its first step."""
    t0 = time.perf_counter()
    record = {"epoch": 0, "step": 0, **_evaluate(task, prec, -1)}
    record["eval_s"] = round(time.perf_counter() - t0, 3)
    if world.is_main:
        io.append_csv_row(cfg.out / "log.csv", record)
        print(_describe(record))
    return record


def _save_due(task: Task, state: TrainState, cfg: TrainConfig, world: World, epoch: int, done: _Epoch, record: dict,
              last: bool) -> None:
    """`last.pt` (and `first.pt`, the task's exports) at the --save-every/--save-minutes cadence; an improved monitor
    keeps the weights in memory, and `best.pt` is written with the next `last.pt`: a run killed between two writes
    resumes from a `last.pt` and a `best.pt` of the same moment."""
    improved = task.monitor is not None and task.monitor in record and record[task.monitor] > state.best
    if improved:
        state.best = record[task.monitor]
        if task.keep_best and world.is_main:
            # a copy on the CPU: training goes on
            weights = {k: v.detach().to("cpu", copy=True) for k, v in task.model.state_dict().items()}
            state.unsaved_best = {"model": weights, "meta": task.meta, "epoch": epoch + 1, "best": state.best,
                                  "args": cfg.flags}
    first = task.keep_first and epoch == 0
    due = (last or done.stopping or first or (epoch + 1) % cfg.save_every == 0
           or time.monotonic() - state.last_save >= 60 * cfg.save_minutes)
    if not world.is_main or not due:
        return
    ckpt = _checkpoint(state, task, cfg, epoch + 1 if done.finished else epoch, 0 if done.finished else done.next_batch)
    _write_last(state, cfg, ckpt)
    if first:
        checkpoint.save_checkpoint(cfg.out / "first.pt", ckpt)
    if task.on_save:
        task.on_save(epoch)
    state.last_save = time.monotonic()


def _write_last(state: TrainState, cfg: TrainConfig, ckpt: dict) -> None:
    """`last.pt`, after the `best.pt` kept in memory since the last write (if any)."""
    if state.unsaved_best is not None:
        checkpoint.save_checkpoint(cfg.out / "best.pt", state.unsaved_best)
        state.unsaved_best = None
    checkpoint.save_checkpoint(cfg.out / "last.pt", ckpt)


# ---------------------------------------------------------------- the state: fresh, as a checkpoint, resumed


def _fresh_state(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int, prec: Precision, device: torch.device,
                 verbose: bool) -> TrainState:
    """AdamW over the trainable parameters, the warm-up/cosine schedule over the run's steps, the precision's scaler."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = optim.build_optimizer(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                                      fused=device.type == "cuda")
    warmup, total = optim.schedule_lengths(cfg.warmup_steps, steps_per_epoch * cfg.epochs, verbose=verbose)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, optim.warmup_cosine_lambda(warmup, total))
    return TrainState(optimizer, scheduler, prec.grad_scaler())


def _checkpoint(state: TrainState, task: Task, cfg: TrainConfig, epoch: int, batch_in_epoch: int) -> dict:
    """What `last.pt` holds."""
    return {
        "model": task.model.state_dict(), "optimizer": state.optimizer.state_dict(),
        "lr_scheduler": state.scheduler.state_dict(), "epoch": epoch, "batch_in_epoch": batch_in_epoch,
        "step": state.step, "best": state.best, "args": cfg.flags, "meta": task.meta, "rng": rng_state(),
        "scaler": state.scaler.state_dict(),
    }


def _resume(state: TrainState, task: Task, cfg: TrainConfig, world: World) -> tuple[int, int]:
    """Load --resume's checkpoint into the model and `state`; returns the (epoch, batch in epoch) to start from."""
    path = cfg.out / "last.pt" if cfg.resume == "auto" else Path(cfg.resume)  # type: ignore[arg-type]
    if cfg.resume == "auto" and not path.exists():
        print(f"note: {path} not found; starting from scratch")
        return 0, 0
    ckpt = checkpoint.load_checkpoint(path)
    if missing := [k for k in ("model", "optimizer", "lr_scheduler", "epoch", "step", "rng") if k not in ckpt]:
        raise UserError(path, f"not a training checkpoint (no {', '.join(missing)})",
                        "--resume takes the last.pt a training run wrote")
    checkpoint.check_meta(path, ckpt.get("meta", {}), task.meta)
    checkpoint.warn_changed_recipe(path, ckpt.get("args", {}), cfg.flags)
    try:
        task.model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise UserError(path, f"weights do not fit this model ({str(err).splitlines()[0][:120]})",
                        "resume with the flags the checkpoint was trained with") from err
    optim.restore(state.optimizer, state.scheduler, ckpt, cfg.lr)
    start_epoch, start_batch, state.step = ckpt["epoch"], ckpt.get("batch_in_epoch", 0), ckpt["step"]
    state.best = ckpt.get("best", -math.inf)
    if ckpt.get("scaler"):  # empty when the checkpointed run did not scale (bf16, fp32)
        state.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])  # starting a loader draws nothing from it (make_loader)
    if world.is_main:
        print(f"resumed from {path}: epoch {start_epoch}, batch {start_batch}, step {state.step}")
        _drop_rows_after(cfg.out / "log.csv", start_epoch)
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


def _describe(record: dict) -> str:
    parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()]
    return f"[{datetime.datetime.now():%H:%M:%S}] " + " ".join(parts)
