"""How a run stops early: SIGTERM/SIGINT as a request the loop honours at a step boundary, ranks agreeing to
stop, and NaN/inf losses or weights as errors that never reach a checkpoint."""
from __future__ import annotations

import math
import signal
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from ..errors import UserError
from .distributed import cleanup_distributed


class StopRequested:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequested":
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


def agree_to_stop(first_bad: torch.Tensor, stop_requested: bool, out: Path) -> bool:
    """Whether any rank was asked to stop (SIGTERM/SIGINT); a NaN/inf loss on any rank is an error on all."""
    status = torch.stack([first_bad, torch.tensor(-float(stop_requested), device=first_bad.device)])
    if torch_dist.is_initialized():
        torch_dist.all_reduce(status, op=torch_dist.ReduceOp.MIN)
    bad, stop = status.tolist()
    if math.isfinite(bad):
        raise UserError(out, f"the loss became NaN/inf at step {int(bad)}; training stopped. {_kept(out)}",
                        "lower --lr or check the data, then --resume")
    return stop < 0


def raise_if_nonfinite(model: nn.Module, step: int, out: Path) -> None:
    """Never checkpoint NaN/inf weights: the loss that would show them is only computed a step later."""
    if not torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all():
        raise UserError(out, f"the weights became NaN/inf by step {step}; training stopped. {_kept(out)}",
                        "lower --lr or check the data, then --resume")


def _kept(out: Path) -> str:
    last = out / "last.pt"
    return f"The last good checkpoint, {last}, was kept" if last.is_file() else "No checkpoint had been written yet"


def exit_stopped() -> None:
    """Leave after a SIGTERM/SIGINT checkpoint with the conventional status 128 + SIGTERM."""
    cleanup_distributed()
    sys.exit(143)
