"""Device/seed/DDP setup, the warm-up + cosine schedule, checkpoints, and the one training loop."""
from __future__ import annotations

import argparse
import atexit
import datetime
import math
import multiprocessing.util  # noqa: F401 - its exit handler must be registered before ours
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from tqdm import tqdm

from . import io, precision
from .errors import WARNINGS, UserError
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
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the model (default: off)")
    g.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    g.add_argument("--print-model", action="store_true",
                   help="write the module tree and parameter counts to OUT/model.txt and stdout, then exit without training")


# ---------------------------------------------------------------- device, seeds, DDP


@dataclass
class Dist:
    """Where this process sits in a (possibly one-process) distributed run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` → CUDA when present; `cuda` without a GPU is a user error, not a crash deep inside."""
    has_cuda = torch.cuda.is_available()
    if name == "cuda" and not has_cuda:
        raise UserError("--device cuda", "CUDA was requested but no GPU is visible", "use --device cpu or --device auto")
    if name == "auto" and not has_cuda:
        if local_rank == 0:  # on stdout: stderr is kept for errors and warnings about the user's input
            print("note: --device auto: no CUDA GPU is visible; running on the CPU")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return torch.device("cuda", local_rank)


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the process group when started by torchrun (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = setup_device(device_name, dist.local_rank)
    if dist.enabled and not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return dist, device


def cleanup_distributed() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if torch_dist.is_initialized():
        torch_dist.all_reduce(t)
    return t


def to_device(batch: Any, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format) -> Any:
    """Move a (nested) batch; 4-D float images take `memory_format` (the model's: `Precision.memory_format`)."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if memory_format != torch.contiguous_format and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=memory_format)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device, memory_format) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, memory_format) for k, v in batch.items()}
    return batch


# ---------------------------------------------------------------- data loading


class EpochSampler(Sampler):
    """Shuffles by (seed, epoch), splits the global batch across ranks, and can start mid-epoch.

    It yields `(index, sample_seed)` pairs; `Seeded` turns the seed into the sample's own RNG
    state, so an image's augmentation depends only on (seed, epoch, index): the same with any
    number of workers or ranks and after a resume.
    """

    def __init__(self, size: int, batch_size: int, *, shuffle: bool, seed: int, dist: Dist, drop_last: bool) -> None:
        if batch_size % dist.world_size:
            raise UserError("--batch-size", f"{batch_size} does not split across {dist.world_size} processes",
                            "use a multiple of the process count")
        self.size, self.global_batch, self.shuffle, self.seed, self.dist = size, batch_size, shuffle, seed, dist
        self.local_batch = batch_size // dist.world_size
        self.drop_last = drop_last and size >= batch_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        return self.size // self.global_batch if self.drop_last else math.ceil(self.size / self.global_batch)

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=g)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order().tolist()
        n = self.batches_per_epoch()
        for b in range(self.start_batch, n):
            chunk = order[b * self.global_batch:(b + 1) * self.global_batch]
            mine = chunk[self.dist.rank::self.dist.world_size] if self.drop_last else _split(chunk, self.dist)
            base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
            yield from ((i, (base + i) % 2**63) for i in mine)

    def __len__(self) -> int:
        n = self.batches_per_epoch() - self.start_batch
        return max(n, 0) * self.local_batch


def _split(chunk: list[int], dist: Dist) -> list[int]:
    per = math.ceil(len(chunk) / dist.world_size)
    return chunk[dist.rank * per:(dist.rank + 1) * per]


class Seeded(Dataset):
    """Seeds torch/random/numpy from the sampler's per-sample seed before reading an item."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        in_main = get_worker_info() is None  # --workers 0: leave the training process's RNG streams as they were
        saved = rng_state() if in_main else None
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return self.dataset[index]
        finally:
            if saved is not None:
                set_rng_state(saved)


@atexit.register  # registered after multiprocessing's exit handler (imported above), so it runs first
def _kill_leftover_loader_workers() -> None:
    """At exit multiprocessing terminates daemonic children (SIGTERM), then joins them. Loader workers ignore
    SIGTERM (below), and an error raised in one leaves its iterator alive in the traceback, so that join
    would wait forever: kill such leftovers first."""
    leftovers = [proc for proc in multiprocessing.active_children() if proc.daemon]
    if leftovers:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would raise "worker killed" in here
        for proc in leftovers:
            proc.kill()
        for proc in leftovers:
            proc.join(timeout=5)


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGINT/SIGTERM to the training process, which checkpoints before it stops
    (a Ctrl-C or a scheduler's SIGTERM reaches the whole process group)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, workers: int, seed: int, dist: Dist,
                device: torch.device, collate_fn: Callable | None = None) -> DataLoader:
    """A loader whose sampler is an `EpochSampler`; `batch_size` is the global batch.

    Its workers live across epochs: the sampler runs in this process and hands each worker
    `(index, sample_seed)` keys, so a kept worker still sees each epoch's order and seeds. Its own
    generator (for the workers' base seeds, which `Seeded` overrides) keeps starting an epoch off
    the global RNG, so a fresh loader after a resume draws nothing a kept one would not.
    """
    sampler = EpochSampler(len(dataset), batch_size, shuffle=train, seed=seed, dist=dist, drop_last=train)  # type: ignore[arg-type]
    return DataLoader(
        Seeded(dataset), batch_size=sampler.local_batch, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=False, persistent_workers=workers > 0,
        collate_fn=collate_fn, prefetch_factor=4 if workers > 0 else None, generator=torch.Generator(),
        worker_init_fn=_ignore_stop_signals if workers > 0 else None,
    )


# ---------------------------------------------------------------- optimiser and schedule


def build_optimizer(params: list[nn.Parameter], args: argparse.Namespace, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused on CUDA; weight decay skips biases and norm weights (1-D tensors)."""
    decay = [p for p in params if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in params if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=args.lr, betas=tuple(args.betas),
                             fused=device.type == "cuda")


def warmup_cosine_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up from ~0 to 1 over `warmup_steps`, then cosine to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def schedule_lengths(args: argparse.Namespace, steps_per_epoch: int, verbose: bool = True) -> tuple[int, int]:
    """(warm-up, total) steps; a warm-up longer than a short run is cut to a tenth of it, with a note."""
    total = steps_per_epoch * args.epochs
    warmup = args.warmup_steps
    if warmup >= total:
        warmup = max(1, total // 10)
        if verbose:
            print(f"note: warm-up of {args.warmup_steps} steps exceeds the run's {total} steps; using {warmup}")
    return warmup, total


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    with io.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict, turning missing or corrupted files into one clear error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(path, "checkpoint file not found", "train first, or pass the right path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise UserError(path, f"not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]})",
                        "the file is corrupted or truncated; re-download or retrain it") from err
    if not isinstance(state, dict):
        raise UserError(path, "not a checkpoint dict", "pass a .pt file written by this project")
    return state


def check_meta(path: str | os.PathLike, found: dict, expected: dict, keys: tuple[str, ...] = ("task", "arch", "num_classes")) -> None:
    """A checkpoint of another model or class count is an error that names both."""
    for key in keys:
        if key in expected and key in found and found[key] != expected[key]:
            raise UserError(path, f"checkpoint holds {key}={found[key]!r} but this run needs {key}={expected[key]!r}",
                            "pass a checkpoint of the same model, or change the flags to match it")


def rng_state() -> dict:
    """The global generators. CUDA: this process's own device only. Every DDP rank is seeded alike and draws
    alike, so rank 0's state fits every rank's device; rank 0's copies of the other devices were never used."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if isinstance(state.get("cuda"), torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


_RECIPE_KEYS = ("lr", "weight_decay", "betas", "warmup_steps", "batch_size", "image_size", "epochs", "seed")


def warn_changed_recipe(path: str | os.PathLike, saved: dict, args: argparse.Namespace) -> None:
    changed = [f"{k} {saved[k]}→{getattr(args, k)}" for k in _RECIPE_KEYS
               if k in saved and hasattr(args, k) and _norm(saved[k]) != _norm(getattr(args, k))]
    if changed:
        print(f"warning: {path}: resuming with other hyper-parameters: {', '.join(changed)} (the new values apply "
              "from here on)", file=sys.stderr)


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v


# ---------------------------------------------------------------- the training loop


class _StopRequested:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequested":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name} received: saving a checkpoint, then stopping", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


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
    device_batch: Callable[[Any, torch.device, torch.memory_format], Any] = to_device


def fit(args: argparse.Namespace, task: Task, loader: DataLoader, dist: Dist, device: torch.device) -> list[dict]:
    """Train `task.model` with AdamW + warm-up/cosine; log, checkpoint and resume. Returns the epoch log."""
    out = Path(args.out)
    model = task.model
    if getattr(args, "print_model", False):
        if dist.is_main:
            text = describe_model(model)
            io.write_text(out / "model.txt", text)
            print(text + f"\nwrote {out / 'model.txt'}")
        return []
    for flag in ("eval_every", "save_every"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}", f"must be 1 or more, not {getattr(args, flag)}", "pass a number of epochs")
    if dist.is_main:
        io.ensure_dir(out)  # an unwritable --out fails now, not after the first epoch
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, args, device)
    sampler: EpochSampler = loader.sampler  # type: ignore[assignment]
    steps_per_epoch = sampler.batches_per_epoch()
    if steps_per_epoch == 0:
        raise UserError(args.data_root, "no training batches (the training set is empty)", "check --data-root")
    warmup, total = schedule_lengths(args, steps_per_epoch, verbose=dist.is_main)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine_lambda(warmup, total))
    prec = precision.resolve(args.precision, device)
    scaler = prec.grad_scaler()  # a pass-through unless fp16

    start_epoch, start_batch, step, best = 0, 0, 0, -math.inf
    if args.resume:
        path = out / "last.pt" if args.resume == "auto" else Path(args.resume)
        if args.resume == "auto" and not path.exists():
            print(f"note: {path} not found; starting from scratch")
        else:
            ckpt = load_checkpoint(path)
            if missing := [k for k in ("model", "optimizer", "lr_scheduler", "epoch", "step", "rng") if k not in ckpt]:
                raise UserError(path, f"not a training checkpoint (no {', '.join(missing)})",
                                "--resume takes the last.pt a training run wrote")
            check_meta(path, ckpt.get("meta", {}), task.meta)
            warn_changed_recipe(path, ckpt.get("args", {}), args)
            try:
                model.load_state_dict(ckpt["model"])
            except RuntimeError as err:
                raise UserError(path, f"weights do not fit this model ({str(err).splitlines()[0][:120]})",
                                "resume with the flags the checkpoint was trained with") from err
            flags = [(g["betas"], g["weight_decay"]) for g in optimizer.param_groups]
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["lr_scheduler"])
            # The saved optimiser holds the old lr, betas and weight decay: the current flags apply from here on.
            scheduler.base_lrs = [args.lr] * len(optimizer.param_groups)
            for group, (betas, weight_decay), factor in zip(optimizer.param_groups, flags, scheduler.lr_lambdas):
                group.update(betas=betas, weight_decay=weight_decay, initial_lr=args.lr, lr=args.lr * factor(scheduler.last_epoch))
            start_epoch, start_batch, step = ckpt["epoch"], ckpt.get("batch_in_epoch", 0), ckpt["step"]
            best = ckpt.get("best", -math.inf)
            if ckpt.get("scaler"):  # empty when the checkpointed run did not scale (bf16, fp32)
                scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])  # starting a loader draws nothing from it (make_loader)
            if dist.is_main:
                print(f"resumed from {path}: epoch {start_epoch}, batch {start_batch}, step {step}")
                _drop_rows_after(out / "log.csv", start_epoch)

    train_model: nn.Module = model
    if dist.enabled:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        train_model = nn.parallel.DistributedDataParallel(model, **ddp_kwargs)
    if args.compile:
        train_model = torch.compile(train_model)

    def checkpoint(epoch: int, batch_in_epoch: int) -> dict:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step, "best": best,
            "args": vars(args), "meta": task.meta, "rng": rng_state(), "scaler": scaler.state_dict(),
        }

    max_steps = args.max_steps if args.max_steps is not None else math.inf
    history: list[dict] = []
    last_save = time.monotonic()
    with _StopRequested() as stop:
        for epoch in range(start_epoch, args.epochs):
            if step >= max_steps:
                break
            sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
            first_batch = sampler.start_batch
            model.train()
            loss_sum = torch.zeros((), device=device)
            first_bad = torch.full((), math.inf, device=device)
            n_steps, stopping, data_wait = 0, False, 0.0
            t0 = t_ready = time.perf_counter()
            bar = tqdm(iter(loader), total=len(loader), desc=f"epoch {epoch + 1}/{args.epochs}", disable=not dist.is_main,
                       leave=False, dynamic_ncols=True)
            for i, batch in enumerate(bar, start=first_batch):
                data_wait += time.perf_counter() - t_ready  # blocked on the loader (its start-up included)
                batch = task.device_batch(batch, device, prec.memory_format)
                if task.before_step:
                    task.before_step(step)
                with prec.autocast():
                    loss = task.loss_fn(train_model, batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)  # fp16: skipped while the scaled gradients hold inf/NaN
                scaler.update()
                scheduler.step()
                if task.after_step:
                    task.after_step(step)
                step += 1
                n_steps += 1
                loss = loss.detach().float()
                loss_sum += loss
                first_bad = torch.where(torch.isfinite(loss), first_bad, first_bad.clamp(max=float(step)))  # no host→device copy: no sync
                # Ranks agree on stopping (NaN, SIGTERM) at these steps; the last batch of an epoch is one of them.
                if (n_steps % 20 == 0 or step >= max_steps or i + 1 >= steps_per_epoch
                        or (stop.requested and not dist.enabled)):
                    stopping = _agree_to_stop(first_bad, stop.requested, out)
                    bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                if stopping or step >= max_steps:
                    break
                t_ready = time.perf_counter()
            bar.close()
            finished_epoch = i + 1 >= steps_per_epoch if n_steps else True
            if stopping and not finished_epoch:
                _raise_if_nonfinite(model, step, out)
                if dist.is_main:
                    save_checkpoint(out / "last.pt", checkpoint(epoch, i + 1))
                    print(f"saved {out / 'last.pt'} (epoch {epoch + 1}, batch {i + 1}); resume with --resume")
                _exit_stopped()
            mean_loss = all_reduce_sum(loss_sum.clone()).item() / max(1, n_steps * dist.world_size)  # a sync: the steps are done
            _raise_if_nonfinite(model, step, out)
            t_steps = time.perf_counter()
            record = {"epoch": epoch + 1, "step": step, "train_loss": mean_loss, "lr": scheduler.get_last_lr()[0]}
            last = epoch + 1 == args.epochs or step >= max_steps
            if task.evaluate and ((epoch + 1) % args.eval_every == 0 or last):
                model.eval()
                with torch.no_grad(), prec.autocast():
                    record.update(task.evaluate(model, epoch))
            t_eval = time.perf_counter()
            improved = task.monitor is not None and task.monitor in record and record[task.monitor] > best
            if improved:
                best = record[task.monitor]
            first = task.keep_first and epoch == 0
            due = (last or stopping or first or (epoch + 1) % args.save_every == 0
                   or time.monotonic() - last_save >= 60 * args.save_minutes)
            if dist.is_main and (due or (improved and task.keep_best)):
                state = checkpoint(epoch + 1 if finished_epoch else epoch, 0 if finished_epoch else i + 1)
                if due:
                    save_checkpoint(out / "last.pt", state)
                    if first:
                        save_checkpoint(out / "first.pt", state)
                    if task.on_save:
                        task.on_save(epoch)
                    last_save = time.monotonic()
                if improved and task.keep_best:
                    save_checkpoint(out / "best.pt", state)
            t_saved = time.perf_counter()
            # Where the epoch's wall time went (on a GPU, a stall shows here): steps (data wait included), monitor, files.
            record.update(step_s=round(t_steps - t0, 3), data_wait_s=round(data_wait, 3), eval_s=round(t_eval - t_steps, 3),
                          checkpoint_s=round(t_saved - t_eval, 3))
            history.append(record)
            if dist.is_main:
                io.append_csv_row(out / "log.csv", record)
                if task.on_epoch_end:
                    task.on_epoch_end(epoch, record)
                print(_describe(record))
                WARNINGS.flush()
            if stopping:  # the signal came with the epoch's last batch: the epoch ended normally above
                if dist.is_main:
                    print(f"stopped after epoch {epoch + 1}; resume with --resume")
                _exit_stopped()
    return history


