"""P2 end to end on the tiny sample data: a short DeepLabV3 run learns, logs and snapshots; hw1_2.sh
writes one map-coloured mask per image that mean_iou.py scores; bad input is one `error:` line."""
from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fixture_dir
from PIL import Image
from robust_helpers import small_p2_root

import mean_iou
import p2_inference
import p2_train_deeplab
import p2_train_fcn32
from hw1 import io
from hw1.errors import run_main
from hw1.p2.data import CLASS_COLOURS, CLASS_NAMES, SNAPSHOT_STEMS, SatMaskDataset, collate, find_pairs
from hw1.p2.models import build_seg_model
from hw1.p2.training import evaluate_miou, recalibrate_batchnorm
from hw1.train import checkpoint

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--weights", "none", "--workers", "0", "--device", "cpu"]
# The lightest setting found to learn reliably from random weights: DeepLabV3-MobileNetV3 with the 64 px
# images enlarged to 128 (at 64 its stride-16 map is 4 x 4), 64 steps (4 epochs reached 0.164 from 0.060 on the
# textured data, 6 epochs 0.175), batch-norm statistics re-estimated before validation (a short run's running
# averages trail its fast-moving weights).
ARCH, SIZE, RECALIBRATE = "deeplabv3_mobilenet_v3_large", 128, 4
SHORT_RUN = ["--arch", ARCH, "--image-size", str(SIZE), "--batch-size", "4", "--epochs", "8", "--eval-every", "4",
             "--lr", "2e-3", "--warmup-steps", "4", "--aux-weight", "0", "--bn-recalibrate", str(RECALIBRATE)]


