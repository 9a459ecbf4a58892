"""The Problem 1 grading interface (SPEC §2): p1_inference.py and hw1_1.sh."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

import p1_inference
from hw1.errors import run_main

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """p1_inference in-process, through the same error wrapper as the command line: (exit code, stdout, stderr)."""
    try:
        run_main(p1_inference.main)(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


def test_hw1_1_sh_predicts_every_row_in_input_order(tiny_data: Path, p1_classifier: Path, tmp_path: Path) -> None:
    """An empty label column, shuffled rows, string ids, relative paths, run from another working directory."""
    val = tiny_data / "p1_data" / "office" / "val"
    (tmp_path / "imgs").mkdir()
    names = sorted(p.name for p in val.iterdir())[:12][::-1]
    for name in names:
        shutil.copy(val / name, tmp_path / "imgs" / name)
    (tmp_path / "in").mkdir()
    ids = [f"x{7 * i % 12}" for i in range(12)]
    with open(tmp_path / "in" / "test.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "filename", "label"], *[[i, n, ""] for i, n in zip(ids, names)]])

    env = {**os.environ, "P1_CHECKPOINT": str(p1_classifier)}
    proc = subprocess.run(["bash", str(ROOT / "hw1_1.sh"), "in/test.csv", "imgs", "out/deep/pred.csv"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "predicted 12 images" in proc.stdout and str(p1_classifier) in proc.stdout
    header, rows = read_rows(tmp_path / "out" / "deep" / "pred.csv")
    assert header == ["id", "filename", "label"]
    assert [r[:2] for r in rows] == [[i, n] for i, n in zip(ids, names)]
    assert all(r[2].isdigit() and 0 <= int(r[2]) <= 64 for r in rows)


def test_hw1_1_sh_usage_on_wrong_argument_count(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(ROOT / "hw1_1.sh"), "only.csv", "two"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: bash hw1_1.sh IMAGES_CSV IMAGE_DIR OUTPUT_CSV")


def test_checkpoint_choice_flag_then_env_then_default(tiny_data: Path, p1_classifier: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    office = tiny_data / "p1_data" / "office"
    args = ["--csv", str(office / "val.csv"), "--image-dir", str(office / "val"), "--out", str(tmp_path / "p.csv"),
            "--workers", "0", "--device", "cpu"]
    default = tmp_path / "checkpoints" / "p1_classifier.pt"
    monkeypatch.setattr(p1_inference, "DEFAULT_CHECKPOINT", default)
    monkeypatch.delenv("P1_CHECKPOINT", raising=False)

    code, _, err = run(args, capsys)  # nothing set and no default file: the error names the default
    assert code == 2 and err.startswith(f"error: {default}: classifier checkpoint not found")
    monkeypatch.setenv("P1_CHECKPOINT", str(tmp_path / "env.pt"))
    code, _, err = run(args, capsys)  # the variable wins over the default
    assert code == 2 and err.startswith(f"error: {tmp_path / 'env.pt'}: classifier checkpoint not found")
    code, out, _ = run([*args, "--checkpoint", str(p1_classifier)], capsys)  # the flag wins over the variable
    assert code == 0 and str(p1_classifier) in out
    monkeypatch.delenv("P1_CHECKPOINT")
    default.parent.mkdir()
    shutil.copy(p1_classifier, default)
    code, out, _ = run(args, capsys)
    assert code == 0 and str(default) in out


def test_predictions_reproduce_the_recorded_validation_accuracy(tiny_data: Path, p1_classifier: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """Inference builds the checkpoint's own model and transform: its val accuracy is the one fine-tuning logged."""
    office = tiny_data / "p1_data" / "office"
    code, _, err = run(["--csv", str(office / "val.csv"), "--image-dir", str(office / "val"),
                        "--out", str(tmp_path / "p.csv"), "--checkpoint", str(p1_classifier), "--batch-size", "7",
                        "--workers", "0", "--device", "cpu"], capsys)
    assert code == 0, err
    _, truth = read_rows(office / "val.csv")
    _, pred = read_rows(tmp_path / "p.csv")
    acc = sum(t[2] == p[2] for t, p in zip(truth, pred)) / len(truth)
    assert acc == torch.load(p1_classifier, weights_only=True)["best"]


def test_any_image_mode_and_size(tiny_data: Path, p1_classifier: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    """SPEC §1: grayscale, RGBA, palette and 16-bit images of any size are predicted like RGB ones."""
    src = Image.open(next((tiny_data / "p1_data" / "office" / "val").iterdir())).convert("RGB")
    images = {"gray.png": src.convert("L").resize((50, 70)), "rgba.png": src.convert("RGBA").resize((90, 40)),
              "pal.png": src.convert("P"), "deep.png": src.convert("I;16"), "rgb.jpg": src.resize((200, 200))}
    for name, img in images.items():
        img.save(tmp_path / name)
    with open(tmp_path / "t.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "filename", "label"], *[[i, n, "?"] for i, n in enumerate(images)]])
    code, _, err = run(["--csv", str(tmp_path / "t.csv"), "--image-dir", str(tmp_path),
                        "--out", str(tmp_path / "p.csv"), "--checkpoint", str(p1_classifier), "--workers", "0",
                        "--device", "cpu"], capsys)
    assert code == 0, err
    _, rows = read_rows(tmp_path / "p.csv")
    assert [r[1] for r in rows] == list(images) and all(0 <= int(r[2]) <= 64 for r in rows)
