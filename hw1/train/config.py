"""The flags every training script shares (SPEC §7) and `TrainConfig`, their typed form that `engine.fit` reads."""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .. import compat
from ..errors import UserError
from . import precision


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
    schedule_steps: int | None = None  # the warm-up/cosine's length; None: the epochs' steps

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        for flag in ("eval_every", "save_every"):
            if getattr(args, flag) < 1:
                raise UserError(f"--{flag.replace('_', '-')}", f"must be 1 or more, not {getattr(args, flag)}",
                                "pass a number of epochs")
        return cls(Path(args.out), args.epochs, math.inf if args.max_steps is None else args.max_steps, args.seed,
                   args.resume, args.save_every, args.save_minutes, args.lr, args.weight_decay, tuple(args.betas),
                   args.warmup_steps, args.eval_every, args.precision, args.compile, args.print_model, dict(vars(args)))
