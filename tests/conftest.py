"""Shared fixtures: tiny synthetic data in the course layout, written once per test session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`hw1_data/`-shaped tiny sample data (P1 and, once present, P2)."""
    from hw1.sample_data import write_sample_data

    return write_sample_data(tmp_path_factory.mktemp("data") / "hw1_data", preset="tiny")


# ---------------------------------------------------------------- Problem 1: small runs shared by the test_p1_* files

P1_SMALL = ["--arch", "resnet18", "--image-size", "32", "--workers", "0"]
P1_LEARN_EPOCHS = 10


@pytest.fixture(scope="session")
def p1_backbone(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 BYOL backbone file (`backbone_last.pt`) from a two-step pre-training run on the tiny data."""
    import p1_pretrain

    out = tmp_path_factory.mktemp("p1_pretrain")
    p1_pretrain.main(["--data-root", str(tiny_data), "--out", str(out), *P1_SMALL, "--device", "cpu", "--batch-size", "32",
                      "--epochs", "1", "--max-steps", "2", "--projection-hidden-size", "256"])
    return out / "backbone_last.pt"


@pytest.fixture(scope="session")
def p1_classifier(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 Office-Home classifier (`best.pt`): setting A, 10 epochs at lr 2e-3 on the tiny data (it learns)."""
    import p1_finetune

    out = tmp_path_factory.mktemp("p1_finetune_A")
    p1_finetune.main(["--setting", "A", "--data-root", str(tiny_data), "--out", str(out), *P1_SMALL, "--device", "cpu",
                      "--batch-size", "32", "--epochs", str(P1_LEARN_EPOCHS), "--lr", "2e-3",
                      "--results", str(out / "results.csv")])
    return out / "best.pt"


@pytest.fixture(scope="session")
def p1_supervised_backbone(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 backbone file from `p1_pretrain.py --method supervised` (labels from the Mini-ImageNet names)."""
    import p1_pretrain

    out = tmp_path_factory.mktemp("p1_supervised")
    p1_pretrain.main(["--method", "supervised", "--data-root", str(tiny_data), "--out", str(out), *P1_SMALL, "--device", "cpu",
                      "--batch-size", "32", "--epochs", "1", "--max-steps", "2"])
    return out / "backbone_last.pt"


# ---------------------------------------------------------------- Problem 2: a model for inference tests


@pytest.fixture(scope="session")
def seg_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained DeepLabV3-MobileNetV3 checkpoint at 32 px, with the meta p2_train_deeplab.py writes."""
    from hw1 import checkpoint
    from hw1.seg_data import NUM_CLASSES
    from hw1.seg_models import build_seg_model

    arch = "deeplabv3_mobilenet_v3_large"
    path = tmp_path_factory.mktemp("seg_checkpoint") / "seg.pt"
    checkpoint.save_checkpoint(path, {"model": build_seg_model(arch, "none").state_dict(), "meta": {
        "task": "segment", "arch": arch, "num_classes": NUM_CLASSES, "image_size": 32, "weights": "none", "aux": False}})
    return path
