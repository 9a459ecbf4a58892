"""The flags every training script shares and the one training loop (`Task`, `fit`): the epoch's steps, then
each epoch's evaluation, checkpoints and log row; `describe_model` for --print-model."""
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

from . import checkpoint, compat, io, precision, stopping, train_state
from .distributed import World, all_reduce_sum, seed_step
from .errors import WARNINGS, UserError
from .loading import to_device
from .train_state import TrainState


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
    g.add_argument("--batch-size", type=int, default=batch_size, help="global batch, split across DDP ranks (default: %(default)s)")
    g.add_argument("--image-size", type=int, default=image_size, help="default: %(default)s")
    g.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data-loader processes (default: %(default)s)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: %(default)s")
    g.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="resume from CKPT, or from OUT/last.pt when no path is given")
    g.add_argument("--save-every", type=int, default=1, metavar="N",
                   help="write OUT/last.pt every N epochs, after the last and on SIGTERM/SIGINT (default: %(default)s)")
    g.add_argument("--save-minutes", type=float, default=10.0, metavar="M",
                   help="also write it at the first epoch end M minutes after the previous write (default: %(default)s)")
    g.add_argument("--lr", type=float, default=lr, help="AdamW learning rate (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=weight_decay, help="default: %(default)s")
    g.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), help="AdamW betas (default: 0.9 0.999)")
    g.add_argument("--warmup-steps", type=int, default=warmup_steps, help="linear warm-up iterations, then cosine (default: %(default)s)")
    g.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (and after the last) (default: %(default)s)")
    precision.add_arg(g)
    g.add_argument("--compile", action=compat.BooleanOptionalAction, default=False, help="torch.compile the model (default: off)")
    g.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    g.add_argument("--print-model", action="store_true",
                   help="write the module tree and parameter counts to OUT/model.txt and stdout, then exit without training")


@dataclass
class Task:
    """What a script plugs into `fit`: its model, loss and optional hooks."""

    model: nn.Module                                            # whose state is checkpointed
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]           # (model for forward, batch on device) → loss
    meta: dict                                                  # task, arch, num_classes, image_size…
    evaluate: Callable[[nn.Module, int], dict] | None = None    # (model, epoch) → metrics, run on every rank
    monitor: str | None = None                                  # metric for `best.pt` (higher is better)
    before_step: Callable[[int], None] | None = None            # e.g. seed the batched BYOL views for this step
    after_step: Callable[[int], None] | None = None             # e.g. the BYOL target EMA
    on_epoch_end: Callable[[int, dict], None] | None = None     # rank 0 only: snapshots
    on_save: Callable[[int], None] | None = None                # rank 0, with each epoch-end `last.pt`: exports
    keep_first: bool = False                                    # also write `first.pt` (and `last.pt`) after epoch 0
    keep_best: bool = True                                      # write `best.pt` when the monitor improves
    evaluate_at_start: bool = False                             # also evaluate the initial model (epoch 0 in log.csv)
    device_batch: Callable[[Any, torch.device, torch.memory_format], Any] = to_device


# ---------------------------------------------------------------- the training loop


def fit(args: argparse.Namespace, task: Task, loader: DataLoader, world: World, device: torch.device) -> list[dict]:
    """Train `task.model` with AdamW + warm-up/cosine; log, checkpoint and resume. Returns the epoch log."""
    out = Path(args.out)
    if getattr(args, "print_model", False):
        if world.is_main:
            text = describe_model(task.model)
            io.write_text(out / "model.txt", text)
            print(text + f"\nwrote {out / 'model.txt'}")
        return []
    for flag in ("eval_every", "save_every"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}", f"must be 1 or more, not {getattr(args, flag)}", "pass a number of epochs")
    if world.is_main:
        io.ensure_dir(out)  # an unwritable --out fails now, not after the first epoch
    run = train_state.start(args, task, loader, world, device)
    start_epoch, start_batch = train_state.resume(run) if args.resume else (0, 0)
    train_model = _wrap(task.model, args, world, device)
    history: list[dict] = []
    if task.evaluate and task.evaluate_at_start and run.step == 0:  # the baseline a run's progress is measured from
        history.append(_evaluate_initial(run))
    run.last_save = time.monotonic()
    with stopping.StopRequested() as stop:
        for epoch in range(start_epoch, args.epochs):
            if run.step >= run.max_steps:
                break
            run.sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
            done = _train_epoch(run, train_model, epoch, stop)
            history.append(_end_epoch(run, epoch, done))
            if done.stopping:  # the signal came with the epoch's last batch: the epoch ended normally above
                if world.is_main:
                    print(f"stopped after epoch {epoch + 1}; resume with --resume")
                stopping.exit_stopped()
    return history


