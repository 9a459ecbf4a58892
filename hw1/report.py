"""Turn a reproduce.py runs folder into report/REPORT.md: tables beside the reference, figures as PNGs.

Every number comes from files the stages wrote (logs, results CSVs, mean_iou.py's output, t-SNE
scores); every figure is written or copied into the report folder, so its links are relative.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import findings, io, viz
from .data import load_rgb

# The reference report (SPEC §5): setting → (pre-training, fine-tuning, validation accuracy).
P1_REFERENCE = {
    "A": ("none", "full model", 0.4877),
    "B": ("supervised (given backbone)", "full model", 0.5714),
    "C": ("ours, BYOL, no labels", "full model", 0.5960),
    "D": ("supervised (given backbone)", "classifier only", 0.2734),
    "E": ("ours, BYOL, no labels", "classifier only", 0.3719),
}
# Every setting the report shows: the reference's five, and the control E0 (no reference number).
P1_SETTINGS = {**P1_REFERENCE, "E0": ("none (random initialisation)", "classifier only", None)}
P2_REFERENCE = {"fcn32s": ("A: VGG16-FCN32s", 0.7008), "deeplabv3": ("B: DeepLabV3-ResNet101, focal loss", 0.7597)}
SEG_CLASSES = ("urban", "agriculture", "rangeland", "forest", "water", "barren")
SNAPSHOT_STEMS = ("0013", "0062", "0104")
PROGRESS_TAGS = ("early", "middle", "final")


@dataclass
class Layout:
    """Where each stage of reproduce.py writes, under one runs folder."""

    runs: Path

    def __post_init__(self) -> None:
        self.runs = Path(self.runs)

    @property
    def pretrain_byol(self) -> Path:
        return self.runs / "pretrain_byol"

    @property
    def pretrain_supervised(self) -> Path:
        return self.runs / "pretrain_supervised"

    def finetune(self, setting: str) -> Path:
        return self.runs / f"finetune_{setting}"

    @property
    def p1_results(self) -> Path:
        return self.runs / "p1_results.csv"

    @property
    def tsne(self) -> Path:
        return self.runs / "tsne"

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


@dataclass
class ReportInfo:
    """What reproduce.py knows that the run folders do not: the preset and how it was run."""

    preset: str
    command: str
    data_root: str
    description: str                       # one paragraph: what this preset runs
    sample_data: bool                      # numbers are on synthetic data, not the course's
    machine: str = ""
    wall_seconds: float | None = None
    ran_now: list[str] = field(default_factory=list)       # stages this invocation ran (the others were done)
    model_names: dict[str, str] = field(default_factory=dict)  # tree name → what it is


# ---------------------------------------------------------------- reading the runs


def _rows(path: Path) -> list[dict]:
    return io.read_csv_rows(path) if path.is_file() else []


def _float(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _fmt(v: float, digits: int = 4) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def p1_accuracies(layout: Layout) -> dict[str, dict]:
    """setting → {final, best, epochs}: the latest row of p1_results.csv, else the fine-tuning log."""
    found: dict[str, dict] = {}
    for row in _rows(layout.p1_results):
        found[row["setting"]] = {"final": _float(row.get("val_acc")), "best": _float(row.get("best_val_acc")),
                                 "epochs": row.get("epochs", ""), "backbone": row.get("backbone", "")}
    for setting in P1_SETTINGS:
        log = _rows(layout.finetune(setting) / "log.csv")
        if setting not in found and log:
            accs = [_float(r.get("val_acc")) for r in log]
            found[setting] = {"final": accs[-1], "best": np.nanmax(accs) if not all(map(math.isnan, accs)) else math.nan,
                              "epochs": log[-1].get("epoch", ""), "backbone": ""}
    return found


def byol_knn(layout: Layout) -> tuple[float, float] | None:
    """The BYOL kNN monitor at its first and last evaluation (None without two evaluations)."""
    accs = [v for v in (_float(r.get("knn_acc")) for r in _rows(layout.pretrain_byol / "log.csv")) if not math.isnan(v)]
    return (accs[0], accs[-1]) if len(accs) >= 2 else None


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


# ---------------------------------------------------------------- figures


class Figures:
    """Writes or copies PNGs into the report folder and returns their relative links."""

    def __init__(self, report_dir: Path) -> None:
        self.dir = report_dir

    def copy(self, src: Path, name: str) -> str:
        with io.atomic_path(self.dir / name) as tmp:
            shutil.copyfile(src, tmp)
        return name

    def curves(self, log_csv: Path, name: str, title: str, metrics: list[str] | None = None) -> str | None:
        if not _rows(log_csv):
            return None
        viz.save_curves(log_csv, self.dir / name, title=title, metrics=metrics)
        return name


def compare_runs(path: Path, logs: dict[str, Path], metric: str, ylabel: str) -> bool:
    """One plot of `metric` per epoch for several runs (e.g. validation accuracy of A–E)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = False
    for name, log in logs.items():
        rows = [r for r in _rows(log) if not math.isnan(_float(r.get(metric)))]
        if rows:
            ax.plot([_float(r["epoch"]) for r in rows], [_float(r[metric]) for r in rows], marker="o", ms=3, label=name)
            drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    viz.save_figure(fig, path)
    return True


