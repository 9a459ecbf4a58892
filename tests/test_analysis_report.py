"""reproduce.py and the report writer.

A real end-to-end run of even the tiny preset takes minutes on 2 CPU cores (18 stages; FCN32s alone
writes two 1.6 GB checkpoints), so the default tests check the report writer on fabricated run
folders and the stage runner on fake stages; HW1_SLOW_TESTS=1 adds the real tiny run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reproduce
from hw1 import io, viz
from hw1.p1.settings import SETTINGS
from hw1.p2.data import write_mask
from hw1.report.markdown import P2_REFERENCE, SEG_CLASSES, Layout, ReportInfo, image_links, write_report
from hw1.train import engine

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_report(report: Path) -> str:
    """Every image link is relative and resolves to a PNG; no table cell is a placeholder."""
    text = report.read_text()
    links = image_links(text)
    assert links
    for link in links:
        assert not os.path.isabs(link) and (report.parent / link).read_bytes()[:8] == PNG_MAGIC, link
    table_rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    assert table_rows and not [r for r in table_rows if "—" in r or "nan" in r], [r for r in table_rows if "—" in r]
    return text


def fabricate_runs(layout: Layout, data_root: Path) -> None:
    """Run folders shaped like the stages' outputs, with known numbers."""
    rng = np.random.default_rng(0)
    for epoch in (1, 2, 3):
        io.append_csv_row(layout.pretrain_byol / "log.csv", {"epoch": epoch, "step": 12 * epoch,
                                                            "train_loss": 4.0 - epoch, "lr": 1e-4, "seconds": 1.0,
                                                            "knn_acc": 0.1 * epoch, "view_gap": 0.05 * epoch})
    for i, setting in enumerate(SETTINGS):
        for epoch in (1, 2):
            io.append_csv_row(layout.finetune(setting) / "log.csv", {"epoch": epoch, "step": epoch, "train_loss": 1.0,
                                                                    "lr": 1e-4, "seconds": 1.0,
                                                                    "val_acc": 0.1 * i + 0.01 * epoch})
        if setting != "E":  # E only in its log: the report falls back to it
            io.append_csv_row(layout.p1_results, {"setting": setting, "arch": "resnet18", "backbone": "none",
                                                  "val_acc": 0.1 * i + 0.02, "best_val_acc": 0.1 * i + 0.02,
                                                  "epochs": 2})
    labels = np.arange(130) % 65
    embs = [rng.normal(size=(130, 2)) for _ in range(2)]
    viz.save_tsne_grid(layout.tsne / "side.png", embs, labels, ["first", "last"])
    io.write_json(layout.tsne / "tsne_scores.json", {
        "perplexity": 30, "pca_dims": 50, "knn_k": 20, "seed": 0, "side_by_side": "side.png",
        "checkpoints": [{"name": "finetune_C_first", "epoch": 1, "feature_dim": 512, "silhouette_2d": -0.2,
                         "knn_acc": 0.3},
                        {"name": "finetune_C_last", "epoch": 2, "feature_dim": 512, "silhouette_2d": 0.1,
                         "knn_acc": 0.5}]})
    for model in P2_REFERENCE:
        for epoch, tag in ((1, "early-middle"), (3, "final")):
            io.append_csv_row(layout.seg(model) / "log.csv", {"epoch": epoch, "step": epoch, "train_loss": 1.0,
                                                              "lr": 1e-4, "seconds": 1.0, "miou": 0.2 * epoch,
                                                              "iou_urban": 0.1})
            write_mask(layout.seg(model) / "snapshots" / f"0013_epoch{epoch:03d}_{tag}_mask.png",
                       rng.integers(0, 7, (64, 64)))
        lines = [f"class #{i} : {0.1 * (i + 1):1.5f}" for i in range(len(SEG_CLASSES))] + ["mean_iou: 0.350000"]
        io.write_text(layout.miou(model), "\n".join(lines) + "\n")
    io.write_text(layout.model_tree("fcn32s"), engine.describe_model(torch.nn.Sequential(torch.nn.Conv2d(3, 7, 1))))
    image = np.zeros((32, 32, 3), np.uint8)
    viz.save_overlay(layout.sam / "0013_sam.png", image, [np.ones((32, 32), bool)])
    io.write_json(layout.sam / "sam_masks.json", {"model": "sam_vit_b.pth", "points_per_side": 32,
                                                  "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "images": [
        {"image": "0013_sat.jpg", "overlay": "0013_sam.png", "seconds": 1.5,
         "masks": [{"area": 1024, "predicted_iou": 0.9, "stability_score": 0.97, "bbox": [0, 0, 32, 32]}]}]})
    io.write_json(layout.stages, {"fine-tune A": {"command": "python p1_finetune.py --setting A", "seconds": 3.0,
                                                  "cpu_seconds": 5.0, "status": "done"}})