def _drop_rows_after(log: Path, epoch: int) -> None:
    """A resumed run redoes the epochs after its checkpoint: drop their rows, so each epoch is logged once."""
    if not log.is_file():
        return
    rows = io.read_csv_rows(log)
    kept = [r for r in rows if int(r["epoch"]) <= epoch]
    if len(kept) < len(rows):
        io.write_csv(log, list(rows[0]), [list(r.values()) for r in kept])
        print(f"note: {log}: dropped the rows of epochs after {epoch}, which this run redoes")


def _exit_stopped() -> None:
    """Leave after a SIGTERM/SIGINT checkpoint with the conventional status 128 + SIGTERM."""
    cleanup_distributed()
    sys.exit(143)


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


def _agree_to_stop(first_bad: torch.Tensor, stop_requested: bool, out: Path) -> bool:
    """Whether any rank was asked to stop (SIGTERM/SIGINT); a NaN/inf loss on any rank is an error on all."""
    status = torch.stack([first_bad, torch.tensor(-float(stop_requested), device=first_bad.device)])
    if torch_dist.is_initialized():
        torch_dist.all_reduce(status, op=torch_dist.ReduceOp.MIN)
    bad, stop = status.tolist()
    if math.isfinite(bad):
        raise UserError(out, f"the loss became NaN/inf at step {int(bad)}; training stopped. {_kept(out)}",
                        "lower --lr or check the data, then --resume")
    return stop < 0


