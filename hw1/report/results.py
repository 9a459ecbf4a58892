"""What the report reads from a reproduce.py runs folder: where each stage writes, and the numbers
its logs, results CSVs, mean_iou.py's output and t-SNE scores hold (results.json, SPEC §8).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import io
from ..p1.finetune_recipe import RECIPES
from ..p1.settings import SETTINGS
from . import findings

P2_REFERENCE = {"fcn32s": ("A: VGG16-FCN32s", 0.7008), "deeplabv3": ("B: DeepLabV3-ResNet101, focal loss", 0.7597)}
SEG_CLASSES = ("urban", "agriculture", "rangeland", "forest", "water", "barren")


@dataclass
class Layout:
    """Where each stage of reproduce.py writes, under one runs folder; a fine-tuning recipe other than the seed's
    (`--recipe`) has its own fine-tuning and t-SNE folders beside the seed's, sharing the pre-training, and the seed's
    folders for the settings it fine-tunes with the seed's flags (`shared`, from presets.shared_with_seed)."""

    runs: Path
    recipe: str = "seed"
    shared: dict[str, tuple[str, ...]] = field(default_factory=dict)  # recipe → settings whose run is the seed's

    def __post_init__(self) -> None:
        self.runs = Path(self.runs)

    def run_recipe(self, setting: str, recipe: str | None = None) -> str:
        """The recipe whose run a setting under `recipe` (default the layout's) reads: the seed's where shared."""
        recipe = recipe or self.recipe
        return "seed" if setting in self.shared.get(recipe, ()) else recipe

    @property
    def pretrain_byol(self) -> Path:
        return self.runs / "pretrain_byol"

    @property
    def pretrain_supervised(self) -> Path:
        return self.runs / "pretrain_supervised"

    def finetune(self, setting: str, recipe: str | None = None) -> Path:
        return self.runs / f"finetune_{setting}{_suffix(self.run_recipe(setting, recipe))}"

    @property
    def p1_results(self) -> Path:
        return self.runs / "p1_results.csv"

    @property
    def tsne(self) -> Path:  # the t-SNE of C: the seed's where C is shared
        return self.runs / f"tsne{_suffix(self.run_recipe('C'))}"

    def seg(self, model: str) -> Path:
        return self.runs / f"p2_{model}"

    def pred(self, model: str) -> Path:
        return self.runs / f"pred_{model}"

    def miou(self, model: str) -> Path:
        return self.runs / f"miou_{model}.txt"

    @property
    def p2_results(self) -> Path:
        return self.runs / "p2_results.csv"

    def model_tree(self, name: str) -> Path:
        return self.runs / "models" / name / "model.txt"

    @property
    def sam(self) -> Path:
        return self.runs / "sam"

    @property
    def logs(self) -> Path:
        return self.runs / "logs"

    @property
    def stages(self) -> Path:
        return self.runs / "stages.json"


def _suffix(recipe: str) -> str:
    return "" if recipe == "seed" else f"_{recipe}"


def csv_rows(path: Path) -> list[dict]:
    """The rows of a CSV file, none when it is missing."""
    return io.read_csv_rows(path) if path.is_file() else []


def to_float(v: object) -> float:
    """A CSV cell as a number (NaN when empty or not a number)."""
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def p1_accuracies(layout: Layout, recipe: str | None = None) -> dict[str, dict]:
    """setting → {final, best, epochs} for a fine-tuning recipe (default the layout's), the seed's run where shared:
    the latest row of p1_results.csv, else the fine-tuning log."""
    recipe = recipe or layout.recipe
    found: dict[str, dict] = {}
    for row in csv_rows(layout.p1_results):
        if (row.get("recipe") or "seed") != layout.run_recipe(row["setting"], recipe):
            continue
        found[row["setting"]] = {"final": to_float(row.get("val_acc")), "best": to_float(row.get("best_val_acc")),
                                 "epochs": row.get("epochs", ""), "backbone": row.get("backbone", "")}
    for setting in SETTINGS:
        log = csv_rows(layout.finetune(setting, recipe) / "log.csv")
        if setting not in found and log:
            accs = [to_float(r.get("val_acc")) for r in log]
            found[setting] = {"final": accs[-1],
                              "best": np.nanmax(accs) if not all(map(math.isnan, accs)) else math.nan,
                              "epochs": log[-1].get("epoch", ""), "backbone": ""}
    return found


