"""Checkpoints cross the two stacks of SPEC §9: a classifier and a DeepLabV3 trained on one stack and graded by
hw1_1.sh / hw1_2.sh on the other give the labels and masks the training stack gives; so do strong-recipe C and E
classifiers (E's BN-MLP head rebuilt from the checkpoint's meta); a last.pt resumes there.

Needs the other stack's interpreter in HW1_OTHER_PYTHON (`.ci/run` sets it to the course venv's Python 3.8)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hw1.train import checkpoint

ROOT = Path(__file__).resolve().parents[1]
OTHER = os.environ.get("HW1_OTHER_PYTHON", "")
pytestmark = pytest.mark.skipif(not OTHER, reason="HW1_OTHER_PYTHON names no second stack (.ci/run sets it)")
STACKS = {"this": sys.executable, "other": OTHER}
SMALL = ["--image-size", "32", "--workers", "0", "--device", "cpu", "--batch-size", "16"]


def run(python: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([python, *argv], cwd=ROOT, env={**os.environ, "HW1_PYTHON": python, **(env or {})},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{python} {' '.join(argv)}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(tiny_data: Path, p1_backbone: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per stack: resnet18 classifiers (setting A; strong-recipe C and E from the session's BYOL backbone) and a
    DeepLabV3-MobileNetV3, each trained for 2 epochs there."""
    runs = {}
    for stack, python in STACKS.items():
        out = tmp_path_factory.mktemp(f"train_{stack}")
        run(python, "p1_finetune.py", "--setting", "A", "--arch", "resnet18", "--data-root", str(tiny_data), "--out",
            str(out / "p1"), "--epochs", "2", "--lr", "2e-3", "--results", str(out / "p1.csv"), *SMALL)
        for setting in ("C", "E"):
            run(python, "p1_finetune.py", "--setting", setting, "--recipe", "strong", "--backbone", str(p1_backbone),
                "--arch", "resnet18", "--data-root", str(tiny_data), "--out", str(out / f"strong_{setting}"),
                "--epochs", "2", "--lr", "2e-3", "--results", str(out / "p1.csv"), *SMALL)
        run(python, "p2_train_deeplab.py", "--arch", "deeplabv3_mobilenet_v3_large", "--weights", "none", "--data-root",
            str(tiny_data), "--out", str(out / "p2"), "--epochs", "2", "--aux-weight", "0", "--results",
            str(out / "p2.csv"), *SMALL)
        runs[stack] = out
    return runs


def labels(python: str, ckpt: Path, tiny_data: Path, out: Path) -> list[list[str]]:
    office = tiny_data / "p1_data" / "office"
    subprocess.run(["bash", str(ROOT / "hw1_1.sh"), str(office / "val.csv"), str(office / "val"), str(out)], check=True,
                   env={**os.environ, "HW1_PYTHON": python, "P1_CHECKPOINT": str(ckpt)},
                   capture_output=True, timeout=600)
    with open(out, newline="") as f:
        return list(csv.reader(f))


def masks(python: str, ckpt: Path, tiny_data: Path, out: Path) -> dict[str, np.ndarray]:
    subprocess.run(["bash", str(ROOT / "hw1_2.sh"), str(tiny_data / "p2_data" / "validation"), str(out)], check=True,
                   env={**os.environ, "HW1_PYTHON": python, "P2_CHECKPOINT": str(ckpt)},
                   capture_output=True, timeout=600)
    return {p.name: np.asarray(Image.open(p)) for p in sorted(out.iterdir())}


@pytest.mark.parametrize("trained_on", list(STACKS))
def test_graded_on_the_other_stack_alike(trained_on: str, trained: dict[str, Path], tiny_data: Path,
                                         tmp_path: Path) -> None:
    p1, p2 = trained[trained_on] / "p1" / "best.pt", trained[trained_on] / "p2" / "best.pt"
    rows = {s: labels(py, p1, tiny_data, tmp_path / f"{s}.csv") for s, py in STACKS.items()}
    assert rows["this"] == rows["other"] and len(rows["this"]) > 1
    got = {s: masks(py, p2, tiny_data, tmp_path / f"masks_{s}") for s, py in STACKS.items()}
    assert got["this"].keys() == got["other"].keys() and got["this"]
    assert all(np.array_equal(got["this"][k], got["other"][k]) for k in got["this"])


@pytest.mark.parametrize("trained_on", list(STACKS))
@pytest.mark.parametrize("setting", ["C", "E"])
def test_strong_recipe_graded_on_the_other_stack_alike(setting: str, trained_on: str, trained: dict[str, Path],
                                                       tiny_data: Path, tmp_path: Path) -> None:
    ckpt = trained[trained_on] / f"strong_{setting}" / "best.pt"
    meta = checkpoint.load_checkpoint(ckpt)["meta"]
    assert meta["recipe"] == "strong" and meta["head"] == ("mlp" if setting == "E" else "linear")
    rows = {s: labels(py, ckpt, tiny_data, tmp_path / f"{s}.csv") for s, py in STACKS.items()}
    assert rows["this"] == rows["other"] and len(rows["this"]) > 1


@pytest.mark.parametrize("trained_on", list(STACKS))
def test_last_pt_resumes_on_the_other_stack(trained_on: str, trained: dict[str, Path], tiny_data: Path,
                                           tmp_path: Path) -> None:
    """Optimiser, schedule and RNG state written by one stack continue on the other for one more epoch."""
    resumer = STACKS["other" if trained_on == "this" else "this"]
    out = tmp_path / "p1"
    out.mkdir()
    (out / "last.pt").write_bytes((trained[trained_on] / "p1" / "last.pt").read_bytes())
    proc = run(resumer, "p1_finetune.py", "--setting", "A", "--arch", "resnet18", "--data-root", str(tiny_data),
               "--out", str(out), "--epochs", "3", "--lr", "2e-3", "--results", str(tmp_path / "p1.csv"), "--resume",
               *SMALL)
    assert "resumed from" in proc.stdout and "epoch 2" in proc.stdout
