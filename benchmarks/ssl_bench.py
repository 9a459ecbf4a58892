"""BYOL side by side: this project's pipeline against byol-pytorch's, with only the pipeline differing.

Every row trains through the project's one loop (`engine.fit`) on the same images, batch, optimiser (AdamW) and
learning-rate schedule over exactly --steps, from one start: a seeded ResNet, its BatchNorm buffers included, and
one projector and predictor, loaded into each model after it is built (byol-pytorch's constructor probes its
network in train mode, which moves the buffers). Projector and predictor have the same sizes, simplicial embeddings
off. The rows (`ROWS`):

- equal views: ours with its per-image views against byol-pytorch fed the same views through its `augment_fn`
  hooks; what is left to differ is the pipeline (ours: cosine target EMA from --ema-start to 1 over --steps;
  byol-pytorch: its `update_moving_average()`, fixed 0.99);
- own views: ours with the batched views (`--gpu-aug`, what the presets run) against byol-pytorch's batch-wide
  augmentation;
- byol-pytorch as its README ships it (4096-wide heads, simplicial embeddings on): the backbone's start is shared.

Each row is scored by the project's kNN monitor (`pretraining.KnnMonitor`: Office-Home-layout train → val) at step 0
and every --eval-every steps. A row's curve is saved as it finishes (OUT/curves/ROW-seedS.json) and a saved one is
not run again, so the rows may span several runs; images/s is the median, min and max of --time-repeats timed runs of
--time-steps steps (OUT/timing/ROW.json). OUT/ssl.json, ssl.md and ssl.png gather what is saved.

    python -m hw1.samples.fashion --out sample_data/fashion --seed 0
    python -m benchmarks.ssl_bench --data-root sample_data/fashion --out runs/ssl --rows equal --seeds 0 1
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from hw1 import io
from hw1.data import cache, folders
from hw1.errors import UserError, run_main
from hw1.p1.byol import SelectView, TargetEMA, build_byol
from hw1.p1.models import build_resnet
from hw1.p1.pretraining import PretrainConfig, Pretraining
from hw1.train import config, distributed, engine

from . import byol_reference
from .common import sync


@dataclass(frozen=True)
class Row:
    """One pipeline of the side by side."""

    label: str
    ours: bool              # this project's BYOL (else byol-pytorch's, `byol_reference`)
    views: str              # "per-image" (ours, made in the loader), "batched" (ours, --gpu-aug) or "byol-pytorch"
    readme: bool = False    # byol-pytorch with every README default (its heads differ: only the backbone is shared)
    target: str = ""        # the target update: "cosine" (ours, over --steps) or "fixed" (byol-pytorch's 0.99)

    def __post_init__(self) -> None:
        if not self.target:
            object.__setattr__(self, "target", "cosine" if self.ours else "fixed")


ROWS = {
    "ours-per-image": Row("ours, per-image views", ours=True, views="per-image"),
    "byol-pytorch-equal": Row("byol-pytorch, our per-image views", ours=False, views="per-image"),
    "ours-batched": Row("ours, batched views (--gpu-aug)", ours=True, views="batched"),
    "byol-pytorch-equal-batched": Row("byol-pytorch, our batched views", ours=False, views="batched"),
    "byol-pytorch-own": Row("byol-pytorch, its batch-wide views", ours=False, views="byol-pytorch"),
    # ours with byol-pytorch's fixed 0.99 target: what the equal-views pair differs in (tests/test_ssl_bench.py)
    "ours-per-image-fixed-target": Row("ours, per-image views, fixed 0.99 target", ours=True, views="per-image",
                                       target="fixed"),
    "byol-pytorch-readme": Row("byol-pytorch as its README ships it", ours=False, views="byol-pytorch", readme=True),
}
# equal: the views made per image in the loader (the CPU's pair); equal-batched: the batched views on the device
# (the GPU's pair: a CPU loader would set its pace); own: each pipeline's views
GROUPS = {"equal": ["ours-per-image", "byol-pytorch-equal"],
          "equal-batched": ["ours-batched", "byol-pytorch-equal-batched"],
          "own": ["ours-batched", "byol-pytorch-own"], "readme": ["byol-pytorch-readme"]}
SETUP = ("arch", "stem", "image_size", "batch_size", "lr", "ema_start", "crop_min_scale", "projection_hidden_size",
         "device")  # what a saved curve records of its run
EQUAL_PAIRS = (("ours-per-image", "byol-pytorch-equal"), ("ours-batched", "byol-pytorch-equal-batched"))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="hw1_data layout: mini/train to train, office to score")
    parser.add_argument("--out", default="runs/ssl", help="default: %(default)s")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=[*ROWS, *GROUPS],
                        help="rows, or groups of rows (equal, equal-batched, own, readme), to run (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    parser.add_argument("--arch", default="resnet18", help="default: %(default)s")
    parser.add_argument("--stem", choices=["torchvision", "small"], default="torchvision",
                        help="small: the 32 px field's 3x3 stride-1 first convolution and no max-pool (this "
                             "benchmark's model only; default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=32, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=64, help="default: %(default)s (the fashion preset's)")
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps a row (default: %(default)s)")
    parser.add_argument("--eval-every", type=int, default=100, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW, for every row (default: %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="default: %(default)s")
    parser.add_argument("--warmup-steps", type=int, default=10, help="then cosine to 0 at --steps")
    parser.add_argument("--ema-start", type=float, default=0.99, help="ours: cosine to 1 at --steps")
    parser.add_argument("--crop-min-scale", type=float, default=0.2, help="our views (default: the fashion preset's)")
    parser.add_argument("--projection-hidden-size", type=int, default=1024, help="every row but the README's")
    parser.add_argument("--time-steps", type=int, default=20, help="timed steps a repeat (default: %(default)s)")
    parser.add_argument("--time-repeats", type=int, default=3, help="0: no timing (default: %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="gather the saved curves and timings; train nothing")
    parser.add_argument("--workers", type=int, default=1, help="loader processes (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    return parser


# ---------------------------------------------------------------- one start for every row


def start_state(args: argparse.Namespace, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """The seed's network (BatchNorm buffers as initialised) and one projector and predictor of the shared sizes."""
    distributed.seed_everything(seed)
    net = build_resnet(args.arch)
    if args.stem == "small":
        small_stem(net)
    heads = build_byol(args.arch, args.image_size, torch.device("cpu"),
                       projection_hidden_size=args.projection_hidden_size)
    return {"net": net.state_dict(), "projector": heads.online_encoder.projector.state_dict(),
            "predictor": heads.online_predictor.state_dict()}