def other_recipes(layout: Layout) -> dict[str, dict[str, dict]]:
    """Each other recipe that has a run of its own in this runs folder (not only runs it shares with the layout's
    recipe) → its accuracies (p1_accuracies)."""
    found = {}
    for recipe in RECIPES:
        accs = p1_accuracies(layout, recipe) if recipe != layout.recipe else {}
        if any(layout.run_recipe(s, recipe) != layout.run_recipe(s) for s in accs):
            found[recipe] = accs
    return found


def byol_monitor(layout: Layout, column: str = "knn_acc") -> tuple[float, float] | None:
    """A BYOL monitor column (knn_acc, view_gap) at its first and last evaluation (None without two)."""
    values = [v for v in (to_float(r.get(column)) for r in csv_rows(layout.pretrain_byol / "log.csv"))
              if not math.isnan(v)]
    return (values[0], values[-1]) if len(values) >= 2 else None


def parse_mean_iou(path: Path) -> tuple[list[float], float] | None:
    """mean_iou.py's stdout → (per-class IoU, mIoU), or None when the file is missing."""
    if not path.is_file():
        return None
    text = path.read_text()
    ious = {int(i): float(v) for i, v in re.findall(r"class #(\d+)\s*:\s*([-+0-9.naNinf]+)", text)}
    mean = re.search(r"mean_iou:\s*([-+0-9.naNinf]+)", text)
    if not ious or not mean:
        return None
    return [ious.get(i, math.nan) for i in range(len(SEG_CLASSES))], float(mean.group(1))


def seg_arch(log_csv: Path, results: Path) -> str:
    """The segmentation arch of a run, from its row in the P2 results file (matched by folder)."""
    for row in reversed(csv_rows(results)):
        if Path(row.get("out", "")).resolve() == log_csv.parent.resolve():
            return row.get("arch", "")
    return ""


def parameter_counts(model_txt: Path) -> tuple[int, int] | None:
    """(total, trainable) from the last line engine.describe_model writes."""
    if not model_txt.is_file():
        return None
    m = re.search(r"parameters: ([\d,]+) total, ([\d,]+) trainable", model_txt.read_text())
    return (int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))) if m else None


def model_summary(model_txt: Path) -> str:
    """The per-part parameter table at the end of a model.txt (after the module tree)."""
    text = model_txt.read_text().rstrip("\n").split("\n")
    start = max(i for i, line in enumerate(text) if line.startswith("module "))
    return "\n".join(text[start:])


def tsne_scores(layout: Layout) -> dict | None:
    """p1_tsne.py's tsne_scores.json, or None when the t-SNE stage did not run."""
    path = layout.tsne / "tsne_scores.json"
    return json.loads(path.read_text()) if path.is_file() else None


def stage_records(layout: Layout) -> dict[str, dict]:
    """reproduce.py's stages.json: stage name → its command, status and times."""
    return json.loads(layout.stages.read_text()) if layout.stages.is_file() else {}


def collect_results(layout: Layout, preset: str, wall_seconds: float | None) -> dict:
    """results.json (SPEC §8): the numbers of the report's tables and its findings; stages that did not run are
    absent."""
    results: dict = {"preset": preset, **({"recipe": layout.recipe} if layout.recipe != "seed" else {})}
    if wall_seconds is not None:
        results["wall_s"] = round(wall_seconds, 1)
    # "p1": the run's recipe (the findings judge it); "p1_<recipe>": another that ran here (with the runs it shares)
    for recipe, accs in {layout.recipe: p1_accuracies(layout), **other_recipes(layout)}.items():
        p1 = {s: {"val_acc": a["final"], "best_val_acc": a["best"]} for s, a in accs.items()
              if s in SETTINGS and not math.isnan(a["final"])}
        if p1:
            results["p1" if recipe == layout.recipe else f"p1_{recipe}"] = {s: p1[s] for s in SETTINGS if s in p1}
    if (knn := byol_monitor(layout)):
        # SPEC §8's keys only (view_gap: the report and log.csv)
        results["byol"] = {"knn_first": knn[0], "knn_last": knn[1]}
    if (scores := tsne_scores(layout)) and len(checkpoints := scores["checkpoints"]) >= 2:
        results["tsne"] = {k: {"silhouette": c["silhouette_2d"], "knn_acc": c["knn_acc"]}
                           for k, c in (("first", checkpoints[0]), ("last", checkpoints[-1]))}
    p2 = {}
    for model in P2_REFERENCE:
        if (parsed := parse_mean_iou(layout.miou(model))):
            ious, miou = parsed
            p2[model] = {"miou": miou, "iou": {c: None if math.isnan(v) else v for c, v in zip(SEG_CLASSES, ious)}}
    if p2:
        results["p2"] = p2
    results["findings"] = findings.check(results)
    return results