def fabricated_info(data_root: Path) -> ReportInfo:
    return ReportInfo(preset="sample", command="python reproduce.py --preset sample", data_root=str(data_root),
                      description="fabricated", sample_data=True, wall_seconds=60.0, ran_now=["fine-tune A"],
                      model_names={"fcn32s": "model A: VGG16-FCN32s"})


def test_report_from_fabricated_runs_has_numbers_and_resolving_png_links(tiny_data, tmp_path):
    layout = Layout(tmp_path / "runs")
    fabricate_runs(layout, tiny_data)
    report = write_report(layout, tmp_path / "report", fabricated_info(tiny_data))
    text = check_report(report)
    assert "Sample-data numbers, not the course's" in text
    assert "| A | none | full model | 0.4877 | 0.0200 | 0.0200 | 2 |" in text
    assert "| E | ours, BYOL, no labels | classifier only | 0.3719 | 0.4200 | 0.4200 | 2 |" in text  # from its log
    assert "| E0 | none (random initialisation) | classifier only | none (control) | 0.5200 | 0.5200 | 2 |" in text
    assert "| A: VGG16-FCN32s | 0.7008 | 0.3500 | 0.1000 | 0.2000 | 0.3000 | 0.4000 | 0.5000 | 0.6000 |" in text
    assert "silhouette changes by +0.3000" in text
    assert ("(`view_gap` in its log) went from 0.0500 at the random initialisation (step 0) to 0.1500 at the last "
            "evaluation" in text)
    with Image.open(report.parent / "sample_office_classes.png") as montage:  # 65 classes, 13 a row, 64 px each
        assert montage.size == (13 * 64, 5 * 64)
    assert {"sample_office_classes.png", "progress_fcn32s.png", "progress_deeplabv3.png", "sam_0013_sam.png",
            "tsne_side_by_side.png", "curves_pretrain_byol.png", "curves_finetune_val_acc.png",
            "curves_p2_deeplabv3.png"} <= set(image_links(text))
    assert "python p1_finetune.py --setting A" in text and "(model_fcn32s.txt)" in text
    assert not [p for p in report.parent.iterdir() if p.name.startswith(".")]  # atomic writes leave no temp files


def test_findings_compare_the_runs_numbers_and_say_what_is_not_shown(tiny_data, tmp_path):
    """Fabricated: BYOL kNN 0.1 → 0.3 and silhouette -0.2 → 0.1 are shown; E 0.42 < E0 0.52 and equal mIoUs are not."""
    layout = Layout(tmp_path / "runs")
    fabricate_runs(layout, tiny_data)
    text = write_report(layout, tmp_path / "report", fabricated_info(tiny_data)).read_text()
    section = text.split("## Findings\n", 1)[1].split("\n## ", 1)[0]
    assert text.index("## Findings") < text.index("## Problem 1")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in section.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert rows["BYOL improves its kNN monitor over its random initialisation"].startswith(
        "| BYOL improves its kNN monitor over its random initialisation | **shown** | 0.3000 | 0.1000 | +0.2000 |")
    assert "| **not shown** | 0.4200 | 0.5200 | -0.1000 |" in rows["E beats E0"]
    assert "| **shown** | 0.2200 | 0.0200 | +0.2000 |" in rows["C beats A"]
    assert "| **shown** | 0.1200 | 0.0200 | +0.1000 |" in rows["B beats A"]
    assert "| **not shown** | 0.3500 | 0.3500 | +0.0000 |" in rows["model B beats model A in mIoU"]
    assert ("| **shown** | 0.1000 | -0.2000 | +0.3000 |"
            in rows["t-SNE of the last epoch is more clustered than the first"])
    assert len(rows) == 7  # the header and six claims