def progress_figure(path: Path, snapshots: Path, val_dir: Path) -> bool:
    """Rows = snapshot images; columns = image | ground truth | early | middle | final prediction."""
    from .seg_data import classes_to_rgb, read_mask

    rows, names = [], []
    for stem in SNAPSHOT_STEMS:
        masks = sorted(snapshots.glob(f"{stem}_epoch*_mask.png"))
        if not masks:
            continue
        by_tag: dict[str, Path] = {}
        for m in masks:  # <stem>_epochNNN_<tags>_mask.png, tags like early-middle
            for tag in m.name[:-len("_mask.png")].split("_")[-1].split("-"):
                by_tag[tag] = m
        images = []
        sat, gt = val_dir / f"{stem}_sat.jpg", val_dir / f"{stem}_mask.png"
        images.append(np.asarray(load_rgb(sat)) if sat.is_file() else np.zeros((8, 8, 3), np.uint8))
        images.append(classes_to_rgb(read_mask(gt)) if gt.is_file() else np.zeros((8, 8, 3), np.uint8))
        images += [np.asarray(load_rgb(by_tag[t])) if t in by_tag else np.zeros((8, 8, 3), np.uint8) for t in PROGRESS_TAGS]
        epochs = {t: re.search(r"_epoch(\d+)_", by_tag[t].name).group(1).lstrip("0") for t in by_tag}  # type: ignore[union-attr]
        rows.append(images)
        names.append(stem)
    if not rows:
        return False
    cols = ["image", "ground truth"] + [f"{t} (epoch {epochs.get(t, '?')})" for t in PROGRESS_TAGS]
    viz.save_image_grid(path, rows, names, cols)
    return True


# ---------------------------------------------------------------- the report


def collect_results(layout: Layout, info: ReportInfo) -> dict:
    """results.json (SPEC §8): the numbers of the report's tables and its findings; stages that did not run are absent."""
    results: dict = {"preset": info.preset}
    if info.wall_seconds is not None:
        results["wall_s"] = round(info.wall_seconds, 1)
    p1 = {s: {"val_acc": a["final"], "best_val_acc": a["best"]} for s, a in p1_accuracies(layout).items()
          if s in P1_SETTINGS and not math.isnan(a["final"])}
    if p1:
        results["p1"] = {s: p1[s] for s in P1_SETTINGS if s in p1}
    if (knn := byol_knn(layout)):
        results["byol"] = {"knn_first": knn[0], "knn_last": knn[1]}
    scores_file = layout.tsne / "tsne_scores.json"
    if scores_file.is_file() and len(checkpoints := json.loads(scores_file.read_text())["checkpoints"]) >= 2:
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


