"""Bad input to the Problem 1 scripts: one clear `error:` line, no traceback, a non-zero exit."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

import p1_finetune
import p1_inference
from hw1.errors import run_main

ROOT = Path(__file__).resolve().parents[1]
GARBAGE = b"not an image, just bytes named .jpg\n" * 10


def visible_lines(stderr: str) -> list[str]:
    """What a terminal shows: a tqdm bar that `\\r` overwrites and clears is not a line."""
    return [seg for line in stderr.split("\n") if (seg := line.rsplit("\r", 1)[-1].strip())]


def assert_one_error_line(main: Callable, argv: list[str], capsys: pytest.CaptureFixture, *expected: str,
                          during_inference: bool = False) -> str:
    """Exit code 2 and one `error:` line; before inference starts, stderr holds that line and nothing else."""
    with pytest.raises(SystemExit) as exc:
        run_main(main)(argv)
    _, err = capsys.readouterr()
    assert exc.value.code == 2
    assert "Traceback" not in err
    if not during_inference:  # mid-inference, the cleared progress bar's characters come first
        assert err.startswith("error: ") and err.count("\n") == 1, err
    lines = visible_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(text in lines[0] for text in expected), lines[0]
    return err


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


@pytest.fixture
def images(tiny_data: Path, tmp_path: Path) -> Path:
    """A folder with two good images."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("0_1000.jpg", "1_1000.jpg"):
        shutil.copy(tiny_data / "p1_data" / "office" / "val" / name, folder / name)
    return folder


def infer_args(csv_path: Path, folder: Path, checkpoint: Path, workers: int = 0) -> list[str]:
    return ["--csv", str(csv_path), "--image-dir", str(folder), "--out", str(folder.parent / "out.csv"),
            "--checkpoint", str(checkpoint), "--workers", str(workers), "--device", "cpu"]


def test_csv_missing_a_column(images: Path, p1_classifier: Path, capsys: pytest.CaptureFixture) -> None:
    bad = write_csv(images.parent / "t.csv", ["id", "file", "label"], [[0, "0_1000.jpg", ""]])
    assert_one_error_line(p1_inference.main, infer_args(bad, images, p1_classifier), capsys,
                          str(bad), "missing column(s) filename")


def test_training_csv_missing_the_label_column(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "hw1_data"
    office = root / "p1_data" / "office"
    office.mkdir(parents=True)
    for split in ("train", "val"):
        (office / split).symlink_to(tiny_data / "p1_data" / "office" / split)
        shutil.copy(tiny_data / "p1_data" / "office" / f"{split}.csv", office / f"{split}.csv")
    write_csv(office / "train.csv", ["id", "filename"], [[0, "0_0.jpg"]])
    argv = ["--setting", "A", "--data-root", str(root), "--out", str(tmp_path / "run"), "--arch", "resnet18",
            "--workers", "0", "--device", "cpu"]
    assert_one_error_line(p1_finetune.main, argv, capsys, "train.csv", "missing column(s) label")


def test_csv_naming_a_missing_image(images: Path, p1_classifier: Path, capsys: pytest.CaptureFixture) -> None:
    bad = write_csv(images.parent / "t.csv", ["id", "filename", "label"], [[0, "0_1000.jpg", ""], [1, "gone.jpg", ""]])
    assert_one_error_line(p1_inference.main, infer_args(bad, images, p1_classifier), capsys,
                          "gone.jpg", "line 3 of t.csv not found")


@pytest.mark.parametrize("workers", [0, 1], ids=["main-process", "loader-worker"])
def test_unreadable_image(images: Path, p1_classifier: Path, capsys: pytest.CaptureFixture, workers: int) -> None:
    """Garbage bytes named .jpg; with a loader worker torch re-raises the error in the main process."""
    (images / "junk.jpg").write_bytes(GARBAGE)
    bad = write_csv(images.parent / "t.csv", ["id", "filename", "label"], [[0, "0_1000.jpg", ""], [1, "junk.jpg", ""]])
    assert_one_error_line(p1_inference.main, infer_args(bad, images, p1_classifier, workers), capsys,
                          "junk.jpg: unreadable image", during_inference=True)
    assert not (images.parent / "out.csv").exists()


def test_backbone_of_another_architecture(tiny_data: Path, p1_backbone: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    argv = ["--setting", "C", "--backbone", str(p1_backbone), "--arch", "resnet50", "--data-root", str(tiny_data),
            "--out", str(tmp_path), "--workers", "0", "--device", "cpu"]
    assert_one_error_line(p1_finetune.main, argv, capsys, str(p1_backbone),
                          "backbone is resnet18 but --arch is resnet50")


def test_inference_refuses_checkpoints_that_are_not_classifiers(images: Path, p1_backbone: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """A pre-training checkpoint and a plain backbone file: the line says what the file holds."""
    good = write_csv(images.parent / "t.csv", ["id", "filename", "label"], [[0, "0_1000.jpg", ""]])
    assert_one_error_line(p1_inference.main, infer_args(good, images, p1_backbone.parent / "last.pt"), capsys,
                          "holds a 'pretrain-byol' checkpoint of resnet18, not a Problem 1 classifier")
    assert_one_error_line(p1_inference.main, infer_args(good, images, p1_backbone), capsys,
                          "holds a plain state_dict (resnet18 weights")
    (images / "text.pt").write_text("not a checkpoint")
    assert_one_error_line(p1_inference.main, infer_args(good, images, images / "text.pt"), capsys,
                          "not a readable checkpoint")


def test_hw1_1_sh_exits_with_one_error_line_on_an_unreadable_image(images: Path, p1_classifier: Path) -> None:
    """The real command, with its default loader workers (they ignore SIGTERM): exit code 2, no hang, no traceback.

    On a machine without a GPU a `note:` about the CPU may come first; the error itself is one line.
    """
    (images / "junk.jpg").write_bytes(GARBAGE)
    bad = write_csv(images.parent / "t.csv", ["id", "filename", "label"], [[0, "0_1000.jpg", ""], [1, "junk.jpg", ""]])
    env = {**os.environ, "P1_CHECKPOINT": str(p1_classifier)}
    proc = subprocess.run(["bash", str(ROOT / "hw1_1.sh"), str(bad), str(images), str(images.parent / "out.csv")],
                          env=env, capture_output=True, timeout=120)
    stderr = proc.stderr.decode()  # bytes: text mode would turn tqdm's erasing \r into new lines
    assert proc.returncode == 2 and "Traceback" not in stderr
    lines = visible_lines(stderr)
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "junk.jpg: unreadable image" in errors[0], stderr
    assert all(line.startswith(("error: ", "note: ", "warning: ")) for line in lines), stderr
    assert not (images.parent / "out.csv").exists()