def _wrap(model: nn.Module, args: argparse.Namespace, world: World, device: torch.device) -> nn.Module:
    """The module the steps call: DDP across ranks, then torch.compile when asked; `model` stays the one saved."""
    if world.enabled:
        model = nn.parallel.DistributedDataParallel(model, **({"device_ids": [device.index]} if device.type == "cuda" else {}))
    return torch.compile(model) if args.compile else model


@dataclass
class _Epoch:
    """How one pass over the loader went."""

    mean_loss: float
    finished: bool       # it reached the epoch's last batch
    next_batch: int      # where a resume would pick the epoch up
    stopping: bool       # a SIGTERM/SIGINT came, on any rank
    step_s: float        # wall time of the steps, data wait included
    data_wait_s: float   # blocked on the loader (its start-up included)


def _train_epoch(run: TrainState, train_model: nn.Module, epoch: int, stop: stopping.StopRequested) -> _Epoch:
    """The epoch's steps, from a resumed batch on; a stop request mid-epoch checkpoints and exits here."""
    device, first_batch = run.device, run.sampler.start_batch
    run.task.model.train()
    loss_sum = torch.zeros((), device=device)
    first_bad = torch.full((), math.inf, device=device)
    n_steps, stop_now, data_wait, next_batch = 0, False, 0.0, first_batch
    t0 = t_ready = time.perf_counter()
    bar = tqdm(iter(run.loader), total=len(run.loader), desc=f"epoch {epoch + 1}/{run.args.epochs}",
               disable=not run.world.is_main, leave=False, dynamic_ncols=True)
    for next_batch, batch in enumerate(bar, start=first_batch + 1):  # numbered as the batch after it
        data_wait += time.perf_counter() - t_ready
        loss = _step(run, train_model, run.task.device_batch(batch, device, run.prec.memory_format))
        n_steps += 1
        loss_sum += loss
        first_bad = torch.where(torch.isfinite(loss), first_bad, first_bad.clamp(max=float(run.step)))  # no host→device copy: no sync
        # Ranks agree on stopping (NaN, SIGTERM) at these steps; the last batch of an epoch is one of them.
        if (n_steps % 20 == 0 or run.step >= run.max_steps or next_batch >= run.steps_per_epoch
                or (stop.requested and not run.world.enabled)):
            stop_now = stopping.agree_to_stop(first_bad, stop.requested, run.out)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{run.scheduler.get_last_lr()[0]:.2e}")
        if stop_now or run.step >= run.max_steps:
            break
        t_ready = time.perf_counter()
    bar.close()
    finished = next_batch >= run.steps_per_epoch if n_steps else True
    if stop_now and not finished:
        stopping.raise_if_nonfinite(run.task.model, run.step, run.out)
        if run.world.is_main:
            _write_last(run, run.as_checkpoint(epoch, next_batch))
            print(f"saved {run.out / 'last.pt'} (epoch {epoch + 1}, batch {next_batch}); resume with --resume")
        stopping.exit_stopped()
    mean_loss = all_reduce_sum(loss_sum.clone()).item() / max(1, n_steps * run.world.size)  # a sync: the steps are done
    stopping.raise_if_nonfinite(run.task.model, run.step, run.out)
    return _Epoch(mean_loss, finished, next_batch, stop_now, time.perf_counter() - t0, data_wait)


def _step(run: TrainState, train_model: nn.Module, batch: Any) -> torch.Tensor:
    """One optimiser step with the task's hooks around it; returns the loss, detached."""
    task = run.task
    seed_step(run.args.seed, run.world, run.step)
    if task.before_step:
        task.before_step(run.step)
    with run.prec.autocast():
        loss = task.loss_fn(train_model, batch)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)  # fp16: skipped while the scaled gradients hold inf/NaN
    run.scaler.update()
    _advance_schedule(run)
    if task.after_step:
        task.after_step(run.step)
    run.step += 1
    return loss.detach().float()


def _advance_schedule(run: TrainState) -> None:
    """fp16: GradScaler skips the steps whose scaled gradients overflowed (the first few of a run, while it finds
    its scale); the schedule advances on them too, by design, so that steps, warm-up and resume count alike.
    torch warns about that as a misordered call: silenced for those runs only."""
    if not run.scaler.is_enabled():
        run.scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer")
        run.scheduler.step()


