"""Turn a reproduce.py runs folder into report/REPORT.md: tables beside the reference, figures as PNGs.

Every number comes from files the stages wrote (logs, results CSVs, mean_iou.py's output, t-SNE
scores; read by hw1/report/results.py); every figure is written or copied into the report folder
(hw1/report/figures.py), so its links are relative. One function per section of the report.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import io
from ..p1.finetune_recipe import RECIPE_NOTES
from ..p1.settings import SETTINGS
from . import findings
from .figures import Figures, class_montage, compare_runs, progress_figure
from .results import (
    P2_REFERENCE,
    SEG_CLASSES,
    Layout,
    byol_monitor,
    collect_results,
    model_summary,
    other_recipes,
    p1_accuracies,
    parameter_counts,
    parse_mean_iou,
    seg_arch,
    stage_records,
    tsne_scores,
)


@dataclass
class ReportInfo:
    """What reproduce.py knows that the run folders do not: the preset and how it was run."""

    preset: str
    command: str
    data_root: str
    description: str                       # one paragraph: what this preset runs
    sample_data: bool                      # numbers are on data of ours (synthetic, or Fashion-MNIST), not the course's
    data_note: str = ""                    # what that data is, when not the synthetic sample (the report's warning)
    classes_note: str = ""                 # the caption of its class montage, likewise
    machine: str = ""
    wall_seconds: float | None = None
    ran_now: list[str] = field(default_factory=list)       # stages this invocation ran (the others were done)
    model_names: dict[str, str] = field(default_factory=dict)  # tree name → what it is


def _fmt(v: float, digits: int = 4) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def _figure_list(heading: str, figs: list[tuple[str, str]], intro: str = "") -> list[str]:
    """A section of titled figures (nothing when there are none)."""
    if not figs:
        return []
    return [heading, *([intro] if intro else []), "\n\n".join(f"**{t}**\n\n![{t}]({link})" for t, link in figs) + "\n"]


def header(layout: Layout, info: ReportInfo, stages: dict[str, dict]) -> list[str]:
    """Title, the sample-data warning, the preset's description and how it was run."""
    md = [f"# HW1 report: `python reproduce.py --preset {info.preset}`\n"]
    if info.sample_data:
        data = info.data_note or ("the small synthetic data set that `hw1/samples/synthetic.py` writes in the course "
                                  "layout")
        md.append(f"> **Sample-data numbers, not the course's.** This run used {data}, with the small models and few "
                  "steps below, on the machine below. The *reference* columns are one student's report on the course "
                  "data (SPEC §5); they are the bar for `--preset full` on a GPU with the course data, "
                  "not for this run.\n")
    md.append(info.description + "\n")
    facts = [f"command: `{info.command}`", f"data: `{info.data_root}`", f"runs: `{layout.runs}`"]
    if info.machine:
        facts.append(f"machine: {info.machine}")
    if info.wall_seconds is not None:
        skipped = len(stages) - len(info.ran_now)
        facts.append(f"wall time of this invocation: {info.wall_seconds / 60:.1f} min, {len(info.ran_now)} of "
                     f"{len(stages)} stages run" + (f" ({skipped} were done before and skipped)" if skipped else ""))
    md.append("\n".join(f"- {f}" for f in facts) + "\n")
    return md


def sample_classes(info: ReportInfo, figs: Figures) -> list[str]:
    """What the sample data's Office-Home classes look like (sample runs only: the course data is not ours to show)."""
    office = Path(info.data_root) / "p1_data" / "office"
    if not info.sample_data or not class_montage(figs.dir / "sample_office_classes.png", office):
        return []
    return ["### The sample data's classes\n",
            info.classes_note or ("One Office-Home-layout training image per class, classes 0–64 left to right, top "
                                  "to bottom. A class is a shape and a fill pattern; colour, position, size and tilt "
                                  "are drawn per image and say nothing of the class.") + "\n",
            "![sample Office-Home classes](sample_office_classes.png)\n"]


