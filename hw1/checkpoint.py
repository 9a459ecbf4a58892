"""Checkpoint files (atomic save, checked load, meta and recipe checks) and the RNG state they carry."""
from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import io
from .errors import UserError


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
