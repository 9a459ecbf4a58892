"""Analysis tools: t-SNE clustering numbers, plots, Segment Anything on CPU, --print-model."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hw1 import io, viz
from hw1.data.folders import NUM_OFFICE_CLASSES
from hw1.errors import run_main
from hw1.p1.models import Classifier
from hw1.train import checkpoint, engine

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


needs_sam = pytest.mark.skipif(importlib.util.find_spec("segment_anything") is None,
                               reason="segment-anything is not installed (the course's environment has none)")


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_tsne_silhouette_separated_classes_beat_shuffled_labels():
    import p1_tsne

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (5, 64))
    labels = np.repeat(np.arange(5), 30)
    feats = centres[labels] + rng.normal(0, 1, (len(labels), 64))
    emb = p1_tsne.tsne_2d(feats, seed=0, perplexity=10)
    assert emb.shape == (150, 2)
    true = p1_tsne.silhouette_2d(emb, labels)
    shuffled = p1_tsne.silhouette_2d(emb, rng.permutation(labels))
    assert true > 0.5 and true > shuffled + 0.4, (true, shuffled)


def test_p1_tsne_script_on_two_checkpoints(tiny_data, tmp_path, capsys):
    import p1_tsne

    paths = []
    for name, seed in (("first", 0), ("last", 1)):
        torch.manual_seed(seed)
        model = Classifier("resnet18", NUM_OFFICE_CLASSES)
        path = tmp_path / "finetune_C" / f"{name}.pt"
        meta = {"task": "classify", "arch": "resnet18", "num_classes": NUM_OFFICE_CLASSES, "image_size": 32,
                "setting": "C"}
        checkpoint.save_checkpoint(path, {"model": model.state_dict(), "meta": meta, "epoch": 1 + seed})
        paths.append(str(path))
    out = tmp_path / "tsne"
    p1_tsne.main(["--checkpoints", *paths, "--data-root", str(tiny_data), "--out", str(out), "--device", "cpu",
                  "--workers", "0", "--perplexity", "5"])
    scores = json.loads((out / "tsne_scores.json").read_text())
    assert [c["name"] for c in scores["checkpoints"]] == ["finetune_C_first", "finetune_C_last"]
    for c in scores["checkpoints"]:
        assert c["feature_dim"] == 512 and -1 <= c["silhouette_2d"] <= 1 and 0 <= c["knn_acc"] <= 1
        assert is_png(out / c["png"])
    assert is_png(out / "tsne_side_by_side.png")
    assert "silhouette (2-D)" in capsys.readouterr().out


def test_p1_tsne_rejects_a_segmentation_checkpoint(tmp_path, capsys):
    import p1_tsne

    path = tmp_path / "seg.pt"
    checkpoint.save_checkpoint(path, {"model": {}, "meta": {"task": "segment", "arch": "fcn32s"}})
    with pytest.raises(SystemExit) as exit_:
        run_main(p1_tsne.main)(["--checkpoints", str(path), "--device", "cpu"])
    assert exit_.value.code == 2
    assert "task='segment'" in capsys.readouterr().err


def test_palette_has_65_distinct_colours():
    colours = viz.palette(65)
    assert colours.shape == (65, 3)
    assert len({tuple(np.round(c, 4)) for c in colours}) == 65


def test_plots_are_written_as_png_without_temp_files(tmp_path):
    rng = np.random.default_rng(0)
    emb, labels = rng.normal(size=(130, 2)), np.arange(130) % 65
    assert is_png(viz.save_tsne(tmp_path / "tsne.png", emb, labels, "one"))
    assert is_png(viz.save_tsne_grid(tmp_path / "grid.png", [emb, emb * 2], labels, ["a", "b"]))
    for epoch in (1, 2, 3):
        io.append_csv_row(tmp_path / "log.csv", {"epoch": epoch, "step": 10 * epoch, "train_loss": 1.0 / epoch,
                                                 "lr": 1e-4 / epoch, "seconds": 1.0, "val_acc": 0.1 * epoch})
    assert is_png(viz.save_curves(tmp_path / "log.csv", tmp_path / "curves.png", title="run"))
    grid = [[np.zeros((8, 8, 3), np.uint8)] * 3, [np.full((8, 8, 3), 255, np.uint8)] * 2]
    assert is_png(viz.save_image_grid(tmp_path / "imgs.png", grid, ["r0", "r1"], ["a", "b", "c"]))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_mask_overlay_gives_each_mask_its_own_colour():
    image = np.full((10, 10, 3), 100, np.uint8)
    a, b = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    a[:5], b[7:, 7:] = True, True
    out = viz.mask_overlay(image, [a, b])
    assert (out[6, :7] == 100).all()                         # outside every mask: untouched
    assert (out[0, 0] != 100).any() and (out[9, 9] != 100).any()
    assert tuple(out[0, 0]) != tuple(out[9, 9])              # two masks, two colours


@needs_sam
@pytest.mark.parametrize("prec", ["auto", "bf16"])
def test_sam_random_tiny_model_writes_overlays_and_json(prec, tiny_data, tmp_path):
    """auto is fp32 on the CPU; bf16 runs the image encoder under CPU autocast, the GPU's path."""
    import p2_sam

    out = tmp_path / "sam"
    p2_sam.main(["--random-tiny", "--data-root", str(tiny_data), "--out", str(out), "--device", "cpu",
                 "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                 "--precision", prec])
    result = json.loads((out / "sam_masks.json").read_text())
    assert result["precision"] == {"auto": "fp32", "bf16": "bf16"}[prec]
    assert [Path(im["image"]).name for im in result["images"]] == ["0013_sat.jpg", "0062_sat.jpg", "0104_sat.jpg"]
    for im in result["images"]:
        assert is_png(out / im["overlay"])
        for m in im["masks"]:
            assert set(m) == {"area", "predicted_iou", "stability_score", "bbox"} and len(m["bbox"]) == 4
    assert any(im["masks"] for im in result["images"])


@needs_sam
def test_sam_image_encoder_computes_in_bf16_and_hands_fp32_to_the_decoder():
    import p2_sam
    from hw1.train.precision import Precision

    sam = p2_sam.build_tiny_sam()
    seen = []
    sam.image_encoder.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    p2_sam.autocast_image_encoder(sam, Precision("bf16", "cpu"))
    with torch.inference_mode():
        features = sam.image_encoder(torch.rand(1, 3, 128, 128))
    assert seen == [torch.bfloat16] and features.dtype == torch.float32


@needs_sam
def test_sam_missing_checkpoint_is_one_line_naming_the_download(tiny_data, tmp_path, capsys):
    import p2_sam

    with pytest.raises(SystemExit) as exit_:
        run_main(p2_sam.main)(["--data-root", str(tiny_data), "--checkpoint", str(tmp_path / "sam_vit_b_01ec64.pth")])
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in err[0]


def test_sam_without_the_package_is_one_line(tiny_data, tmp_path, capsys, monkeypatch):
    """The course's environment has no segment-anything: p2_sam.py says how to install it."""
    import p2_sam

    monkeypatch.setitem(sys.modules, "segment_anything", None)  # import fails as if it were not installed
    with pytest.raises(SystemExit) as exit_:
        run_main(p2_sam.main)(["--data-root", str(tiny_data), "--random-tiny", "--out", str(tmp_path)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_.value.code == 2 and err == ["error: segment-anything: the package is not installed — pip install "
                                             "segment-anything==1.0 (in requirements.txt, "
                                             "not in the course's environment)"]


def test_print_model_writes_tree_and_counts_and_does_not_train(tiny_data, tmp_path, capsys):
    import p1_finetune

    out = tmp_path / "model"
    p1_finetune.main(["--setting", "A", "--arch", "resnet18", "--data-root", str(tiny_data), "--out", str(out),
                      "--workers", "0", "--device", "cpu", "--print-model", "--results", str(tmp_path / "r.csv")])
    text = (out / "model.txt").read_text()
    total = sum(p.numel() for p in Classifier("resnet18", NUM_OFFICE_CLASSES).parameters())
    assert f"parameters: {total:,} total, {total:,} trainable" in text
    assert "net.layer4" in text and "(fc): Linear(in_features=512, out_features=65" in text
    assert text in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["model.txt"] and not (tmp_path / "r.csv").exists()


def test_describe_model_counts_frozen_and_shared_parameters_once():
    frozen = Classifier("resnet18", NUM_OFFICE_CLASSES, frozen=True)
    fc = sum(p.numel() for p in frozen.net.fc.parameters())
    total = sum(p.numel() for p in frozen.parameters())
    assert f"parameters: {total:,} total, {fc:,} trainable" in engine.describe_model(frozen)
    shared = torch.nn.Linear(4, 4)
    text = engine.describe_model(torch.nn.ModuleDict({"a": shared, "b": torch.nn.Sequential(shared)}))
    assert "parameters: 20 total, 20 trainable" in text
    assert [line.split()[1] for line in text.splitlines() if line.startswith(("a ", "b "))] == ["20", "0"]