def p1_table(layout: Layout) -> list[str]:
    """Problem 1's validation accuracies beside the reference, and the backbones used; a column for each other
    fine-tuning recipe that ran in the same runs folder."""
    accs, others = p1_accuracies(layout), other_recipes(layout)
    md = ["## Problem 1: BYOL pre-training and Office-Home fine-tuning\n",
          "### Validation accuracy, settings A–E and the control E0\n",
          f"Fine-tuning recipe: **{layout.recipe}** ({RECIPE_NOTES[layout.recipe]})"
          + "".join(f"; the {r} recipe's final accuracies, from the same backbones, in their own column"
                    for r in others) + "." + shared_note(layout, {layout.recipe: accs, **others}) + "\n",
          "| setting | pre-training (Mini-ImageNet) | fine-tuning | reference | ours (final epoch) | ours (best epoch) "
          "| epochs |" + "".join(f" {r} recipe (final) |" for r in others),
          "|---|---|---|---|---|---|---|" + "---|" * len(others)]
    for s, setting in SETTINGS.items():
        pre, ft, ref, a = setting.pretraining, setting.fine_tuning, setting.reference, accs.get(s, {})
        if ref is None and not a:  # the control has no reference number: without a run it has no row either
            continue
        if (setting.backbone == "supervised" and a.get("backbone")
                and not a["backbone"].endswith("pretrain_model_SL.pt")):
            pre = "supervised (ours, Mini-ImageNet labels: the given backbone was absent)"
        reference = "none (control)" if ref is None else f"{ref:.4f}"
        md.append(f"| {s} | {pre} | {ft} | {reference} | {_fmt(a.get('final', math.nan))} | "
                  f"{_fmt(a.get('best', math.nan))} | {a.get('epochs', '—')} |"
                  + "".join(f" {_fmt(o.get(s, {}).get('final', math.nan))}"
                            + (" (shared)" if layout.run_recipe(s, r) == layout.run_recipe(s) and s in o else "") + " |"
                            for r, o in others.items()))
    backbones = {s: a["backbone"] for s, a in accs.items() if a.get("backbone") not in ("", "none", None)}
    if backbones:
        md.append("\nBackbones used: " + "; ".join(f"{s}: `{b}`" for s, b in sorted(backbones.items())) + ".")
    if "E0" in accs:
        md.append("\nE0 is a control, not in the reference report: the linear probe of D/E on a frozen, randomly "
                  "initialised backbone. E − E0 is what BYOL's features add over random ones.")
    if (gap := byol_monitor(layout, "view_gap")):
        md.append(f"\nWhat BYOL trains for, on its backbone: the cosine of two BYOL views of one Office-Home val image "
                  f"minus that of views of different images (`view_gap` in its log) went from {gap[0]:.4f} at the "
                  f"random initialisation (step 0) to {gap[1]:.4f} at the last evaluation. "
                  "A rise says the objective is being learned; "
                  f"whether that ranks classes is what the kNN monitor and E − E0 say.")
    md.append("")
    return md


def shared_note(layout: Layout, accs: dict[str, dict[str, dict]]) -> str:
    """Which settings (and the t-SNE of C) a recipe other than the seed's reads from the seed's runs ("" if none)."""
    notes = []
    for recipe, found in accs.items():
        shared = [s for s in SETTINGS if s in found and recipe != "seed" and layout.run_recipe(s, recipe) == "seed"]
        if shared:
            what = ", ".join(shared) + (" and the t-SNE of C" if "C" in shared else "")
            notes.append(f" The {recipe} recipe's {what} are the seed recipe's runs, shared: it fine-tunes "
                         f"{'this setting' if len(shared) == 1 else 'these settings'} with the seed's flags, so "
                         "`reproduce.py` trains them once.")
    return "".join(notes)


def p1_curves(layout: Layout, figs: Figures) -> list[str]:
    """Pre-training curves, the fine-tuning runs compared, and each fine-tuning run's curves."""
    p1_figs = []
    for name, log, title in (("byol", layout.pretrain_byol / "log.csv",
                              "BYOL pre-training (kNN acc: Office-Home train→val)"),
                             ("supervised", layout.pretrain_supervised / "log.csv",
                              "supervised pre-training (Mini-ImageNet labels)")):
        if (link := figs.curves(log, f"curves_pretrain_{name}.png", title)):
            p1_figs.append((title, link))
    if compare_runs(figs.dir / "curves_finetune_val_acc.png",
                    {s: layout.finetune(s) / "log.csv" for s in SETTINGS}, "val_acc", "validation accuracy"):
        p1_figs.append(("fine-tuning A–E and E0, validation accuracy per epoch", "curves_finetune_val_acc.png"))
    for s in SETTINGS:
        if (link := figs.curves(layout.finetune(s) / "log.csv", f"curves_finetune_{s}.png",
                                f"fine-tuning, setting {s}")):
            p1_figs.append((f"fine-tuning {s}", link))
    return _figure_list("### Training curves\n", p1_figs)


