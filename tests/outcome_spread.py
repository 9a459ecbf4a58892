"""The spread of the suite's training-outcome tests over seeds and thread counts (not a test: a measurement).

Each outcome runs the training of its test's fixture, with the same flags, at `--seed S` under
`torch.set_num_threads(T)`, and prints the numbers its test bars: a bar below the worst case holds on another
CPU, where oneDNN and BLAS pick other kernels and a short run amplifies the difference.

    .venv/bin/python tests/outcome_spread.py --seeds 0 1 2 3 4 --threads 1 2 --out spread.json
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def rows(out: Path) -> list[dict]:
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def finetune_a(data: Path, out: Path, seed: int, *extra: str) -> dict:
    """conftest.p1_classifier → test_p1_finetune.test_setting_a_learns_well_above_chance."""
    from conftest import P1_LEARN_EPOCHS, P1_SMALL

    import p1_finetune

    p1_finetune.main(["--setting", "A", "--data-root", str(data), "--out", str(out), *P1_SMALL, "--device", "cpu",
                      "--batch-size", "32", "--epochs", str(P1_LEARN_EPOCHS), "--lr", "2e-3", "--seed", str(seed),
                      "--results", str(out / "results.csv"), *extra])
    log = rows(out)
    return {"val_acc": float(log[-1]["val_acc"]),
            "loss_ratio": float(log[-1]["train_loss"]) / float(log[0]["train_loss"])}


def byol(data: Path, out: Path, seed: int) -> dict:
    """test_p1_pretrain.byol_run → test_byol_reduces_its_loss, test_byol_makes_two_views_… (the view gap)."""
    import numpy as np
    from conftest import P1_SMALL
    from PIL import Image
    from test_p1_pretrain import _resnet18

    import p1_pretrain
    from hw1.data.gpu_aug import batch_views
    from hw1.samples.synthetic import write_p1
    from hw1.train.metrics import view_gap

    root = out / "data"
    write_p1(root, mini_per_class=3, office_train_per_class=3, office_val_per_class=4, size=64)  # as byol_run does
    init: dict = {}
    real_fit = p1_pretrain.engine.fit

    def fit_from_recorded_init(args, task, *rest):  # type: ignore[no-untyped-def]
        init.update({k: v.detach().clone() for k, v in task.model.net.state_dict().items()})
        return real_fit(args, task, *rest)

    p1_pretrain.engine.fit = fit_from_recorded_init
    try:
        p1_pretrain.main(["--data-root", str(root), "--out", str(out / "run"), *P1_SMALL, "--device", "cpu",
                          "--batch-size", "32", "--epochs", "4", "--lr", "1e-3", "--warmup-steps", "4",
                          "--projection-hidden-size", "256", "--no-cache", "--eval-every", "1", "--seed", str(seed)])
    finally:
        p1_pretrain.engine.fit = real_fit
    log = [r for r in rows(out / "run")]
    losses = [float(r["train_loss"]) for r in log if r["epoch"] != "0"]
    images = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                          for p in sorted((root / "p1_data" / "office" / "val").glob("*.jpg"))[:128]])
    view1, view2 = batch_views(32, seed=123)
    a, b = view1(images), view2(images)
    random_gap, byol_gap = (view_gap(_resnet18(state), a, b)
                            for state in (init, torch.load(out / "run" / "backbone_last.pt", weights_only=True)))
    return {"loss_ratio": losses[-1] / losses[0], "gap_gain": byol_gap - random_gap,
            "logged_gap_gain": float(log[-1]["view_gap"]) - float(log[0]["view_gap"])}


def deeplab(data: Path, out: Path, seed: int) -> dict:
    """test_p2_train_infer.run_dir → test_short_training_raises_validation_miou_well_above_untrained."""
    from test_p2_train_infer import ARCH, CPU, RECALIBRATE, SHORT_RUN, SIZE

    import p2_train_deeplab
    from hw1.p2.data import SatMaskDataset, collate, find_pairs
    from hw1.p2.models import build_seg_model
    from hw1.p2.training import evaluate_miou, recalibrate_batchnorm

    p2_train_deeplab.main(["--data-root", str(data), "--out", str(out), "--results", str(out / "results.csv"), *CPU,
                           *SHORT_RUN, "--seed", str(seed)])

    def loader(split: str, **kw: bool) -> torch.utils.data.DataLoader:
        pairs = find_pairs(data / "p2_data" / split, need_masks=True)
        return torch.utils.data.DataLoader(SatMaskDataset(pairs, SIZE, **kw), batch_size=4, collate_fn=collate)

    torch.manual_seed(0)  # the test's untrained baseline does not depend on the run's seed
    untrained = build_seg_model(ARCH, "none")
    recalibrate_batchnorm(untrained, loader("train"), torch.device("cpu"), RECALIBRATE, world_size=1)
    with torch.no_grad():
        before = evaluate_miou(untrained, loader("validation", full_res_masks=True), torch.device("cpu"),
                               show=False)["miou"]
    after = float(rows(out)[-1]["miou"])
    return {"before": before, "after": after, "ratio": after / before, "gain": after - before}


def finetune_a_gpu_aug(data: Path, out: Path, seed: int) -> dict:
    """The same run with fine-tuning's batched device augmentation (--gpu-aug, the default on CUDA)."""
    return finetune_a(data, out, seed, "--gpu-aug")


OUTCOMES: dict[str, Callable[[Path, Path, int], dict]] = {"finetune_a": finetune_a,
                                                          "finetune_a_gpu_aug": finetune_a_gpu_aug,
                                                          "byol": byol, "deeplab": deeplab}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outcomes", nargs="+", choices=list(OUTCOMES), default=list(OUTCOMES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default="spread.json",
                        help="results, rewritten after every run (default: %(default)s)")
    args = parser.parse_args()
    from hw1.samples.synthetic import write_sample_data

    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_sample_data(Path(tmp) / "hw1_data", preset="tiny")  # the suite's tiny_data
        for name in args.outcomes:
            for threads in args.threads:
                for seed in args.seeds:
                    torch.set_num_threads(threads)
                    run = Path(tmp) / f"{name}_{threads}_{seed}"
                    got = OUTCOMES[name](data, run, seed)
                    results.append({"outcome": name, "threads": threads, "seed": seed, **got})
                    print(json.dumps(results[-1]), flush=True)
                    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
