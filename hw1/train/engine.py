"""The one training loop. `fit` runs a script's `Task` with AdamW + warm-up/cosine: resume, the epochs, evaluation,
the checkpoint cadence and the `log.csv` rows. `train_one_epoch` holds the step; `describe_model` is `--print-model`."""
from __future__ import annotations

import datetime
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import io
from ..errors import WARNINGS, UserError
from . import checkpoint, precision, stopping
from . import state as train_state
from .config import TrainConfig
from .distributed import World, all_reduce_sum, seed_step
from .loading import to_device
from .precision import Precision
from .state import TrainState


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
    lr_scale: Callable[[str], float] | None = None              # parameter name → its fraction of the lr
    ema: nn.Module | None = None    # an EMA of `model` (`.module`), `.update()`d each step: evaluated, kept as best.pt

    @property
    def evaluated(self) -> nn.Module:
        """The model the monitor scores and `best.pt` keeps: the EMA of the weights when the run has one."""
        return self.ema.module if self.ema is not None else self.model  # type: ignore[return-value]


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
    state = train_state.fresh(task.model, cfg, steps_per_epoch, prec, device, verbose=world.is_main,
                              lr_scale=task.lr_scale)
    start_epoch, start_batch = (train_state.resume(state, task.model, task.meta, cfg, world, task.ema) if cfg.resume
                                else (0, 0))
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
        if task.ema is not None:
            task.ema.update()  # type: ignore[operator]
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
            _write_last(state, cfg, train_state.as_checkpoint(state, task.model, task.meta, cfg, epoch, next_batch,
                                                                  task.ema))
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
    task.evaluated.eval()
    with torch.no_grad(), prec.autocast():
        return task.evaluate(task.evaluated, epoch)  # type: ignore[misc]


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
            weights = {k: v.detach().to("cpu", copy=True) for k, v in task.evaluated.state_dict().items()}
            state.unsaved_best = {"model": weights, "meta": task.meta, "epoch": epoch + 1, "best": state.best,
                                  "args": cfg.flags}
    first = task.keep_first and epoch == 0
    due = (last or done.stopping or first or (epoch + 1) % cfg.save_every == 0
           or time.monotonic() - state.last_save >= 60 * cfg.save_minutes)
    if not world.is_main or not due:
        return
    ckpt = train_state.as_checkpoint(state, task.model, task.meta, cfg, epoch + 1 if done.finished else epoch,
                                     0 if done.finished else done.next_batch, task.ema)
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


def _describe(record: dict) -> str:
    parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()]
    return f"[{datetime.datetime.now():%H:%M:%S}] " + " ".join(parts)


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
