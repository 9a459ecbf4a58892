"""Shared fixtures: tiny synthetic data in the course layout, written once per test session."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2 as transforms_v2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Outcome bars hold at 1 and 2 threads (tests/outcome_spread.py); HW1_TEST_THREADS=1 runs the suite at one.
torch.set_num_threads(int(os.environ.get("HW1_TEST_THREADS") or max(1, min(2, os.cpu_count() or 1))))
# hw1_1.sh / hw1_2.sh run under the interpreter that runs the tests: the stack under test (SPEC §9), not .venv's
os.environ.setdefault("HW1_PYTHON", sys.executable)

# The method a torchvision v2 transform draws its random parameters with: `_get_params` until torchvision 0.21
# (the course's 0.19), `make_params` after; the tests that record the draws patch it.
V2_PARAMS_METHOD = "make_params" if hasattr(transforms_v2.Transform, "make_params") else "_get_params"

# The most the suite holds under the temp folder at once (measured: see pytest.ini), with room to spare.
DISK_NEEDED_GB = 3.0


def pytest_sessionstart(session: pytest.Session) -> None:
    """A full disk fails every checkpoint write, deep inside torch.save: say so once, before any test runs."""
    where = Path(session.config.option.basetemp or tempfile.gettempdir())
    while not where.exists():
        where = where.parent
    free_gb = shutil.disk_usage(where).free / 1e9
    if free_gb < DISK_NEEDED_GB:
        pytest.exit(f"error: {where}: {free_gb:.1f} GB free, the tests write checkpoints and need about "
                    f"{DISK_NEEDED_GB:.0f} GB; free some space, or point TMPDIR (or --basetemp) at a disk with room",
                    returncode=1)


@contextmanager
def fixture_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A folder for a module- or session-scoped fixture, removed when the fixture ends: the fixtures'
    checkpoints would otherwise add up to GBs by the end of a run."""
    path = tmp_path_factory.mktemp(name)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def drop_checkpoints(folder: Path, keep: tuple[str, ...]) -> None:
    """Delete the run's checkpoints that the fixture's users never read (each is tens of MB)."""
    for path in folder.glob("*.pt"):
        if path.name not in keep:
            path.unlink()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`hw1_data/`-shaped tiny sample data (P1 and, once present, P2)."""
    from hw1.samples.synthetic import write_sample_data

    return write_sample_data(tmp_path_factory.mktemp("data") / "hw1_data", preset="tiny")


# ---------------------------------------------------------------- Problem 1: small runs shared by the test_p1_* files

P1_SMALL = ["--arch", "resnet18", "--image-size", "32", "--workers", "0"]
P1_LEARN_EPOCHS = 10


@pytest.fixture(scope="session")
def p1_backbone(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A resnet18 BYOL backbone file (`backbone_last.pt`) from a two-step pre-training run on the tiny data."""
    import p1_pretrain

    with fixture_dir(tmp_path_factory, "p1_pretrain") as out:
        p1_pretrain.main(["--data-root", str(tiny_data), "--out", str(out), *P1_SMALL, "--device", "cpu",
                          "--batch-size", "32", "--epochs", "1", "--max-steps", "2", "--projection-hidden-size", "256"])
        drop_checkpoints(out, keep=("last.pt", "backbone_last.pt"))
        yield out / "backbone_last.pt"


@pytest.fixture(scope="session")
def p1_classifier(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A resnet18 Office-Home classifier (`best.pt`): setting A, 10 epochs at lr 2e-3 on the tiny data (it learns)."""
    import p1_finetune

    with fixture_dir(tmp_path_factory, "p1_finetune_A") as out:
        p1_finetune.main(["--setting", "A", "--data-root", str(tiny_data), "--out", str(out), *P1_SMALL,
                          "--device", "cpu", "--batch-size", "32", "--epochs", str(P1_LEARN_EPOCHS), "--lr", "2e-3",
                          "--results", str(out / "results.csv")])
        drop_checkpoints(out, keep=("best.pt", "last.pt"))
        yield out / "best.pt"


@pytest.fixture(scope="session")
def p1_supervised_backbone(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A resnet18 backbone file from `p1_pretrain.py --method supervised` (labels from the Mini-ImageNet names)."""
    import p1_pretrain

    with fixture_dir(tmp_path_factory, "p1_supervised") as out:
        p1_pretrain.main(["--method", "supervised", "--data-root", str(tiny_data), "--out", str(out), *P1_SMALL,
                          "--device", "cpu", "--batch-size", "32", "--epochs", "1", "--max-steps", "2"])
        drop_checkpoints(out, keep=("last.pt", "backbone_first.pt", "backbone_last.pt"))
        yield out / "backbone_last.pt"


# ---------------------------------------------------------------- Problem 2: a model for inference tests


@pytest.fixture(scope="session")
def seg_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained DeepLabV3-MobileNetV3 checkpoint at 32 px, with the meta p2_train_deeplab.py writes."""
    from hw1.p2.data import NUM_CLASSES
    from hw1.p2.models import build_seg_model
    from hw1.train import checkpoint

    arch = "deeplabv3_mobilenet_v3_large"
    path = tmp_path_factory.mktemp("seg_checkpoint") / "seg.pt"
    checkpoint.save_checkpoint(path, {"model": build_seg_model(arch, "none").state_dict(), "meta": {
        "task": "segment", "arch": arch, "num_classes": NUM_CLASSES, "image_size": 32, "weights": "none",
        "aux": False}})
    return path


@pytest.fixture
def stages_ran(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """reproduce.py's stages faked: each writes its outputs (a file, or a folder when it has no suffix) and succeeds;
    the names of the stages run, in order."""
    import reproduce

    ran: list[str] = []

    def fake_stage(stage: reproduce.Stage, log: Path, in_process: bool) -> int:
        ran.append(stage.name)
        for out in stage.outputs:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("") if out.suffix else out.mkdir(exist_ok=True)
        return 0

    monkeypatch.setattr(reproduce, "run_stage", fake_stage)
    return ran