def _end_epoch(run: TrainState, epoch: int, done: _Epoch) -> dict:
    """Evaluate when due, write the checkpoints due, log the epoch's row; returns the row."""
    args, task = run.args, run.task
    t_steps = time.perf_counter()
    record = {"epoch": epoch + 1, "step": run.step, "train_loss": done.mean_loss, "lr": run.scheduler.get_last_lr()[0]}
    last = epoch + 1 == args.epochs or run.step >= run.max_steps
    if task.evaluate and ((epoch + 1) % args.eval_every == 0 or last):
        record.update(_evaluate(run, epoch))
    t_eval = time.perf_counter()
    _save_due(run, epoch, done, record, last)
    t_saved = time.perf_counter()
    # Where the epoch's wall time went (on a GPU, a stall shows here): steps (data wait included), monitor, files.
    record.update(step_s=round(done.step_s, 3), data_wait_s=round(done.data_wait_s, 3),
                  eval_s=round(t_eval - t_steps, 3), checkpoint_s=round(t_saved - t_eval, 3))
    if run.world.is_main:
        io.append_csv_row(run.out / "log.csv", record)
        if task.on_epoch_end:
            task.on_epoch_end(epoch, record)
        print(_describe(record))
        WARNINGS.flush()
    return record


def _evaluate(run: TrainState, epoch: int) -> dict:
    """The task's metrics, in eval mode and under the run's autocast (epoch -1: before the first step)."""
    run.task.model.eval()
    with torch.no_grad(), run.prec.autocast():
        return run.task.evaluate(run.task.model, epoch)


def _evaluate_initial(run: TrainState) -> dict:
    """Epoch 0 of the log: the monitor on the model before its first step."""
    t0 = time.perf_counter()
    record = {"epoch": 0, "step": 0, **_evaluate(run, -1)}
    record["eval_s"] = round(time.perf_counter() - t0, 3)
    if run.world.is_main:
        io.append_csv_row(run.out / "log.csv", record)
        print(_describe(record))
    return record


def _save_due(run: TrainState, epoch: int, done: _Epoch, record: dict, last: bool) -> None:
    """`last.pt` (and `first.pt`, the task's exports) at the --save-every/--save-minutes cadence; an improved monitor
    keeps the weights in memory, and `best.pt` is written with the next `last.pt`: a run killed between two writes
    resumes from a `last.pt` and a `best.pt` of the same moment."""
    task, out = run.task, run.out
    improved = task.monitor is not None and task.monitor in record and record[task.monitor] > run.best
    if improved:
        run.best = record[task.monitor]
        if task.keep_best and run.world.is_main:
            run.unsaved_best = run.best_checkpoint(epoch + 1)
    first = task.keep_first and epoch == 0
    due = (last or done.stopping or first or (epoch + 1) % run.args.save_every == 0
           or time.monotonic() - run.last_save >= 60 * run.args.save_minutes)
    if not run.world.is_main or not due:
        return
    state = run.as_checkpoint(epoch + 1 if done.finished else epoch, 0 if done.finished else done.next_batch)
    _write_last(run, state)
    if first:
        checkpoint.save_checkpoint(out / "first.pt", state)
    if task.on_save:
        task.on_save(epoch)
    run.last_save = time.monotonic()


def _write_last(run: TrainState, state: dict) -> None:
    """`last.pt`, after the `best.pt` kept in memory since the last write (if any)."""
    if run.unsaved_best is not None:
        checkpoint.save_checkpoint(run.out / "best.pt", run.unsaved_best)
        run.unsaved_best = None
    checkpoint.save_checkpoint(run.out / "last.pt", state)


def describe_model(model: nn.Module) -> str:
    """The module tree, then total and trainable parameter counts, overall and per top-level child."""
    seen: set[int] = set()

    def count(m: nn.Module, once: bool = False) -> tuple[int, int]:
        ps = [p for p in m.parameters() if not (once and id(p) in seen)]
        if once:
            seen.update(id(p) for p in ps)
        return sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.requires_grad)

    total, trainable = count(model)
    prefix, root = "", model
    while len(children := list(root.named_children())) == 1:  # a wrapper (e.g. Classifier.net): list its parts
        prefix, root = f"{prefix}{children[0][0]}.", children[0][1]
    lines = [str(model), "", f"{'module':<32} {'parameters':>14} {'trainable':>14}   (a part sharing "
             "parameters with one above counts only its own)"]
    for name, child in children:
        n, t = count(child, once=True)
        lines.append(f"{prefix + name:<32} {n:>14,} {t:>14,}")
    lines += [f"{'total':<32} {total:>14,} {trainable:>14,}",
              f"parameters: {total:,} total, {trainable:,} trainable"]
    return "\n".join(lines) + "\n"


def _describe(record: dict) -> str:
    parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()]
    return f"[{datetime.datetime.now():%H:%M:%S}] " + " ".join(parts)
