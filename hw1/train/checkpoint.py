"""Checkpoint files (atomic save, checked load, meta and recipe checks) and the RNG state they carry."""
from __future__ import annotations

import os
import pickle
import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io
from ..compat import strip_prefix
from ..errors import UserError


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write `state` atomically, as tensors and plain Python values only: `weights_only` reads it on both stacks."""
    with io.atomic_path(path) as tmp:
        torch.save(plain(state), tmp)


def plain(value: Any) -> Any:
    """`value` with paths as strings and NumPy values as Python numbers or tensors; anything else that is not a
    tensor or a plain value is a bug, caught here rather than by the reader on another stack."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.generic):  # before float: np.float64 is a float, but pickles as a numpy object
        return value.item()
    if isinstance(value, (torch.Tensor, str, int, float, bool, type(None))):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    raise TypeError(f"checkpoint value of type {type(value).__name__} is neither a tensor nor a plain value")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict with `weights_only=True` (no code runs); a file that cannot be read says why."""
    path = Path(path)
    if not path.is_file():
        raise UserError(path, "checkpoint file not found", "train first, or pass the right path")
    state = load_weights(path, map_location)
    if not isinstance(state, dict):
        raise UserError(path, "not a checkpoint dict", "pass a .pt file written by this project")
    return state


def load_weights(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)`, its failures told apart: objects beyond tensors, numpy 2 read by numpy 1,
    and a truly damaged file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # weights_only's refusal names the class it met
        if not found:
            raise _unreadable(path, err) from err
        name = found.group(1)
        numpy2 = name.startswith("numpy._core") and int(np.__version__.split(".")[0]) < 2
        why = (f"written with numpy 2 (it holds {name}), read here with numpy {np.__version__}" if numpy2 else
               f"holds objects beyond tensors ({name}): refused, since loading it could run code")
        raise UserError(path, why, "written by an older version of this project: if you trust the file, re-save it "
                        "with `python export_checkpoint.py --trust FILE OUT`") from err
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise _unreadable(path, err) from err


def _unreadable(path: Path, err: Exception) -> UserError:
    return UserError(path, f"not a readable checkpoint "
                     f"({type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]})",
                     "the file is corrupted or truncated; re-download or retrain it")


def check_meta(path: str | os.PathLike, found: dict, expected: dict,
               keys: tuple[str, ...] = ("task", "arch", "num_classes")) -> None:
    """A checkpoint of another model or class count is an error that names both."""
    for key in keys:
        if key in expected and key in found and found[key] != expected[key]:
            raise UserError(path, f"checkpoint holds {key}={found[key]!r} but this run needs {key}={expected[key]!r}",
                            "pass a checkpoint of the same model, or change the flags to match it")


def rng_state() -> dict:
    """The global generators, as tensors and plain values. CUDA: this process's own device only. Every DDP rank
    is seeded alike and draws alike, so rank 0's state fits every rank's device."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if isinstance(state.get("cuda"), torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# A run's recipe: a resume that changes one of these says so, and the new value applies from there on…
RECIPE_KEYS = ("lr", "weight_decay", "betas", "warmup_steps", "batch_size", "image_size", "epochs", "seed", "recipe",
               "head", "augment", "mix", "label_smoothing", "ema_decay", "backbone_lr_scale")
# …except where the checkpoint cannot follow: a classifier head of other weights' shapes.
SHAPE_KEYS = ("head",)


def recorded_flags(ckpt: dict) -> dict:
    """The flags a checkpoint's run had. One left to its recipe (None: a last.pt written before the recipe's pieces
    were recorded as they ran) reads the meta's value where it has one (the head)."""
    return {**ckpt.get("meta", {}), **{k: v for k, v in ckpt.get("args", {}).items() if v is not None}}


def changed_recipe(path: str | os.PathLike, saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """The recipe flags a resumed run changes (`saved`, `current`: a run's flags as a dict), as key → (saved,
    current); a change the checkpoint cannot follow (SHAPE_KEYS) stops."""
    changed = {k: (saved[k], current[k]) for k in RECIPE_KEYS
               if saved.get(k) is not None and current.get(k) is not None and _norm(saved[k]) != _norm(current[k])}
    for key in SHAPE_KEYS:
        if key in changed:
            (was, now), flag = changed[key], flag_name(key)
            raise UserError(flag, f"{path} was trained with {flag} {was}; {flag} {now} has weights of other shapes",
                            f"resume with {flag} {was}, or train anew in another --out")
    return changed


def warn_changed_recipe(path: str | os.PathLike, changed: dict[str, tuple[Any, Any]]) -> None:
    """Say which recipe flags a resumed run changes (`changed_recipe`'s answer)."""
    if changed:
        print(f"warning: {path}: resuming with other hyper-parameters: "
              f"{', '.join(f'{flag_name(k)} {was}→{now}' for k, (was, now) in changed.items())} (the new values apply "
              "from here on)", file=sys.stderr)


def flag_name(key: str) -> str:
    """A flag's name on the command line, from its key in a run's flags."""
    return "--" + key.replace("_", "-")


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v


GRADED_TASKS = ("classify", "segment")  # what hw1_1.sh and hw1_2.sh load


def grading_state(path: str | os.PathLike, state: Any) -> dict:
    """The slim file a grading script loads: the model's weights (fp32, no DDP prefix, no auxiliary head) and its
    meta, plus the epoch and monitor value it was kept at."""
    meta = state.get("meta") if isinstance(state, dict) else None
    if not isinstance(meta, dict) or meta.get("task") not in GRADED_TASKS or not isinstance(state.get("model"), dict):
        what = (f"a {meta['task']!r} checkpoint" if isinstance(meta, dict) and meta.get("task")
                else "no model with its meta")
        raise UserError(path, f"holds {what}; grading loads a classifier (p1_finetune.py) or a segmentation model "
                        "(p2_train_*.py)", "pass that run's best.pt")
    weights = {strip_prefix(k, "module."): v.detach().float() if v.is_floating_point() else v.detach()
               for k, v in state["model"].items() if not k.startswith(("aux_classifier.", "module.aux_classifier."))}
    kept = {k: state[k] for k in ("epoch", "best") if k in state}
    return {"model": weights, "meta": dict(meta), **kept}
