"""reproduce.py --recipe strong shares the seed's full fine-tuning (A–C and C's t-SNE): strong fine-tunes them with the
seed's flags, so they run once, under the seed's names and folders, and the report's columns both read them."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import reproduce
from hw1 import io
from hw1.p1 import finetune_recipe
from hw1.p1.settings import SETTINGS
from hw1.report.markdown import Layout, write_report
from hw1.report.presets import PRESETS, finetune_flags, shared_with_seed


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_strong_fine_tunes_a_to_c_with_the_seeds_flags_in_every_preset(preset: str) -> None:
    flags = PRESETS[preset]
    assert shared_with_seed(flags) == {"strong": ("A", "B", "C")}
    assert finetune_flags(flags, False, "strong", pretrained=False) == finetune_flags(flags, False, "seed")
    assert "--recipe" in finetune_flags(flags, True, "strong")  # the probes' MLP head is strong's own


def test_a_setting_is_shared_only_where_the_run_would_be_the_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Preset flags of the recipe's own for full fine-tuning, or a piece full fine-tuning takes, end the sharing; a
    lower backbone rate leaves A (no pre-trained backbone) shared."""
    assert shared_with_seed({**PRESETS["fashion"], "finetune_strong": ["--epochs", "16"]}) == {"strong": ()}
    strong = dataclasses.replace(finetune_recipe.RECIPES["strong"], backbone_lr_scale=0.1)
    monkeypatch.setitem(finetune_recipe.RECIPES, "strong", strong)
    assert shared_with_seed(PRESETS["fashion"]) == {"strong": ("A",)}
    monkeypatch.setitem(finetune_recipe.RECIPES, "strong", dataclasses.replace(strong, backbone_lr_scale=1.0,
                                                                               ema_decay=0.99))
    assert shared_with_seed(PRESETS["fashion"]) == {"strong": ()}


def test_strong_alone_runs_the_seeds_a_to_c_once_and_a_seed_run_then_skips_them(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch,
                                                                              capsys: pytest.CaptureFixture,
                                                                              stages_ran: list[str]) -> None:
    """Fake stages (each writes its outputs): strong first runs A–C and the t-SNE under the seed's names; seed then
    runs only its probes; strong again runs nothing."""
    ran = stages_ran
    monkeypatch.setattr(reproduce, "check_inputs", lambda args, preset: None)  # no data to check: nothing reads it
    layouts: list[Layout] = []
    monkeypatch.setattr(reproduce, "write_report",
                        lambda layout, report, info: layouts.append(layout) or Path(report) / "REPORT.md")
    argv = ["--preset", "fashion", "--runs", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data")]

    reproduce.main(argv + ["--recipe", "strong"])
    shared = ["fine-tune A", "fine-tune B", "fine-tune C", "t-SNE"]
    assert all(ran.count(name) == 1 for name in shared), ran
    assert not [n for n in ran if n.startswith(("fine-tune A", "fine-tune B", "fine-tune C", "t-SNE")) and "(" in n]
    assert {"fine-tune D (strong)", "fine-tune E (strong)", "fine-tune E0 (strong)"} <= set(ran)
    assert layouts[-1].finetune("C") == tmp_path / "runs" / "finetune_C" and layouts[-1].tsne.name == "tsne"
    ran.clear()
    reproduce.main(argv)
    assert ran == ["fine-tune D", "fine-tune E", "fine-tune E0"], ran
    ran.clear()
    reproduce.main(argv + ["--recipe", "strong"])
    assert ran == [] and "fine-tune A: done before, skipped" in capsys.readouterr().out


def fabricated(tiny_data: Path, tmp_path: Path, recipe: str) -> Layout:
    """The seed's fabricated runs (A 0.02, B 0.12, C 0.22, D 0.32, E 0.42, E0 0.52) and strong's probes (0.6x)."""
    from test_analysis_report import fabricate_runs

    fabricate_runs(Layout(tmp_path / "runs"), tiny_data)
    io.append_csv_row(tmp_path / "runs" / "p1_results.csv", {"setting": "C", "backbone": "pretrain_byol/backbone.pt",
                                                             "val_acc": 0.22, "best_val_acc": 0.22, "epochs": 2})
    for setting, acc in (("D", 0.61), ("E", 0.62), ("E0", 0.63)):
        io.append_csv_row(tmp_path / "runs" / "p1_results.csv", {"setting": setting, "recipe": "strong",
                                                                 "val_acc": acc, "best_val_acc": acc, "epochs": 2})
    return Layout(tmp_path / "runs", recipe, shared_with_seed(PRESETS["fashion"]))


def test_report_of_strong_reads_the_shared_runs_and_says_so(tiny_data: Path, tmp_path: Path) -> None:
    from test_analysis_report import fabricated_info

    report = write_report(fabricated(tiny_data, tmp_path, "strong"), tmp_path / "report", fabricated_info(tiny_data))
    text = report.read_text()
    assert ("The strong recipe's A, B, C and the t-SNE of C are the seed recipe's runs, shared: it fine-tunes these "
            "settings with the seed's flags, so `reproduce.py` trains them once.") in text
    assert "The seed recipe's run of C, which the strong recipe shares." in text  # the t-SNE section
    rows = {s: next(line for line in text.splitlines() if line.startswith(f"| {s} | ")) for s in SETTINGS}
    assert rows["A"].endswith(" 0.0200 (shared) |") and rows["E"].endswith(" 0.4200 |")  # the seed's column
    assert "C: `pretrain_byol/backbone.pt`" in text  # C's row in p1_results.csv: the seed's
    results = json.loads((report.parent / "results.json").read_text())
    assert results["recipe"] == "strong" and results["p1"]["A"]["val_acc"] == 0.02
    assert results["p1"]["E"]["val_acc"] == 0.62 and results["p1_seed"]["E"]["val_acc"] == 0.42
    assert results["tsne"]["last"]["silhouette"] == 0.1  # the seed's t-SNE of C
    assert any(f["claim"] == "C beats A" for f in results["findings"])


def test_report_of_seed_gives_strong_a_column_with_the_shared_runs_only_when_strong_ran(tiny_data: Path,
                                                                                        tmp_path: Path) -> None:
    from test_analysis_report import fabricate_runs, fabricated_info

    alone = Layout(tmp_path / "alone", "seed", shared_with_seed(PRESETS["fashion"]))
    fabricate_runs(alone, tiny_data)  # strong never ran here: its shared A–C alone are no column
    text = write_report(alone, tmp_path / "report_alone", fabricated_info(tiny_data)).read_text()
    assert "strong recipe (final)" not in text and "shared" not in text
    assert "p1_strong" not in json.loads((tmp_path / "report_alone" / "results.json").read_text())

    report = write_report(fabricated(tiny_data, tmp_path, "seed"), tmp_path / "report", fabricated_info(tiny_data))
    text = report.read_text()
    assert " strong recipe (final) |" in text and "The strong recipe's A, B, C and the t-SNE of C" in text
    rows = {s: next(line for line in text.splitlines() if line.startswith(f"| {s} | ")) for s in SETTINGS}
    assert rows["C"].endswith(" 0.2200 (shared) |") and rows["E"].endswith(" 0.6200 |")
    results = json.loads((report.parent / "results.json").read_text())
    assert results["p1_strong"]["C"]["val_acc"] == 0.22 and results["p1_strong"]["E"]["val_acc"] == 0.62
    assert "recipe" not in results and results["p1"]["E"]["val_acc"] == 0.42