def _raise_if_nonfinite(model: nn.Module, step: int, out: Path) -> None:
    """Never checkpoint NaN/inf weights: the loss that would show them is only computed a step later."""
    if not torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all():
        raise UserError(out, f"the weights became NaN/inf by step {step}; training stopped. {_kept(out)}",
                        "lower --lr or check the data, then --resume")


def _kept(out: Path) -> str:
    last = out / "last.pt"
    return f"The last good checkpoint, {last}, was kept" if last.is_file() else "No checkpoint had been written yet"


def _describe(record: dict) -> str:
    parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()]
    return f"[{datetime.datetime.now():%H:%M:%S}] " + " ".join(parts)


@torch.no_grad()
def extract_features(fn: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, device: torch.device, *,
                     prec: Precision | None = None, batch_size: int = 256, workers: int = 0,
                     desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Run `fn` over an (image, label) dataset in order under `prec` (default fp32); returns (features, labels)
    on `device`."""
    prec = prec or Precision("fp32", device.type)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda",
                        worker_init_fn=_ignore_stop_signals if workers > 0 else None)
    feats, labels = [], []
    with tqdm(loader, desc=desc, leave=False, dynamic_ncols=True) as bar:  # cleared before an error's one line
        for images, targets in bar:
            with prec.autocast():
                feats.append(fn(to_device(images, device, prec.memory_format)).float())
            labels.append(torch.as_tensor(targets).to(device))
    return torch.cat(feats), torch.cat(labels)
