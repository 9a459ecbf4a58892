"""Each piece of the strong fine-tuning recipe on its own, beside the seed recipe, over several seeds.

Reads the backbones of `reproduce.py --preset fashion` runs (one runs folder and one data folder per seed), fine-tunes
each setting with the preset's flags plus one variant's, and writes OUT/runs.csv (one row a run) and OUT/table.md
(the mean over seeds, and the change from the seed recipe, per setting). A run that succeeded before (runs.csv) is
skipped; a failed run is tried once more, and a run whose every try failed is counted in its cell of the table.

    python reproduce.py --preset fashion --seed 1 --runs runs/fashion_s1 --data-root sample_data/fashion_s1
    python -m benchmarks.recipe_bench --seeds 0 1 2 --runs runs/fashion_s{seed} --data-root sample_data/fashion_s{seed}
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hw1 import io  # noqa: E402
from hw1.p1.settings import SETTINGS  # noqa: E402
from hw1.report.presets import PRESETS, finetune_flags  # noqa: E402
from hw1.report.results import Layout  # noqa: E402

FULL, FROZEN = ("A", "B", "C"), ("D", "E", "E0")
# variant → (its flags, the settings it applies to); "seed" is the baseline every other is compared with
VARIANTS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "seed": ([], FULL + FROZEN),
    "label smoothing 0.1": (["--label-smoothing", "0.1"], FULL + FROZEN),
    "TrivialAugmentWide": (["--augment", "trivialaugment"], FULL + FROZEN),
    "mixup/CutMix": (["--mix", "mixup-cutmix"], FULL),
    "EMA 0.99": (["--ema-decay", "0.99"], FULL + FROZEN),
    "backbone lr ×0.1": (["--backbone-lr-scale", "0.1"], ("B", "C")),
    "2× epochs": (["--epochs", "16"], FULL),
    "mlp head": (["--head", "mlp"], FROZEN),
    "mlp head, lr 1e-3": (["--head", "mlp", "--lr", "1e-3"], FROZEN),
    "3× probe epochs": (["--epochs", "30"], FROZEN),
    "mlp head, lr 1e-3, 3× epochs": (["--head", "mlp", "--lr", "1e-3", "--epochs", "30"], FROZEN),
    "mlp head, lr 3e-4, 3× epochs": (["--head", "mlp", "--lr", "3e-4", "--epochs", "30"], FROZEN),
    "mlp head, lr 1e-3, 6× epochs": (["--head", "mlp", "--lr", "1e-3", "--epochs", "60"], FROZEN),
    "6× probe epochs": (["--epochs", "60"], FROZEN),
    "strong": ([], FULL + FROZEN),  # --recipe strong with the preset's flags for it, as reproduce.py --recipe strong
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default: 0 1 2")
    parser.add_argument("--runs", default="runs/fashion_s{seed}", help="each seed's reproduce.py runs folder")
    parser.add_argument("--data-root", default="sample_data/fashion_s{seed}", help="each seed's data folder")
    parser.add_argument("--preset", default="fashion", choices=sorted(PRESETS), help="default: %(default)s")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME",
                        help=f"default: all of {', '.join(VARIANTS)}")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each (default: %(default)s)")
    parser.add_argument("--out", default="runs/recipe_bench", help="default: %(default)s")
    parser.add_argument("--table-only", action="store_true", help="run nothing: the table of what OUT/runs.csv holds")
    return parser


def run_command(args: argparse.Namespace, variant: str, setting: str, seed: int) -> tuple[list[str], Path]:
    """p1_finetune.py with the preset's flags and the variant's (the later flag wins), and its run folder."""
    flags, _ = VARIANTS[variant]
    layout = Layout(Path(args.runs.format(seed=seed)))
    backbone = {"supervised": layout.pretrain_supervised / "backbone_last.pt",
                "byol": layout.pretrain_byol / "backbone_last.pt"}.get(SETTINGS[setting].backbone)
    preset_flags = finetune_flags(PRESETS[args.preset], SETTINGS[setting].frozen,
                                  "strong" if variant == "strong" else "seed", SETTINGS[setting].needs_backbone)
    out = Path(args.out) / f"s{seed}" / f"{variant.replace(' ', '_').replace('/', '-')}_{setting}"
    argv = [sys.executable, str(ROOT / "p1_finetune.py"), "--data-root", args.data_root.format(seed=seed),
            "--seed", str(seed), "--workers", "0", "--setting", setting, *(["--backbone", str(backbone)] if backbone
                                                                         else []),
            *preset_flags, "--eval-every", "1000",
            *flags, "--out", str(out), "--results", str(Path(args.out) / "p1_results.csv")]
    return argv, out


def table(rows: list[dict], variants: list[str], settings: list[str], expected: int = 3) -> str:
    """Per variant and setting: the mean final accuracy over the seeds whose run succeeded, and its mean change from
    the seed recipe on the same seeds (n: how many seeds, when not all `expected`; failed: the seeds whose every try
    failed, so that a missing seed is never silent)."""
    acc = {(r["variant"], r["setting"], r["seed"]): float(r["val_acc"]) for r in rows if succeeded(r)}
    failed = {(r["variant"], r["setting"], r["seed"]) for r in rows if not succeeded(r)} - set(acc)
    lines = ["| variant | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for v in variants:
        cells = []
        for s in settings:
            seeds = sorted(k for (vv, ss, k) in acc if (vv, ss) == (v, s))
            lost = sorted(k for (vv, ss, k) in failed if (vv, ss) == (v, s))
            cell = ""
            if seeds:
                cell = f"{sum(acc[(v, s, k)] for k in seeds) / len(seeds):.3f}"
                paired = [acc[(v, s, k)] - acc[("seed", s, k)] for k in seeds if ("seed", s, k) in acc]
                if v != "seed" and paired:
                    cell += f" ({sum(paired) / len(paired):+.3f})"
                cell += f" n={len(seeds)}" if len(seeds) != expected else ""
            if lost:
                cell += f"{', ' if cell else ''}{len(lost)} failed (seed {', '.join(lost)})"
            cells.append(cell)
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def succeeded(row: dict) -> bool:
    """A runs.csv row of a run that exited 0 with a final accuracy."""
    return str(row.get("rc", 0)) == "0" and row.get("val_acc", "") != ""


def run_once(cmd: list[str], run_dir: Path, log: Path, mode: str) -> int:
    """One try of a run, in a fresh run folder (nothing of a failed try left in it), its output in `log`."""
    shutil.rmtree(run_dir, ignore_errors=True)
    with open(log, mode) as f:
        return subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    out = Path(args.out)
    results = out / "runs.csv"
    done = {(r["variant"], r["setting"], r["seed"]) for r in io.read_csv_rows(results)
            if succeeded(r)} if results.is_file() else set()
    todo = [(v, s, seed) for seed in args.seeds for v in args.variants for s in args.settings
            if s in VARIANTS[v][1] and (v, s, str(seed)) not in done and not args.table_only]

    lock = threading.Lock()  # one writer of runs.csv at a time

    def run(job: tuple[str, str, int]) -> None:
        variant, setting, seed = job
        cmd, run_dir = run_command(args, variant, setting, seed)
        log = run_dir.with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2):  # a failed run is tried once more (a crash under load need not repeat)
            rc = run_once(cmd, run_dir, log, "w" if attempt == 1 else "a")
            epochs = io.read_csv_rows(run_dir / "log.csv") if rc == 0 and (run_dir / "log.csv").is_file() else []
            row = {"variant": variant, "setting": setting, "seed": seed,
                   "val_acc": epochs[-1].get("val_acc", "") if epochs else "", "rc": rc, "try": attempt,
                   "command": " ".join(cmd[1:])}
            with lock:
                io.append_csv_row(results, row)
                print(f"{variant:<22} {setting:<3} seed {seed}: "
                      + (row["val_acc"] if succeeded(row) else f"failed (exit {rc}, {log})"
                         + (", trying once more" if attempt == 1 else "")), flush=True)
            if succeeded(row):
                break

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(run, todo))
    rows = io.read_csv_rows(results) if results.is_file() else []
    text = table(rows, args.variants, args.settings, len(args.seeds))
    io.write_text(out / "table.md", text)
    print(text)


if __name__ == "__main__":
    main()
