"""Bad inputs, one test per row of docs/errors.md; every name holds `bad_input` (`pytest -k bad_input`).

A user mistake ends with exit code 2 and exactly one visible `error: <file>: <problem> — <fix>` line
that names the file, never a traceback; what the SPEC says must work (image modes, odd sizes) works;
repeated warnings are counted and printed once.
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from robust_helpers import PYTHON, ROOT, one_thread, run, small_p1_root, small_p2_root

import p1_finetune
import p1_inference
import p1_pretrain
import p2_inference
import p2_train_deeplab
import p2_train_fcn32
from hw1.errors import run_main
from hw1.p1.models import backbone_state, build_resnet
from hw1.p2.data import CLASS_COLOURS

TRAIN = ["--arch", "resnet18", "--image-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu",
         "--epochs", "1", "--max-steps", "1"]
SEG_TRAIN = ["--weights", "none", "--image-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu",
             "--epochs", "1", "--max-steps", "1"]


# ---------------------------------------------------------------- helpers


def visible_lines(stderr: str) -> list[str]:
    """What a terminal shows: a tqdm bar that `\\r` overwrites is not a line of its own."""
    return [seg for line in stderr.splitlines() if (seg := line.rsplit("\r", 1)[-1].strip())]


def fails(capsys: pytest.CaptureFixture, main: Callable, argv: list[str], where: object, *texts: str) -> str:
    """`main` through the scripts' wrapper: exit 2, one `error:` line naming `where` (and `texts`), no traceback."""
    with pytest.raises(SystemExit) as exc:
        run_main(main)([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in visible_lines(err) if line.startswith("error:")]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"error: {where}") and all(t in errors[0] for t in texts), errors[0]
    return errors[0]