def tsne(layout: Layout, figs: Figures) -> list[str]:
    """The t-SNE maps of setting C's first and last checkpoints, and how clustered each is."""
    if (scores := tsne_scores(layout)) is None:
        return []
    shared = layout.run_recipe("C") != layout.recipe
    md = ["### t-SNE of the second-last layer (setting C, first vs last epoch)\n",
          *([f"The seed recipe's run of C, which the {layout.recipe} recipe shares.\n"] if shared else []),
          f"Pooled features of the whole Office-Home train set, PCA to {scores['pca_dims']} dims, then t-SNE "
          f"(perplexity {scores['perplexity']}); colours are the 65 classes. How clustered each map is, measured: "
          f"the silhouette score of the class labels in the 2-D map, and cosine kNN accuracy (k={scores['knn_k']}) "
          "in feature space, train → val.\n",
          "| checkpoint | epoch | feature dim | silhouette (2-D map) | kNN accuracy |",
          "|---|---|---|---|---|"]
    for c in scores["checkpoints"]:
        md.append(f"| `{c['name']}` | {c['epoch']} | {c['feature_dim']} | "
                  f"{_fmt(c['silhouette_2d'])} | {_fmt(c['knn_acc'])} |")
    if len(scores["checkpoints"]) >= 2:
        first, last = scores["checkpoints"][0], scores["checkpoints"][-1]
        d_sil, d_knn = last["silhouette_2d"] - first["silhouette_2d"], last["knn_acc"] - first["knn_acc"]
        md.append(f"\nFrom `{first['name']}` to `{last['name']}` the silhouette changes by {d_sil:+.4f} and the kNN "
                  f"accuracy by {d_knn:+.4f}: the last-epoch features are "
                  f"{'more' if d_sil > 0 else 'not more'} clustered by class in the map.")
    side = layout.tsne / scores["side_by_side"]
    if side.is_file():
        md.append(f"\n![t-SNE, side by side]({figs.copy(side, 'tsne_side_by_side.png')})\n")
    return md


def p2_labels(layout: Layout) -> dict[str, str]:
    """Each P2 model's name in the reference, with the arch this run trained when it differs."""
    labels = {}
    for model, (name, _) in P2_REFERENCE.items():
        arch = seg_arch(layout.seg(model) / "log.csv", layout.p2_results)
        labels[model] = name if not arch or arch in name.lower().replace("-", "_") else f"{name} (this run: {arch})"
    return labels


def p2_table(layout: Layout, labels: dict[str, str]) -> list[str]:
    """Problem 2's validation mIoU and per-class IoU beside the reference mIoU."""
    md = ["## Problem 2: semantic segmentation of satellite images\n",
          "### Validation mIoU (`hw1_2.sh` masks scored by `mean_iou.py`)\n",
          "| model | reference mIoU | ours mIoU | " + " | ".join(SEG_CLASSES) + " |",
          "|---|---|---|" + "---|" * len(SEG_CLASSES)]
    for model, (_, ref) in P2_REFERENCE.items():
        parsed = parse_mean_iou(layout.miou(model))
        ious, miou = parsed if parsed else ([math.nan] * len(SEG_CLASSES), math.nan)
        md.append(f"| {labels[model]} | {ref:.4f} | {_fmt(miou)} | " + " | ".join(_fmt(v) for v in ious) + " |")
    md.append("\nPer-class IoU by the course's rule (SPEC §4): all validation masks pooled, Unknown not averaged; "
              "the reference report gives only the mean.\n")
    return md


def p2_figures(layout: Layout, figs: Figures, labels: dict[str, str], data_root: str) -> list[str]:
    """Each segmentation run's mIoU curve, and its masks at the early, middle and final epochs."""
    curves, progress = [], []
    for model, label in labels.items():
        if (link := figs.curves(layout.seg(model) / "log.csv", f"curves_p2_{model}.png", f"model {label}",
                                metrics=["miou"])):
            curves.append((f"model {label}", link))
    for model, label in labels.items():
        png = figs.dir / f"progress_{model}.png"
        if progress_figure(png, layout.seg(model) / "snapshots", Path(data_root) / "p2_data" / "validation"):
            progress.append((f"model {label}", png.name))
    return [*_figure_list("### Training curves\n", curves),
            *_figure_list("### Mask progress: early, middle and final epochs\n", progress,
                          "Predictions for validation images 0013, 0062 and 0104 at the first, middle and "
                          "last epoch.\n")]