def small_stem(net: nn.Module) -> None:
    """The stem CIFAR-sized ResNets use (solo-learn, lightly, the MoCo CIFAR demo): 3x3 stride 1, no max-pool."""
    net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()


def load_start(model: nn.Module, start: dict[str, dict[str, torch.Tensor]], heads: bool) -> None:
    """Overwrite a built BYOL's online network (and heads) with the start; its target becomes their copy."""
    net = model.online_encoder.net
    own = net.state_dict()
    net.load_state_dict({k: v for k, v in start["net"].items() if k in own})  # ours has no `fc`
    if heads:
        model.online_encoder.projector.load_state_dict(start["projector"])
        model.online_predictor.load_state_dict(start["predictor"])
    model.target_encoder.load_state_dict(model.online_encoder.state_dict())


# ---------------------------------------------------------------- one row through engine.fit


class RowRun:
    """One row at one seed: its model, loader and hooks, and its curve (kNN at step 0 and every `eval_every`)."""

    def __init__(self, row: Row, args: argparse.Namespace, seed: int, device: torch.device,
                 start: dict[str, dict[str, torch.Tensor]], steps: int, eval_every: int | None, work: Path) -> None:
        self.row, self.args, self.seed, self.device = row, args, seed, device
        self.steps, self.eval_every = steps, eval_every  # eval_every None: no evaluation (timing)
        self.flags = _pretrain_flags(args, seed, steps, row.views == "per-image", work)
        pretraining = Pretraining(PretrainConfig.from_args(self.flags), cache.CacheConfig.from_args(self.flags),
                                  distributed.World(), device)
        self.loader, self.monitor = pretraining.loader, pretraining.monitor
        if eval_every and self.monitor is None:
            raise UserError(args.data_root, "no Office-Home sets (p1_data/office) for the kNN monitor",
                            "write the data with python -m hw1.samples.fashion")
        self.before_step = pretraining.before_step if pretraining.views else None
        if row.ours:
            self.model = pretraining.model
        else:
            hooks = {"per-image": (SelectView(0), SelectView(1)), "batched": pretraining.views}.get(row.views)
            self.model = byol_reference.build(
                args.arch, args.image_size, device, augment_fns=hooks,
                projection_hidden_size=4096 if row.readme else args.projection_hidden_size, simplicial=row.readme)
        if args.stem == "small":
            for net in (self.model.online_encoder.net, self.model.target_encoder.net):
                small_stem(net)
        self.model.to(device)
        load_start(self.model, start, heads=not row.readme)
        self.backbone = self.model.online_encoder.net
        self.ema = TargetEMA(self.model, steps, args.ema_start) if row.target == "cosine" else None
        self.curve: list[dict] = []
        self.on_eval: Callable[[list[dict]], None] | None = None  # e.g. save the curve so far
        self.stamps: list[float] = []  # after each step, on a clock that stops while the monitor runs
        self.eval_s = 0.0                # the monitor's seconds so far
        self._last_loss = torch.zeros(())

    def loss(self, model: nn.Module, batch: tuple) -> torch.Tensor:
        x = batch[0]
        if self.row.views == "byol-pytorch":
            x = byol_reference.float_batch(x, self.args.image_size)
        loss = model(x)
        self._last_loss = loss.detach()
        return loss

    def after_step(self, step: int) -> None:
        """The target update, then a time stamp; the monitor when due (its time left out of the stamps)."""
        if self.ema is not None:
            self.ema(step)
        else:
            self.model.update_moving_average()
        sync(self.device)
        now = time.perf_counter()
        self.stamps.append(now - self.eval_s)
        done = step + 1
        if self.eval_every and (done % self.eval_every == 0 or done == self.steps):
            row = self.score(done)
            window = [s for s in self.curve if s["step"] < done][-1]["step"]
            seconds = self.stamps[-1] - (self.stamps[window - 1] if window else self.t0)
            row.update(loss=round(self._last_loss.item(), 4),
                       images_per_s=round((done - window) * self.args.batch_size / seconds, 1))
            self.curve.append(row)
            if self.on_eval:
                self.on_eval(self.curve)
            print(f"{self.row.label} (seed {self.seed}) step {done}: kNN {row['knn_acc']:.3f}, "
                  f"view gap {row['view_gap']:.3f}, {row['images_per_s']} img/s", flush=True)
            self.eval_s += time.perf_counter() - now
            self.model.train()

    def score(self, step: int) -> dict:
        self.model.eval()
        with torch.no_grad():
            row = {"step": step, **self.monitor(self.backbone)}  # type: ignore[misc]
        return row

    def fit(self) -> list[dict]:
        self.curve = [self.score(0)] if self.eval_every else []
        task = engine.Task(model=self.model, loss_fn=self.loss, meta={"task": "ssl-bench", "arch": self.args.arch},
                           before_step=self.before_step, after_step=self.after_step, keep_best=False)
        cfg = dataclasses.replace(config.TrainConfig.from_args(self.flags), schedule_steps=self.steps)
        self.model.train()
        self.t0 = time.perf_counter()
        engine.fit(cfg, task, self.loader, distributed.World(), self.device)
        return self.curve