def test_results_json_holds_the_tables_numbers_and_leaves_out_stages_that_did_not_run(tiny_data, tmp_path):
    layout = Layout(tmp_path / "runs")
    fabricate_runs(layout, tiny_data)
    report = write_report(layout, tmp_path / "report", fabricated_info(tiny_data))
    results = json.loads((report.parent / "results.json").read_text())
    assert set(results) == {"preset", "wall_s", "p1", "byol", "tsne", "p2", "findings"} and results["wall_s"] == 60.0
    assert list(results["p1"]) == ["A", "B", "C", "D", "E", "E0"]
    assert results["p1"]["A"] == {"val_acc": 0.02, "best_val_acc": 0.02}
    assert results["p1"]["E"]["val_acc"] == pytest.approx(0.42)
    assert results["byol"] == {"knn_first": 0.1, "knn_last": pytest.approx(0.3)}  # SPEC §8: no view_gap here
    assert results["tsne"] == {"first": {"silhouette": -0.2, "knn_acc": 0.3},
                               "last": {"silhouette": 0.1, "knn_acc": 0.5}}
    assert results["p2"]["fcn32s"]["miou"] == 0.35
    assert results["p2"]["deeplabv3"]["iou"] == {c: pytest.approx(0.1 * (i + 1)) for i, c in enumerate(SEG_CLASSES)}
    table = report.read_text()
    for setting, accs in results["p1"].items():  # the same numbers as the A–E table
        assert f"| {setting} | " in table and f" | {accs['val_acc']:.4f} | {accs['best_val_acc']:.4f} | 2 |" in table
    assert [(f["claim"], f["shown"]) for f in results["findings"]] == [
        ("BYOL improves its kNN monitor over its random initialisation", True), ("E beats E0", False),
        ("C beats A", True), ("B beats A", True), ("model B beats model A in mIoU", False),
        ("t-SNE of the last epoch is more clustered than the first", True)]
    assert (results["findings"][1]["ours"] == pytest.approx(0.42)
            and results["findings"][1]["versus"] == pytest.approx(0.52))

    partial = Layout(tmp_path / "partial")  # only BYOL and fine-tuning A ran
    io.append_csv_row(partial.pretrain_byol / "log.csv", {"epoch": 1, "step": 1, "train_loss": 1.0, "knn_acc": 0.2})
    io.append_csv_row(partial.pretrain_byol / "log.csv", {"epoch": 2, "step": 2, "train_loss": 0.9, "knn_acc": 0.15})
    io.append_csv_row(partial.p1_results, {"setting": "A", "arch": "resnet18", "backbone": "none", "val_acc": 0.3,
                                           "best_val_acc": 0.3, "epochs": 2})
    info = fabricated_info(tiny_data)
    info.wall_seconds = None
    report = write_report(partial, tmp_path / "partial_report", info)
    results = json.loads((report.parent / "results.json").read_text())
    assert results == {"preset": "sample", "p1": {"A": {"val_acc": 0.3, "best_val_acc": 0.3}},
                       "byol": {"knn_first": 0.2, "knn_last": 0.15},
                       "findings": [{"claim": "BYOL improves its kNN monitor over its random initialisation",
                                     "shown": False, "ours": 0.15, "versus": 0.2}]}
    text = report.read_text()
    assert ("| BYOL improves its kNN monitor over its random initialisation | **not shown** | 0.1500 | 0.2000 "
            "| -0.0500 |" in text)
    assert "E beats E0" not in text and "| E0 |" not in text and "mIoU |" not in text.split("## Problem 1")[0]
    assert not [p for p in report.parent.iterdir() if p.name.startswith(".")]