@pytest.fixture(scope="module")
def run_dir(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """OUT of a short p2_train_deeplab.py run on the tiny sample data."""
    with fixture_dir(tmp_path_factory, "p2_deeplab") as out:
        p2_train_deeplab.main(["--data-root", str(tiny_data), "--out", str(out), "--results", str(out / "results.csv"),
                               *CPU, *SHORT_RUN])
        yield out


def only_map_colours(path: Path) -> bool:
    img = Image.open(path)
    colours = np.unique(np.asarray(img).reshape(-1, 3), axis=0)
    return img.mode == "RGB" and {tuple(c) for c in colours} <= {tuple(c) for c in CLASS_COLOURS}


def test_short_training_raises_validation_miou_well_above_untrained(run_dir, tiny_data):
    """The untrained model is scored as the run scores: statistics re-estimated, then validation mIoU."""
    cpu = torch.device("cpu")

    def loader(split: str, **kw: bool) -> torch.utils.data.DataLoader:
        pairs = find_pairs(tiny_data / "p2_data" / split, need_masks=True)
        return torch.utils.data.DataLoader(SatMaskDataset(pairs, SIZE, **kw), batch_size=4, collate_fn=collate)

    torch.manual_seed(0)
    untrained = build_seg_model(ARCH, "none")
    recalibrate_batchnorm(untrained, loader("train"), cpu, RECALIBRATE, world_size=1)
    with torch.no_grad():
        before = evaluate_miou(untrained, loader("validation", full_res_masks=True), cpu, show=False)["miou"]
    log = io.read_csv_rows(run_dir / "log.csv")
    assert {"miou", *(f"iou_{c}" for c in CLASS_NAMES[:6])} <= log[-1].keys()
    after = float(log[-1]["miou"])
    # Spread over seeds 0-4 x 1 and 2 threads (tests/outcome_spread.py), untrained 0.060: trained 0.110-0.196,
    # 1.8-3.3x and +0.049-0.135 (worst: seed 2 at 2 threads; the suite's seed 0 at 2 threads 0.134); another
    # machine gave 0.152.
    assert after >= 1.5 * before and after >= before + 0.03, (before, after)
    assert (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()
    meta = checkpoint.load_checkpoint(run_dir / "best.pt")["meta"]
    assert meta == {"task": "segment", "arch": ARCH, "num_classes": 7, "image_size": SIZE, "weights": "none",
                    "aux": False}


def test_snapshots_at_early_middle_final_epochs(run_dir):
    names = sorted(p.name for p in (run_dir / "snapshots").iterdir())
    # 8 epochs: early = epoch 1, middle = epoch 4, final = epoch 8; a coloured mask and a figure each
    expected = sorted(f"{stem}_epoch{e:03d}_{tag}{suffix}" for stem in SNAPSHOT_STEMS
                      for e, tag in ((1, "early"), (4, "middle"), (8, "final")) for suffix in ("_mask.png", ".png"))
    assert names == expected
    for name in names:
        if name.endswith("_mask.png"):
            assert (only_map_colours(run_dir / "snapshots" / name)
                    and Image.open(run_dir / "snapshots" / name).size == (64, 64))
        else:
            assert Image.open(run_dir / "snapshots" / name).width > 3 * 64  # image | ground truth | prediction


def test_hw1_2_sh_writes_one_map_mask_per_image_that_mean_iou_reads(run_dir, tiny_data, tmp_path, capsys):
    images = tiny_data / "p2_data" / "validation"
    out = tmp_path / "masks"
    env = {**os.environ, "P2_CHECKPOINT": str(run_dir / "best.pt")}
    proc = subprocess.run(["bash", str(ROOT / "hw1_2.sh"), str(images), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    sats = sorted(p.name[:-len("_sat.jpg")] for p in images.glob("*_sat.jpg"))
    assert sorted(p.name for p in out.iterdir()) == [f"{s}_mask.png" for s in sats]
    for stem in sats:
        assert Image.open(out / f"{stem}_mask.png").size == Image.open(images / f"{stem}_sat.jpg").size
        assert only_map_colours(out / f"{stem}_mask.png")

    run_main(mean_iou.main)(["--pred", str(out), "--labels", str(images)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" : ")[0] for line in lines[:6]] == [f"class #{i}" for i in range(6)]
    assert lines[-1].startswith("mean_iou: ") and len(lines) == 7
    best = max(float(r["miou"]) for r in io.read_csv_rows(run_dir / "log.csv") if r["miou"])
    assert math.isclose(float(lines[-1].split()[-1]), best, abs_tol=1e-3)  # inference == validation, same rule

    # a re-run (with flip averaging) overwrites cleanly: the same files, no temporary ones left behind
    run_main(p2_inference.main)([str(images), str(out), "--checkpoint", str(run_dir / "best.pt"), "--tta",
                                 "--workers", "0", "--device", "cpu"])
    assert sorted(p.name for p in out.iterdir()) == [f"{s}_mask.png" for s in sats]
    assert all(only_map_colours(out / f"{s}_mask.png") for s in sats)


def test_hw1_2_sh_usage():
    usage = subprocess.run(["bash", str(ROOT / "hw1_2.sh"), "only-one-arg"], capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: bash hw1_2.sh IMAGE_DIR OUTPUT_DIR")


@pytest.mark.parametrize("case", ["no images", "mask missing", "size mismatch", "no images to predict",
                                  "checkpoint of the other model", "batch norm with one image a step"])
def test_bad_input_is_one_error_line(case, tiny_data, tmp_path, capsys):
    root = small_p2_root(tiny_data, tmp_path / "data", train=2, val=1)
    train = root / "p2_data" / "train"
    argv = ["--data-root", str(root), "--out", str(tmp_path / "out"), *CPU, "--image-size", "32", "--max-steps", "1"]
    main, expected = p2_train_fcn32.main, ""
    if case == "no images":
        for p in train.iterdir():
            p.unlink()
        expected = f"error: {train}: no xxxx_sat.jpg images in this folder"
    elif case == "mask missing":
        (train / "0001_mask.png").unlink()
        expected = f"error: {train / '0001_mask.png'}: mask missing for image 0001_sat.jpg"
    elif case == "size mismatch":
        Image.open(train / "0000_mask.png").resize((48, 64)).save(train / "0000_mask.png")
        expected = f"error: {train / '0000_mask.png'}: mask is 48x64 but its image 0000_sat.jpg is 64x64"
    elif case == "no images to predict":
        empty = tmp_path / "empty"
        empty.mkdir()
        main, argv = p2_inference.main, [str(empty), str(tmp_path / "masks"), "--device", "cpu"]
        expected = f"error: {empty}: no xxxx_sat.jpg images in this folder — check the path"
    elif case == "batch norm with one image a step":  # plain VGG16 trains on one image a step; vgg16_bn cannot
        argv += ["--batch-size", "1", "--vgg", "vgg16_bn"]
        expected = "error: --batch-size: fcn32s's batch norm needs at least 2 training images per process and step"
    else:  # a Problem 1 classifier checkpoint handed to Problem 2 inference
        classifier = tmp_path / "p1.pt"
        checkpoint.save_checkpoint(classifier, {"model": {}, "meta": {"task": "classify", "arch": "resnet50",
                                                                      "num_classes": 65}})
        main, argv = p2_inference.main, [str(train), str(tmp_path / "masks"), "--checkpoint", str(classifier),
                                         "--device", "cpu"]
        expected = f"error: {classifier}: holds a classify model (resnet50), not a Problem 2 segmentation model"
    with pytest.raises(SystemExit) as exit_info:
        run_main(main)(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith(expected), err


@pytest.mark.parametrize("main", [p2_train_fcn32.main, p2_train_deeplab.main, p2_inference.main, mean_iou.main])
def test_scripts_answer_help(main, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("usage:")