def sam(layout: Layout, figs: Figures) -> list[str]:
    """Segment Anything's masks per image, or how to run it."""
    md = ["### Segment Anything\n"]
    sam_json = layout.sam / "sam_masks.json"
    if not sam_json.is_file():
        return md + ["Not run: pass `--sam-checkpoint FILE` (e.g. "
                     "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth, "
                     "`--sam-model-type vit_b`).\n"]
    found = json.loads(sam_json.read_text())
    md += [f"`SamAutomaticMaskGenerator` ({found['points_per_side']} points per side, predicted-IoU threshold "
           f"{found['pred_iou_thresh']}, stability threshold {found['stability_score_thresh']}), "
           f"model `{found['model']}`.\n",
           "| image | masks | mean predicted IoU | mean stability | seconds |",
           "|---|---|---|---|---|"]
    for im in found["images"]:
        ms = im["masks"]
        mean = lambda k: float(np.mean([m[k] for m in ms])) if ms else math.nan  # noqa: E731
        md.append(f"| `{Path(im['image']).name}` | {len(ms)} | {_fmt(mean('predicted_iou'), 3)} | "
                  f"{_fmt(mean('stability_score'), 3)} | {im['seconds']} |")
    md.append("")
    for im in found["images"]:
        if (layout.sam / im["overlay"]).is_file():
            link = figs.copy(layout.sam / im["overlay"], f"sam_{im['overlay']}")
            md.append(f"![SAM masks of {Path(im['image']).name}]({link})\n")
    return md


def architectures(layout: Layout, figs: Figures, model_names: dict[str, str]) -> list[str]:
    """The reference models' parameter counts and module trees (from `--print-model`)."""
    trees = {n: layout.model_tree(n) for n in model_names if layout.model_tree(n).is_file()}
    if not trees:
        return []
    md = ["## Architectures (`--print-model`)\n", "| model | parameters | trainable | module tree |",
          "|---|---|---|---|"]
    for n, path in trees.items():
        counts = parameter_counts(path) or (0, 0)
        link = figs.copy(path, f"model_{n}.txt")
        md.append(f"| {model_names[n]} | {counts[0]:,} | {counts[1]:,} | [{link}]({link}) |")
    md.append("")
    for n, path in trees.items():
        md.append(f"**{model_names[n]}**, parameters per part:\n\n```\n{model_summary(path)}\n```\n")
    return md


def commands(layout: Layout, stages: dict[str, dict]) -> list[str]:
    """Every stage's times and status, then its command, in the order reproduce.py ran them."""
    if not stages:
        return []
    md = ["## Commands\n",
          "Every stage, in order, as `reproduce.py` ran it (logs in "
          f"`{layout.logs}`); a stage whose outputs exist is skipped on a re-run.\n",
          "| stage | wall seconds | CPU seconds | status |",
          "|---|---|---|---|"]
    for name, s in stages.items():
        md.append(f"| {name} | {s.get('seconds', '—')} | {s.get('cpu_seconds', '—')} | {s.get('status', '—')} |")
    wall, cpu = (sum(s.get(k, 0) for s in stages.values()) for k in ("seconds", "cpu_seconds"))
    md.append(f"| total | {wall:.0f} | {cpu:.0f} | |")
    md.append("\nWall seconds grow with the load of other programs on the machine (its load average is above); "
              "CPU seconds (user + system, all threads) grow less, but also some.")
    md.append("\n```bash")
    md += [f"# {name}\n{s['command']}" for name, s in stages.items()]
    md.append("```\n")
    return md


def write_report(layout: Layout, report_dir: str | os.PathLike, info: ReportInfo) -> Path:
    """Write report_dir/REPORT.md (atomically), its PNGs and results.json from the runs in `layout`."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    figs, stages = Figures(report_dir), stage_records(layout)
    results = collect_results(layout, info.preset, info.wall_seconds)
    labels = p2_labels(layout)
    md = [*header(layout, info, stages), *findings.markdown(results["findings"], results.get("preset")),
          *p1_table(layout), *sample_classes(info, figs), *p1_curves(layout, figs), *tsne(layout, figs),
          *p2_table(layout, labels), *p2_figures(layout, figs, labels, info.data_root), *sam(layout, figs),
          *architectures(layout, figs, info.model_names), *commands(layout, stages)]
    io.write_json(report_dir / "results.json", results)
    path = report_dir / "REPORT.md"
    io.write_text(path, "\n".join(md).rstrip() + "\n")
    return path


def image_links(markdown: str) -> list[str]:
    """Targets of `![alt](target)` image links."""
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", markdown)