def _namespace(preset: str, data_root: Path, **kw) -> argparse.Namespace:
    defaults = dict(preset=preset, data_root=str(data_root), device="cpu", seed=0, sam_checkpoint=None,
                    sam_model_type=None)
    return argparse.Namespace(**{**defaults, **kw})


def test_plan_uses_the_given_backbone_only_when_it_fits(tmp_path):
    layout = Layout(tmp_path / "runs")
    (tmp_path / "data" / "p1_data").mkdir(parents=True)
    (tmp_path / "data" / "p1_data" / "pretrain_model_SL.pt").write_bytes(b"")
    full = reproduce.plan(_namespace("full", tmp_path / "data", sam_checkpoint="sam.pth"), layout)
    names = [s.name for s in full]
    assert "pre-train supervised" not in names and "sample data" not in names and names[-1] == "Segment Anything"
    b = next(s for s in full if s.name == "fine-tune B")
    assert str(tmp_path / "data" / "p1_data" / "pretrain_model_SL.pt") in b.argv
    sample = reproduce.plan(_namespace("sample", tmp_path / "data"), layout)  # resnet18: the resnet50 file does not fit
    names = [s.name for s in sample]
    assert names[:3] == ["sample data", "pre-train BYOL", "pre-train supervised"]
    assert ([n for n in names if n.startswith("fine-tune")]
            == [f"fine-tune {s}" for s in ("A", "B", "C", "D", "E", "E0")])
    assert {"t-SNE", "train FCN32s", "train DeepLabV3", "hw1_2.sh deeplabv3", "mean_iou fcn32s"} <= set(names)
    infer = next(s for s in sample if s.name == "hw1_2.sh deeplabv3")
    assert infer.env["P2_CHECKPOINT"].endswith("p2_deeplabv3/best.pt") and infer.command().startswith("P2_CHECKPOINT=")