def _pretrain_flags(args: argparse.Namespace, seed: int, steps: int, per_image: bool,
                    work: Path) -> argparse.Namespace:
    """p1_pretrain.py's flags for a row: its loader, views and monitor are the project's own."""
    import p1_pretrain

    images = len(folders.mini_paths(args.data_root))
    epochs = math.ceil(steps / max(1, images // args.batch_size))
    return p1_pretrain.get_args_parser().parse_args([
        "--data-root", args.data_root, "--out", str(work), "--arch", args.arch,
        "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
        "--seed", str(seed), "--projection-hidden-size", str(args.projection_hidden_size), "--no-cache",
        "--no-gpu-aug" if per_image else "--gpu-aug", "--precision", "fp32", "--device", args.device,
        "--crop-min-scale", str(args.crop_min_scale), "--ema-start", str(args.ema_start),
        "--lr", str(args.lr), "--weight-decay", str(args.weight_decay), "--warmup-steps", str(args.warmup_steps),
        "--epochs", str(epochs), "--max-steps", str(steps), "--save-every", str(epochs + 1),
    ])


def run_row(name: str, args: argparse.Namespace, seed: int, device: torch.device, work: Path,
            curve_file: Path) -> None:
    """One row's curve at one seed, to --steps, into `curve_file`; the curve so far, at each evaluation, into its
    `.partial.json` (a run stopped by a time limit still shows where it got)."""
    run = RowRun(ROWS[name], args, seed, device, start_state(args, seed), args.steps, args.eval_every,
                 work / f"{name}-seed{seed}")
    partial = curve_file.with_suffix(".partial.json")

    def result(curve: list[dict]) -> dict:
        return {"row": name, "label": ROWS[name].label, "seed": seed, "steps": args.steps, "curve": curve,
                "crosses_at": crossing(curve), "setup": {k: getattr(args, k) for k in SETUP}}

    run.on_eval = lambda curve: io.write_json(partial, {**result(curve), "partial": True})
    io.write_json(curve_file, result(run.fit()))
    partial.unlink(missing_ok=True)


def time_row(name: str, args: argparse.Namespace, device: torch.device, work: Path) -> dict:
    """images/s of --time-steps steps after 3 untimed ones, --time-repeats times (evaluation off)."""
    rates = []
    for repeat in range(args.time_repeats):
        run = RowRun(ROWS[name], args, 0, device, start_state(args, 0), 3 + args.time_steps, None,
                     work / f"{name}-timing{repeat}")
        run.fit()
        rates.append(args.time_steps * args.batch_size / (run.stamps[-1] - run.stamps[2]))
    return {"row": name, "images_per_s": [round(r, 1) for r in rates], "median": round(statistics.median(rates), 1),
            "threads": torch.get_num_threads(), "device": str(device)}


# ---------------------------------------------------------------- the report


def crossing(curve: list[dict]) -> int | None:
    """The first step after the start whose kNN is above the random initialisation's, or None."""
    start = curve[0]["knn_acc"]
    return next((row["step"] for row in curve[1:] if row["knn_acc"] > start), None)


def equal_views_verdict(results: list[dict]) -> str:
    """Ours against byol-pytorch with equal views at the last step, per pair run: the gap per seed against the seeds'
    spread within a row."""
    final = {(r["row"], r["seed"]): r["curve"][-1]["knn_acc"] for r in results}
    lines = []
    for ours, theirs in EQUAL_PAIRS:
        seeds = sorted({s for (row, s) in final if row == ours} & {s for (row, s) in final if row == theirs})
        if not seeds:
            continue
        gaps = [final[(ours, s)] - final[(theirs, s)] for s in seeds]
        spread = max(max(final[(row, s)] for s in seeds) - min(final[(row, s)] for s in seeds)
                     for row in (ours, theirs))
        text = (f"Equal views ({ROWS[ours].views}), last step: ours − byol-pytorch = "
                f"{', '.join(f'{g:+.3f}' for g in gaps)} (seeds {', '.join(map(str, seeds))}); the seeds' spread "
                f"within a row: {spread:.3f}")
        if len(seeds) < 2:
            text += " (one seed: no spread yet)."
        elif max(gaps) < 0 and -max(gaps) > spread:
            text += ". Ours trails by more than the spread: a defect to find."
        else:
            text += ". Ours does not trail by more than the spread."
        lines.append(text)
    return "\n\n".join(lines) or "Equal views: not run."


def markdown(results: list[dict], timings: dict[str, dict]) -> str:
    steps = sorted({row["step"] for r in results for row in r["curve"]})
    lines = ["| row | seed | " + " | ".join(f"kNN @ {s}" for s in steps) + " | crosses its start | images/s |",
             "|---|---|" + "---|" * (len(steps) + 2)]
    for r in results:
        at = {row["step"]: row["knn_acc"] for row in r["curve"]}
        crosses = f"step {r['crosses_at']}" if r["crosses_at"] else f"no, within {r['curve'][-1]['step']} steps"
        if r.get("partial"):
            crosses += f" (stopped at step {r['curve'][-1]['step']} of {r['steps']})"
        timing = timings.get(r["row"])
        rate = (f"{timing['median']} ({min(timing['images_per_s'])}–{max(timing['images_per_s'])})"
                if timing else "—")
        lines.append(f"| {r['label']} | {r['seed']} | " + " | ".join(f"{at[s]:.3f}" if s in at else "" for s in steps)
                     + f" | {crosses} | {rate} |")
    return "\n".join(lines) + "\n\n" + equal_views_verdict(results) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r in results:
        style = "-" if ROWS[r["row"]].ours else "--"
        ax.plot([row["step"] for row in r["curve"]], [row["knn_acc"] for row in r["curve"]], style, marker="o",
                markersize=3, label=f"{r['label']}, seed {r['seed']}")
        ax.axhline(r["curve"][0]["knn_acc"], color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("kNN accuracy (monitor); dotted: each start")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def gather(out: Path) -> tuple[list[dict], dict[str, dict]]:
    """The saved curves (in ROWS order, then seed) and timings."""
    results = [json.loads(p.read_text()) for p in sorted((out / "curves").glob("*.json"))]
    complete = {(r["row"], r["seed"]) for r in results if not r.get("partial")}
    results = [r for r in results if not (r.get("partial") and (r["row"], r["seed"]) in complete)]
    results.sort(key=lambda r: (list(ROWS).index(r["row"]), r["seed"]))
    timings = {t["row"]: t for t in (json.loads(p.read_text()) for p in sorted((out / "timing").glob("*.json")))}
    return results, timings


def report(out: Path) -> str:
    results, timings = gather(out)
    if not results:
        raise UserError(str(out / "curves"), "no saved curve", "run the side by side first")
    table = markdown(results, timings)
    io.write_json(out / "ssl.json", {"results": results, "timings": timings})
    io.write_text(out / "ssl.md", table)
    plot(results, out / "ssl.png")
    return table


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = io.ensure_dir(args.out)
    if not args.report_only:
        device = distributed.setup_device(args.device)
        names = list(dict.fromkeys(n for name in args.rows for n in GROUPS.get(name, [name])))
        with tempfile.TemporaryDirectory(dir=out) as tmp:  # engine.fit's log.csv and last.pt, not kept
            work = Path(tmp)
            for name in names:
                timing = out / "timing" / f"{name}.json"
                if args.time_repeats and not timing.exists():
                    io.write_json(io.ensure_dir(timing.parent) / timing.name, time_row(name, args, device, work))
                for seed in args.seeds:
                    curve = out / "curves" / f"{name}-seed{seed}.json"
                    if curve.exists():
                        print(f"{curve} saved already: kept")
                        continue
                    run_row(name, args, seed, device, work, io.ensure_dir(curve.parent) / curve.name)
    print(report(out))


if __name__ == "__main__":
    run_main(main)()