def _stage_records(layout: Layout) -> dict[str, dict]:
    return json.loads(layout.stages.read_text()) if layout.stages.is_file() else {}


def write_report(layout: Layout, report_dir: str | os.PathLike, info: ReportInfo) -> Path:
    """Write report_dir/REPORT.md (atomically) and its PNGs from the runs in `layout`."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    figs = Figures(report_dir)
    md: list[str] = []
    add = md.append
    stages = _stage_records(layout)

    add(f"# HW1 report: `python reproduce.py --preset {info.preset}`\n")
    if info.sample_data:
        add("> **Sample-data numbers, not the course's.** This run used the small synthetic data set that "
            "`hw1/sample_data.py` writes in the course layout, with the small models and few steps below, on "
            "the machine below. The *reference* columns are one student's report on the course "
            "data (SPEC §5); they are the bar for `--preset full` on a GPU with the course data, not for this run.\n")
    add(info.description + "\n")
    facts = [f"command: `{info.command}`", f"data: `{info.data_root}`", f"runs: `{layout.runs}`"]
    if info.machine:
        facts.append(f"machine: {info.machine}")
    if info.wall_seconds is not None:
        skipped = len(stages) - len(info.ran_now)
        facts.append(f"wall time of this invocation: {info.wall_seconds / 60:.1f} min, {len(info.ran_now)} of "
                     f"{len(stages)} stages run" + (f" ({skipped} were done before and skipped)" if skipped else ""))
    add("\n".join(f"- {f}" for f in facts) + "\n")
    results = collect_results(layout, info)
    md.extend(findings.markdown(results["findings"]))

    # ------------------------------------------------ Problem 1
    add("## Problem 1: BYOL pre-training and Office-Home fine-tuning\n")
    add("### Validation accuracy, settings A–E and the control E0\n")
    accs = p1_accuracies(layout)
    add("| setting | pre-training (Mini-ImageNet) | fine-tuning | reference | ours (final epoch) | ours (best epoch) | epochs |")
    add("|---|---|---|---|---|---|---|")
    for s, (pre, ft, ref) in P1_SETTINGS.items():
        a = accs.get(s, {})
        if ref is None and not a:  # the control has no reference number: without a run it has no row either
            continue
        if "given" in pre and a.get("backbone") and not a["backbone"].endswith("pretrain_model_SL.pt"):
            pre = "supervised (ours, Mini-ImageNet labels: the given backbone was absent)"
        reference = "none (control)" if ref is None else f"{ref:.4f}"
        add(f"| {s} | {pre} | {ft} | {reference} | {_fmt(a.get('final', math.nan))} | {_fmt(a.get('best', math.nan))} | {a.get('epochs', '—')} |")
    backbones = {s: a["backbone"] for s, a in accs.items() if a.get("backbone") not in ("", "none", None)}
    if backbones:
        add("\nBackbones used: " + "; ".join(f"{s}: `{b}`" for s, b in sorted(backbones.items())) + ".")
    if "E0" in accs:
        add("\nE0 is a control, not in the reference report: the linear probe of D/E on a frozen, randomly "
            "initialised backbone. E − E0 is what BYOL's features add over random ones.")
    add("")
    p1_figs = []
    for name, log, title in (("byol", layout.pretrain_byol / "log.csv", "BYOL pre-training (kNN acc: Office-Home train→val)"),
                             ("supervised", layout.pretrain_supervised / "log.csv", "supervised pre-training (Mini-ImageNet labels)")):
        if (link := figs.curves(log, f"curves_pretrain_{name}.png", title)):
            p1_figs.append((title, link))
    if compare_runs(report_dir / "curves_finetune_val_acc.png",
                    {s: layout.finetune(s) / "log.csv" for s in P1_SETTINGS}, "val_acc", "validation accuracy"):
        p1_figs.append(("fine-tuning A–E and E0, validation accuracy per epoch", "curves_finetune_val_acc.png"))
    for s in P1_SETTINGS:
        if (link := figs.curves(layout.finetune(s) / "log.csv", f"curves_finetune_{s}.png", f"fine-tuning, setting {s}")):
            p1_figs.append((f"fine-tuning {s}", link))
    if p1_figs:
        add("### Training curves\n")
        add("\n\n".join(f"**{t}**\n\n![{t}]({link})" for t, link in p1_figs) + "\n")

    scores_file = layout.tsne / "tsne_scores.json"
    if scores_file.is_file():
        scores = json.loads(scores_file.read_text())
        add("### t-SNE of the second-last layer (setting C, first vs last epoch)\n")
        add(f"Pooled features of the whole Office-Home train set, PCA to {scores['pca_dims']} dims, then t-SNE "
            f"(perplexity {scores['perplexity']}); colours are the 65 classes. How clustered each map is, measured: "
            f"the silhouette score of the class labels in the 2-D map, and cosine kNN accuracy (k={scores['knn_k']}) "
            "in feature space, train → val.\n")
        add("| checkpoint | epoch | feature dim | silhouette (2-D map) | kNN accuracy |")
        add("|---|---|---|---|---|")
        for c in scores["checkpoints"]:
            add(f"| `{c['name']}` | {c['epoch']} | {c['feature_dim']} | {_fmt(c['silhouette_2d'])} | {_fmt(c['knn_acc'])} |")
        if len(scores["checkpoints"]) >= 2:
            first, last = scores["checkpoints"][0], scores["checkpoints"][-1]
            d_sil, d_knn = last["silhouette_2d"] - first["silhouette_2d"], last["knn_acc"] - first["knn_acc"]
            add(f"\nFrom `{first['name']}` to `{last['name']}` the silhouette changes by {d_sil:+.4f} and the kNN "
                f"accuracy by {d_knn:+.4f}: the last-epoch features are "
                f"{'more' if d_sil > 0 else 'not more'} clustered by class in the map.")
        side = layout.tsne / scores["side_by_side"]
        if side.is_file():
            add(f"\n![t-SNE, side by side]({figs.copy(side, 'tsne_side_by_side.png')})\n")

    # ------------------------------------------------ Problem 2
    add("## Problem 2: semantic segmentation of satellite images\n")
    add("### Validation mIoU (`hw1_2.sh` masks scored by `mean_iou.py`)\n")
    add("| model | reference mIoU | ours mIoU | " + " | ".join(SEG_CLASSES) + " |")
    add("|---|---|---|" + "---|" * len(SEG_CLASSES))
    labels = {}  # the reference model's name, and the arch this run trained when it differs
    for model, (name, ref) in P2_REFERENCE.items():
        parsed = parse_mean_iou(layout.miou(model))
        ious, miou = parsed if parsed else ([math.nan] * len(SEG_CLASSES), math.nan)
        arch = _seg_arch(layout.seg(model) / "log.csv", layout.p2_results)
        labels[model] = name if not arch or arch in name.lower().replace("-", "_") else f"{name} (this run: {arch})"
        add(f"| {labels[model]} | {ref:.4f} | {_fmt(miou)} | " + " | ".join(_fmt(v) for v in ious) + " |")
    add("\nPer-class IoU by the course's rule (SPEC §4): all validation masks pooled, Unknown not averaged; "
        "the reference report gives only the mean.\n")
    p2_figs = []
    for model, label in labels.items():
        if (link := figs.curves(layout.seg(model) / "log.csv", f"curves_p2_{model}.png", f"model {label}", metrics=["miou"])):
            p2_figs.append((f"model {label}", link))
    if p2_figs:
        add("### Training curves\n")
        add("\n\n".join(f"**{t}**\n\n![{t}]({link})" for t, link in p2_figs) + "\n")
    progress = []
    for model, label in labels.items():
        png = report_dir / f"progress_{model}.png"
        if progress_figure(png, layout.seg(model) / "snapshots", Path(info.data_root) / "p2_data" / "validation"):
            progress.append((f"model {label}", png.name))
    if progress:
        add("### Mask progress: early, middle and final epochs\n")
        add("Predictions for validation images 0013, 0062 and 0104 at the first, middle and last epoch.\n")
        add("\n\n".join(f"**{t}**\n\n![{t}]({link})" for t, link in progress) + "\n")

    add("### Segment Anything\n")
    sam_json = layout.sam / "sam_masks.json"
    if sam_json.is_file():
        sam = json.loads(sam_json.read_text())
        add(f"`SamAutomaticMaskGenerator` ({sam['points_per_side']} points per side, predicted-IoU threshold "
            f"{sam['pred_iou_thresh']}, stability threshold {sam['stability_score_thresh']}), model `{sam['model']}`.\n")
        add("| image | masks | mean predicted IoU | mean stability | seconds |")
        add("|---|---|---|---|---|")
        for im in sam["images"]:
            ms = im["masks"]
            mean = lambda k: float(np.mean([m[k] for m in ms])) if ms else math.nan  # noqa: E731
            add(f"| `{Path(im['image']).name}` | {len(ms)} | {_fmt(mean('predicted_iou'), 3)} | "
                f"{_fmt(mean('stability_score'), 3)} | {im['seconds']} |")
        add("")
        for im in sam["images"]:
            if (layout.sam / im["overlay"]).is_file():
                link = figs.copy(layout.sam / im["overlay"], f"sam_{im['overlay']}")
                add(f"![SAM masks of {Path(im['image']).name}]({link})\n")
    else:
        add("Not run: pass `--sam-checkpoint FILE` (e.g. "
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth, `--sam-model-type vit_b`).\n")

    # ------------------------------------------------ architectures
    trees = {n: layout.model_tree(n) for n in info.model_names if layout.model_tree(n).is_file()}
    if trees:
        add("## Architectures (`--print-model`)\n")
        add("| model | parameters | trainable | module tree |")
        add("|---|---|---|---|")
        for n, path in trees.items():
            counts = parameter_counts(path) or (0, 0)
            link = figs.copy(path, f"model_{n}.txt")
            add(f"| {info.model_names[n]} | {counts[0]:,} | {counts[1]:,} | [{link}]({link}) |")
        add("")
        for n, path in trees.items():
            add(f"**{info.model_names[n]}**, parameters per part:\n\n```\n{model_summary(path)}\n```\n")

    # ------------------------------------------------ commands
    if stages:
        add("## Commands\n")
        add("Every stage, in order, as `reproduce.py` ran it (logs in "
            f"`{layout.logs}`); a stage whose outputs exist is skipped on a re-run.\n")
        add("| stage | wall seconds | CPU seconds | status |")
        add("|---|---|---|---|")
        for name, s in stages.items():
            add(f"| {name} | {s.get('seconds', '—')} | {s.get('cpu_seconds', '—')} | {s.get('status', '—')} |")
        wall, cpu = (sum(s.get(k, 0) for s in stages.values()) for k in ("seconds", "cpu_seconds"))
        add(f"| total | {wall:.0f} | {cpu:.0f} | |")
        add("\nWall seconds grow with the load of other programs on the machine (its load average is above); "
            "CPU seconds (user + system, all threads) grow less, but also some.")
        add("\n```bash")
        for name, s in stages.items():
            add(f"# {name}\n{s['command']}")
        add("```\n")
    io.write_json(report_dir / "results.json", results)
    path = report_dir / "REPORT.md"
    io.write_text(path, "\n".join(md).rstrip() + "\n")
    return path


def _seg_arch(log_csv: Path, results: Path) -> str:
    """The segmentation arch of a run, from its row in the P2 results file (matched by folder)."""
    for row in reversed(_rows(results)):
        if Path(row.get("out", "")).resolve() == log_csv.parent.resolve():
            return row.get("arch", "")
    return ""


def image_links(markdown: str) -> list[str]:
    """Targets of `![alt](target)` image links."""
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", markdown)
