"""Helpers shared by the robustness tests (bad inputs, resume, distributed): small data and runners."""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# One thread everywhere: subprocess and in-process runs then do the same float operations in the same order.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def small_p1_root(tiny_data: Path, dest: Path, *, train: int = 12, val: int = 4, mini: int = 12,
                  office: bool = True) -> Path:
    """A data root with the first `train`/`val` Office-Home rows and `mini` Mini-ImageNet images of `tiny_data`."""
    src, p1 = tiny_data / "p1_data", dest / "p1_data"
    if office:
        for split, n in (("train", train), ("val", val)):
            (p1 / "office" / split).mkdir(parents=True, exist_ok=True)
            with open(src / "office" / f"{split}.csv", newline="") as f:
                rows = list(csv.DictReader(f))[:n]
            for row in rows:
                shutil.copy(src / "office" / split / row["filename"], p1 / "office" / split / row["filename"])
            with open(p1 / "office" / f"{split}.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["id", "filename", "label"])
                writer.writerows([r["id"], r["filename"], r["label"]] for r in rows)
    (p1 / "mini" / "train").mkdir(parents=True, exist_ok=True)
    for path in sorted((src / "mini" / "train").iterdir())[:mini]:
        shutil.copy(path, p1 / "mini" / "train" / path.name)
    return dest


def small_p2_root(tiny_data: Path, dest: Path, *, train: int = 4, val: int = 2) -> Path:
    """A data root with `train` / `val` sat+mask pairs of each Problem 2 split of `tiny_data`."""
    for split, n in (("train", train), ("validation", val)):
        src, folder = tiny_data / "p2_data" / split, dest / "p2_data" / split
        folder.mkdir(parents=True, exist_ok=True)
        sats = sorted(src.glob("*_sat.jpg"))
        for sat in sats[:n] if split == "train" else sats[-n:]:  # not the snapshot stems: no figures to draw
            shutil.copy(sat, folder / sat.name)
            shutil.copy(src / sat.name.replace("_sat.jpg", "_mask.png"),
                        folder / sat.name.replace("_sat.jpg", "_mask.png"))
    return dest


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run in-process training on one thread, like the OMP_NUM_THREADS=1 subprocesses."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(args: list[str], timeout: float = 300, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command from the repository root with one thread, capturing text output."""
    return subprocess.run(args, cwd=ROOT, env={**ENV, **(env_extra or {})}, capture_output=True, text=True,
                          timeout=timeout)


def model_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over every tensor of two state_dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0) for k in a)



def assert_same_run(resumed: Path, reference: Path) -> None:
    """Same weights (bit-identical expected; 1e-6 allowed), optimiser moments, step and schedule."""
    a = torch.load(resumed, map_location="cpu", weights_only=True)
    b = torch.load(reference, map_location="cpu", weights_only=True)
    assert (a["epoch"], a["batch_in_epoch"], a["step"]) == (b["epoch"], b["batch_in_epoch"], b["step"])
    assert max_abs_diff(a["model"], b["model"]) <= 1e-6
    assert a["lr_scheduler"]["last_epoch"] == b["lr_scheduler"]["last_epoch"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert max_abs_diff(sa, sb) <= 1e-6