def test_stages_are_skipped_once_done_and_a_failure_stops_with_one_line(tmp_path, monkeypatch, capsys):
    runs, flag = tmp_path / "runs", tmp_path / "fail"

    def fake_plan(args, layout):
        code = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); "
                "sys.exit(3) if pathlib.Path(sys.argv[2]).exists() else p.write_text('x')")
        return [reproduce.Stage(f"stage {i}", [sys.executable, "-c", code, str(runs / f"out{i}"),
                                               str(flag) if i == 1 else "-"],
                                [runs / f"out{i}"], needs=["stage 0"] if i == 2 else []) for i in range(3)]

    monkeypatch.setattr(reproduce, "plan", fake_plan)
    monkeypatch.setattr(reproduce, "write_report", lambda layout, report, info: Path(report) / "REPORT.md")
    argv = ["--preset", "tiny", "--runs", str(runs), "--data-root", str(tmp_path / "data")]
    flag.write_text("")
    with pytest.raises(SystemExit) as exit_:
        reproduce.run_main(reproduce.main)(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert (len([line for line in err.splitlines() if line.startswith("error:")]) == 1
            and "stage 'stage 1' failed (exit 3" in err)
    records = json.loads((runs / "stages.json").read_text())
    assert records["stage 0"]["status"] == "done" and records["stage 1"]["status"].startswith("failed")
    flag.unlink()
    reproduce.main(argv)  # continues: stage 0 is skipped, 1 and 2 run
    out = capsys.readouterr().out
    assert "stage 0: done before, skipped" in out and "[2/3] stage 1: done" in out and "[3/3] stage 2: done" in out
    reproduce.main(argv)
    assert capsys.readouterr().out.count("done before, skipped") == 3
    (runs / "out0").unlink()  # stage 0 runs again, so stage 2, which reads its output, does too; stage 1 does not
    reproduce.main(argv)
    out = capsys.readouterr().out
    assert "[1/3] stage 0: done" in out and "stage 1: done before, skipped" in out and "[3/3] stage 2: done" in out
    reproduce.main(argv + ["--force"])
    assert "done before" not in capsys.readouterr().out


@pytest.mark.skipif(os.environ.get("HW1_SLOW_TESTS") != "1", reason="minutes on 2 CPU cores; HW1_SLOW_TESTS=1 runs it")
def test_tiny_preset_end_to_end(tmp_path):
    reproduce.main(["--preset", "tiny", "--runs", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data"),
                    "--report", str(tmp_path / "report"), "--device", "cpu", "--in-process"])
    text = check_report(tmp_path / "report" / "REPORT.md")
    assert re.search(r"\| C \| ours, BYOL, no labels \| full model \| 0\.5960 \| \d\.\d{4} \|", text)


def test_a_stopped_training_stage_resumes_and_a_changed_one_starts_afresh(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    run_dir, seen = runs / "train", tmp_path / "argv.txt"
    code = ("import pathlib, sys; d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True); "
            "(d / 'last.pt').write_text('x'); pathlib.Path(sys.argv[2]).write_text(' '.join(sys.argv[3:]))")
    lr = ["1e-3"]
    monkeypatch.setattr(reproduce, "plan", lambda args, layout: [reproduce.Stage(
        "train", [sys.executable, "-c", code, str(run_dir), str(seen), "--lr", lr[0]], [run_dir / "last.pt"],
        run_dir=run_dir)])
    monkeypatch.setattr(reproduce, "write_report", lambda layout, report, info: Path(report) / "REPORT.md")
    argv = ["--preset", "tiny", "--runs", str(runs), "--data-root", str(tmp_path / "data")]
    stage = reproduce.plan(None, None)[0]
    run_dir.mkdir(parents=True)
    (run_dir / "last.pt").write_text("stopped")  # as a killed run leaves it
    io.write_json(runs / "stages.json", {"train": {"command": stage.command(), "status": "running"}})
    reproduce.main(argv)
    assert seen.read_text() == "--lr 1e-3 --resume"
    (run_dir / "stale").write_text("")
    lr[0] = "1e-2"
    reproduce.main(argv)
    assert seen.read_text() == "--lr 1e-2" and not (run_dir / "stale").exists()


def test_sample_findings_say_whether_a_difference_is_beyond_the_seed_to_seed_spread():
    """C − A moved by 0.097 between two sample runs: +0.04 is not settled; B − A's +0.15 is."""
    from hw1.report import findings

    results = {"p1": {"A": {"val_acc": 0.29}, "B": {"val_acc": 0.44}, "C": {"val_acc": 0.33}}}
    rows = [line for line in findings.markdown(findings.check(results), "sample") if line.startswith("| ")]
    assert rows[0].endswith(" settled |")
    by_claim = {r.split(" | ")[0][2:]: r for r in rows[1:]}
    assert by_claim["C beats A"].endswith("| no: inside ±0.097 |") and by_claim["B beats A"].endswith("| yes |")
    assert all("settled" not in line for line in findings.markdown(findings.check(results), "full"))


def test_fashion_findings_spreads_cover_seeds_0_to_3():
    """Seed 3 of the fashion preset (issue 34's clean clone): C − A +0.042 and E − E0 +0.065 lie outside seeds 0–2's
    ranges, so over seeds 0–3 neither is settled; B − A's +0.089 still is."""
    from hw1.report import findings

    results = {"p1": {"A": {"val_acc": 0.692}, "B": {"val_acc": 0.781}, "C": {"val_acc": 0.734},
                      "E": {"val_acc": 0.652}, "E0": {"val_acc": 0.587}},
               "byol": {"knn_first": 0.684, "knn_last": 0.637}}
    rows = [line for line in findings.markdown(findings.check(results), "fashion") if line.startswith("| ")]
    by_claim = {r.split(" | ")[0][2:]: r for r in rows[1:]}
    assert by_claim["C beats A"].endswith("| no: inside ±0.071 |")
    assert by_claim["E beats E0"].endswith("| no: inside ±0.076 |")
    assert by_claim["B beats A"].endswith("| yes |")
    assert by_claim["BYOL improves its kNN monitor over its random initialisation"].endswith("| no: inside ±0.101 |")