def works(capsys: pytest.CaptureFixture, main: Callable, argv: list[str]) -> tuple[str, list[str]]:
    """`main` through the scripts' wrapper ends normally; returns stdout and the visible warning lines."""
    run_main(main)([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "error:" not in err and "Traceback" not in err, err
    return out, [line for line in visible_lines(err) if line.startswith("warning:")]


def finetune(root: Path, out: Path, *extra: object) -> list[object]:
    """Setting E (frozen backbone, classifier only): the cheapest run of the full training path."""
    return ["--setting", "E", "--backbone", root / "backbone.pt", "--data-root", root, "--out", out,
            "--results", out / "results.csv", *TRAIN, *extra]


def p1_infer(csv_path: Path, image_dir: Path, out: Path, checkpoint: Path) -> list[object]:
    return ["--csv", csv_path, "--image-dir", image_dir, "--out", out, "--checkpoint", checkpoint, "--workers", "0",
            "--device", "cpu"]


def p2_infer(image_dir: Path, out: Path, checkpoint: Path) -> list[object]:
    return [image_dir, out, "--checkpoint", checkpoint, "--workers", "0", "--device", "cpu"]


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mode_variants(src: Image.Image) -> dict[str, Image.Image]:
    """SPEC §1: grayscale, RGBA, palette, 16-bit and odd-sized inputs must all work."""
    gray16 = (np.asarray(src.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    return {"gray": src.convert("L"), "rgba": src.convert("RGBA"), "palette": src.convert("P"),
            "16bit": Image.fromarray(gray16), "odd": src.resize((37, 53))}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("backbone") / "backbone.pt"
    torch.save(backbone_state(build_resnet("resnet18")), path)
    return path


@pytest.fixture
def p1(tiny_data: Path, backbone: Path, tmp_path: Path) -> Path:
    """A fresh, small Problem 1 data root a test may break: 4 train / 2 val / 4 Mini-ImageNet images, and a
    random resnet18 backbone file beside them."""
    root = small_p1_root(tiny_data, tmp_path / "data", train=4, val=2, mini=4)
    (root / "backbone.pt").symlink_to(backbone)
    return root


@pytest.fixture
def p2(tiny_data: Path, tmp_path: Path) -> Path:
    """A fresh, small Problem 2 data root a test may break: 4 train / 2 validation pairs."""
    return small_p2_root(tiny_data, tmp_path / "data", train=4, val=2)


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("script", [p1_finetune, p1_pretrain, p2_train_fcn32], ids=lambda m: m.__name__)
def test_bad_input_missing_data_root(script, tmp_path, capsys):
    root = tmp_path / "hw1_data"
    extra = ["--setting", "A"] if script is p1_finetune else ["--weights", "none"] if script is p2_train_fcn32 else []
    fails(capsys, script.main, ["--data-root", root, "--out", tmp_path / "out", "--device", "cpu", *extra], root,
          "data root not found", "--data-root")


def test_bad_input_empty_image_folder(p1, seg_checkpoint, tmp_path, capsys):
    mini = p1 / "p1_data" / "mini" / "train"
    for path in mini.iterdir():
        path.unlink()
    fails(capsys, p1_pretrain.main, ["--data-root", p1, "--out", tmp_path / "out", *TRAIN], mini,
          "no images in this folder")
    empty = tmp_path / "sat"
    empty.mkdir()
    fails(capsys, p2_inference.main, p2_infer(empty, tmp_path / "masks", seg_checkpoint), empty,
          "no xxxx_sat.jpg images")


def test_bad_input_csv_missing_a_column(p1, tmp_path, capsys):
    val = p1 / "p1_data" / "office" / "val.csv"
    _, rows = read_csv(val)
    write_csv(val, ["id", "file", "label"], rows)
    fails(capsys, p1_finetune.main, finetune(p1, tmp_path / "out"), val, "missing column(s) filename",
          "id,filename,label")


def test_bad_input_csv_row_naming_a_missing_file(p1, tmp_path, capsys):
    train = p1 / "p1_data" / "office" / "train.csv"
    header, rows = read_csv(train)
    write_csv(train, header, rows + [["99", "gone.jpg", "3"]])
    fails(capsys, p1_finetune.main, finetune(p1, tmp_path / "out"), train.parent / "train" / "gone.jpg",
          "named on line 6 of train.csv not found")


def test_bad_input_duplicate_ids(p1, tmp_path, capsys):
    val = p1 / "p1_data" / "office" / "val"
    names = sorted(p.name for p in val.iterdir())
    test_csv = write_csv(tmp_path / "test.csv", ["id", "filename", "label"], [[7, names[0], ""], [7, names[1], ""]])
    fails(capsys, p1_inference.main, p1_infer(test_csv, val, tmp_path / "pred.csv", p1 / "backbone.pt"), test_csv,
          "line 3: duplicate id '7'")  # the CSV is checked before the checkpoint is read


@pytest.mark.parametrize("label, problem", [("cat", "label 'cat' is not an integer"),
                                            ("", "label '' is not an integer"),
                                            ("65", "label 65 is outside 0..64"), ("-1", "label -1 is outside 0..64")])
def test_bad_input_training_label_not_an_integer_or_out_of_range(label, problem, p1, tmp_path, capsys):
    train = p1 / "p1_data" / "office" / "train.csv"
    header, rows = read_csv(train)
    rows[1][2] = label
    write_csv(train, header, rows)
    fails(capsys, p1_finetune.main, finetune(p1, tmp_path / "out"), train, f"line 3: {problem}")


@pytest.mark.parametrize("kind, workers", [("truncated-jpeg", 0), ("not-an-image", 2)])
def test_bad_input_unreadable_training_image_is_skipped_and_counted_once(kind, workers, p1, tmp_path, capsys):
    """One bad file among many must not end a long run; with loader workers the count still reaches the summary."""
    bad = sorted((p1 / "p1_data" / "office" / "train").iterdir())[0]
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) // 2] if kind == "truncated-jpeg" else b"<html>not a JPEG</html>\n" * 20)
    _, warnings = works(capsys, p1_finetune.main, finetune(p1, tmp_path / "out", "--workers", workers))
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("warning: unreadable training image skipped (the next one used instead): 1 time(s), "
                                  f"e.g. {bad}: unreadable image"), warnings[0]
    assert (tmp_path / "out" / "last.pt").is_file()


def test_bad_input_truncated_jpeg_at_inference_is_an_error(p2, seg_checkpoint, tmp_path, capsys):
    folder = p2 / "p2_data" / "validation"
    bad = sorted(folder.glob("*_sat.jpg"))[1]
    bad.write_bytes(bad.read_bytes()[:600])
    fails(capsys, p2_inference.main, p2_infer(folder, tmp_path / "masks", seg_checkpoint), bad, "unreadable image")


def test_bad_input_gray_rgba_palette_16bit_and_odd_sized_images_work_for_training(p1, tmp_path, capsys):
    train = p1 / "p1_data" / "office" / "train"
    header, rows = read_csv(train.parent / "train.csv")
    src = Image.open(train / rows[0][1]).convert("RGB")
    for row, (mode, img) in zip(rows, list(mode_variants(src).items())[1:]
                                + [("gray", src.convert("L").resize((70, 41)))]):
        row[1] = f"{mode}_{row[0]}.png"
        img.save(train / row[1])
    write_csv(train.parent / "train.csv", header, rows)
    _, warnings = works(capsys, p1_finetune.main, finetune(p1, tmp_path / "out"))
    assert warnings == [] and (tmp_path / "out" / "last.pt").is_file()


def test_bad_input_gray_rgba_palette_16bit_and_odd_sized_images_work_for_segmentation(tiny_data, seg_checkpoint,
                                                                                      tmp_path, capsys):
    """hw1_2.sh's script: each mask has its input's own size and only map colours."""
    src = Image.open(sorted((tiny_data / "p2_data" / "validation").glob("*_sat.jpg"))[0]).convert("RGB")
    folder = tmp_path / "sat"
    folder.mkdir()
    variants = mode_variants(src)
    for name, img in variants.items():  # PNG data under the course's name: formats are read from the content
        img.save(folder / f"{name}_sat.jpg", format="JPEG" if img.mode in ("L", "RGB") else "PNG")
    works(capsys, p2_inference.main, p2_infer(folder, tmp_path / "masks", seg_checkpoint))
    for name, img in variants.items():
        mask = Image.open(tmp_path / "masks" / f"{name}_mask.png")
        assert mask.mode == "RGB" and mask.size == img.size
        colours = np.unique(np.asarray(mask).reshape(-1, 3), axis=0)
        assert all((c == CLASS_COLOURS).all(1).any() for c in colours)


def test_bad_input_mask_missing_for_a_training_image(p2, tmp_path, capsys):
    mask = sorted((p2 / "p2_data" / "train").glob("*_mask.png"))[1]
    mask.unlink()
    fails(capsys, p2_train_fcn32.main, ["--data-root", p2, "--out", tmp_path / "out", *SEG_TRAIN], mask,
          f"mask missing for image {mask.name.replace('_mask.png', '_sat.jpg')}")


def test_bad_input_mask_of_another_size(p2, tmp_path, capsys):
    mask = sorted((p2 / "p2_data" / "validation").glob("*_mask.png"))[0]
    Image.open(mask).resize((48, 64), Image.NEAREST).save(mask)
    fails(capsys, p2_train_fcn32.main, ["--data-root", p2, "--out", tmp_path / "out", *SEG_TRAIN], mask,
          "mask is 48x64 but its image", "is 64x64")


def test_bad_input_off_palette_mask_colours_are_read_by_the_course_rule_and_red_warned_once(p2, tmp_path, capsys):
    """Pure red (no class) → Unknown, counted over loader workers and printed once; other off-palette colours
    are thresholded at 128 like the course's reader, silently."""
    masks = sorted((p2 / "p2_data" / "train").glob("*_mask.png"))[:2]
    for mask in masks:
        rgb = np.array(Image.open(mask).convert("RGB"))
        rgb[:3, :5] = (250, 10, 20)      # pure red after thresholding: 15 px a mask
        rgb[10:12] = (200, 190, 40)      # off-palette, reads as Agriculture
        Image.fromarray(rgb).save(mask)
    out = tmp_path / "out"
    _, warnings = works(capsys, p2_train_deeplab.main, [
        "--arch", "deeplabv3_mobilenet_v3_large", "--aux-weight", "0", "--data-root", p2, "--out", out,
        "--results", out / "results.csv", *SEG_TRAIN, "--workers", "2"])
    assert len(warnings) == 1 and warnings[0].startswith("warning: pure-red mask pixels"), warnings
    assert ": 30 time(s), e.g. " in warnings[0], warnings[0]


# ---------------------------------------------------------------- outputs and checkpoints


def test_bad_input_output_folder_not_writable(p1, tmp_path, capsys):
    """Run as root, permissions stop nothing: a folder under a plain file can never be made."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    fails(capsys, p1_finetune.main, finetune(p1, blocker / "run"), blocker / "run", "cannot write here")
    val = p1 / "p1_data" / "office" / "val"
    fails(capsys, p1_inference.main,
          p1_infer(val.parent / "val.csv", val, blocker / "sub" / "pred.csv", p1 / "backbone.pt"),
          blocker / "sub", "cannot write here")  # before the checkpoint is even read


def test_bad_input_hw1_2_sh_output_folder_not_writable(p2, seg_checkpoint, tmp_path):
    """The grading command itself: exit 2 and one stderr line."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    proc = run(["bash", "hw1_2.sh", str(p2 / "p2_data" / "validation"), str(blocker / "masks")],
               env_extra={"P2_CHECKPOINT": str(seg_checkpoint)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert visible_lines(proc.stderr) == [f"error: {blocker / 'masks'}: cannot write here (Not a directory) — "
                                          "choose a writable output folder"]


def test_bad_input_checkpoint_file_missing(p1, tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    val = p1 / "p1_data" / "office" / "val"
    fails(capsys, p1_inference.main, p1_infer(val.parent / "val.csv", val, tmp_path / "pred.csv", missing), missing,
          "classifier checkpoint not found")
    fails(capsys, p1_finetune.main, finetune(p1, tmp_path / "out", "--resume", missing), missing,
          "checkpoint file not found")


@pytest.mark.parametrize("meta, problem", [
    ({"task": "classify", "arch": "resnet50", "num_classes": 65},
     "holds arch='resnet50' but this run needs arch='resnet18'"),
    ({"task": "classify", "arch": "resnet18", "num_classes": 10},
     "holds num_classes=10 but this run needs num_classes=65"),
    ({"task": "pretrain-byol", "arch": "resnet18"}, "holds task='pretrain-byol' but this run needs task='classify'"),
], ids=["architecture", "class-count", "task"])
def test_bad_input_resume_from_a_checkpoint_of_another_model(meta, problem, p1, tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.save({"model": {}, "optimizer": {}, "lr_scheduler": {}, "epoch": 1, "step": 1, "rng": {}, "meta": meta},
               other)
    fails(capsys, p1_finetune.main, finetune(p1, tmp_path / "out", "--resume", other), other, problem)


def test_bad_input_segmentation_checkpoint_of_another_model(p2, tmp_path, capsys):
    classifier = tmp_path / "best.pt"
    torch.save({"model": {}, "meta": {"task": "classify", "arch": "resnet18", "num_classes": 65, "image_size": 32}},
               classifier)
    fails(capsys, p2_inference.main, p2_infer(p2 / "p2_data" / "validation", tmp_path / "masks", classifier),
          classifier, "holds a classify model (resnet18), not a Problem 2 segmentation model")


@pytest.mark.parametrize("user", ["p1_inference", "p2_inference", "resume"])
def test_bad_input_truncated_checkpoint(user, p1, p2, seg_checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(seg_checkpoint.read_bytes()[:100_000])
    val = p1 / "p1_data" / "office" / "val"
    argv = {"p1_inference": (p1_inference.main, p1_infer(val.parent / "val.csv", val, tmp_path / "pred.csv", broken)),
            "p2_inference": (p2_inference.main, p2_infer(p2 / "p2_data" / "validation", tmp_path / "masks", broken)),
            "resume": (p1_finetune.main, finetune(p1, tmp_path / "out", "--resume", broken))}[user]
    fails(capsys, *argv, broken, "not a readable checkpoint", "corrupted or truncated")


# ---------------------------------------------------------------- training runs


def test_bad_input_resume_with_other_hyperparameters_warns_and_uses_them(p1, tmp_path, capsys):
    out = tmp_path / "out"
    works(capsys, p1_finetune.main, finetune(p1, out, "--epochs", "2"))  # 1 step an epoch: stops after epoch 1
    _, warnings = works(capsys, p1_finetune.main, finetune(p1, out, "--epochs", "2", "--max-steps", "2", "--resume",
                                                           "--lr", "3e-4", "--weight-decay", "0.01"))
    assert warnings == [f"warning: {out / 'last.pt'}: resuming with other hyper-parameters: --lr 0.0001→0.0003, "
                        "--weight-decay 0.05→0.01 (the new values apply from here on)"]
    groups = torch.load(out / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [3e-4, 3e-4] and [g["weight_decay"] for g in groups] == [0.01, 0.0]


def test_bad_input_nan_loss_stops_keeps_the_last_good_checkpoint_and_names_the_step(p1, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    works(capsys, p1_finetune.main, finetune(p1, out, "--epochs", "3"))  # a good first epoch (one step)
    before = {p.name: digest(p) for p in out.glob("*.pt")}
    cross_entropy = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: cross_entropy(*a, **k) * float("nan"))
    fails(capsys, p1_finetune.main, finetune(p1, out, "--epochs", "3", "--max-steps", "3", "--resume"),
          out, "the loss became NaN/inf at step 2", f"The last good checkpoint, {out / 'last.pt'}, was kept")
    assert {p.name: digest(p) for p in out.glob("*.pt")} == before
    assert not list(out.glob(".*.tmp"))


def test_bad_input_cuda_requested_but_absent(p1, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fails(capsys, p1_finetune.main, finetune(p1, tmp_path / "out", "--device", "cuda"), "--device cuda",
          "CUDA was requested but no GPU is visible", "--device cpu or --device auto")
    out, _ = works(capsys, p1_finetune.main, finetune(p1, tmp_path / "out", "--device", "auto"))
    assert "note: --device auto: no CUDA GPU is visible; running on the CPU" in out and ", cpu" in out


def test_bad_input_debug_flag_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_main(p1_pretrain.main)(["--data-root", str(tmp_path / "nope"), "--debug"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" in err
    assert err.rstrip().splitlines()[-1].startswith(f"error: {tmp_path / 'nope'}: data root not found")


@pytest.mark.parametrize("content", [b"\xff\xd8\xff\xe0 JFIF" + bytes(range(256)),
                                     b"id,filename\n" + bytes(range(128))],
                         ids=["jpeg-bytes", "nul-bytes"])
def test_bad_input_binary_file_given_as_the_csv(content, p1, tmp_path, capsys):
    """An image or other binary file where hw1_1.sh wants the CSV: one line, not a UnicodeDecodeError."""
    val = p1 / "p1_data" / "office" / "val"
    binary = tmp_path / "images.csv"
    binary.write_bytes(content)
    fails(capsys, p1_inference.main, p1_infer(binary, val, tmp_path / "pred.csv", p1 / "backbone.pt"), binary,
          "not a text CSV", "pass the id,filename,label CSV file")
    proc = run(["bash", "hw1_1.sh", str(binary), str(val), str(tmp_path / "pred.csv")],
               env_extra={"P1_CHECKPOINT": str(p1 / "backbone.pt")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in visible_lines(proc.stderr) if not line.startswith("note:")] == [
        f"error: {binary}: not a text CSV "
        + ("(byte 0 is not UTF-8)" if content[0] == 0xFF else "(it holds NUL bytes)")
        + " — pass the id,filename,label CSV file"]


@pytest.mark.parametrize("script, argv", [("hw1_1.sh", ["a.csv", "images", "out.csv"]),
                                          ("hw1_2.sh", ["images", "masks"])])
def test_bad_input_grading_script_without_a_python_that_has_torch(script, argv, tmp_path):
    """A fresh clone without .venv, where `python3` lacks torch: the set-up command, not a ModuleNotFoundError."""
    repo, bin_dir = tmp_path / "clone", tmp_path / "bin"
    repo.mkdir()
    bin_dir.mkdir()
    for name in (script, "grading_python.sh"):  # the script and the interpreter check it sources
        (repo / name).write_bytes((ROOT / name).read_bytes())
    no_site = bin_dir / "python3"  # this venv's interpreter without its site-packages: no torch
    no_site.write_text(f"#!/bin/sh\nexec {PYTHON} -S \"$@\"\n")
    no_site.chmod(0o755)
    proc = run(["bash", str(repo / script), *argv], env_extra={"PATH": f"{bin_dir}:/usr/bin:/bin", "HW1_PYTHON": ""})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert visible_lines(proc.stderr) == [
        f"error: python3: no Python with torch and torchvision found — set up once in {repo}: python3 -m venv .venv && "
        ".venv/bin/pip install -r requirements.txt (or set HW1_PYTHON)"]
    assert "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt" in (ROOT / "README.md").read_text()
