"""`torchrun --nproc_per_node 2` on CPU (gloo): pre-training, fine-tuning and segmentation run, only rank 0
writes files, the global batch is split across ranks, metrics are reduced across ranks, and a run
where equality must hold (frozen backbone, setting E) matches the single-process run.

Tolerance of that comparison, 1e-6 on the weights: with the backbone frozen and in eval mode every
sample's features are the same in both runs, and the global-batch gradient of the classifier differs
only in float32 summation order (two halves averaged by DDP vs one sum), a relative ~1e-7; AdamW's
m / (sqrt(v) + eps) moves by at most that relative amount times the learning rate (1e-4) a step.
Models whose ResNet batch-norms train (BYOL, DeepLabV3) normalise with per-rank statistics under DDP,
so there only finiteness and logging are checked, and the synced BYOL head is checked exactly in
tests/ddp_checks.py.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import fixture_dir
from robust_helpers import (
    PYTHON,
    ROOT,
    assert_same_run,
    max_abs_diff,
    model_state,
    one_thread,
    run,
    small_p1_root,
    small_p2_root,
)

import p1_finetune
from hw1.p1.models import backbone_state, build_resnet
from hw1.train.distributed import World
from hw1.train.loading import EpochSampler

TORCHRUN = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
SMALL = ["--image-size", "32", "--workers", "0", "--device", "cpu", "--seed", "1"]


def torchrun(script: str, args: list[str], tmp: Path,
             checks: bool = False) -> tuple[list[dict], dict[int, list[str]], str]:
    """Run `script` on 2 gloo ranks under the write spy (after tests/ddp_checks.py when `checks`);
    returns OUT/log.csv rows, each rank's written paths and stdout."""
    spy = tmp / "spy"
    spy.mkdir()
    proc = run([*TORCHRUN, "tests/write_spy.py", script, *args], timeout=400,
               env_extra={"SPY_DIR": str(spy), "DDP_CHECKS": "1" if checks else "0"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = Path(args[args.index("--out") + 1])
    with open(out / "log.csv", newline="") as f:
        log = list(csv.DictReader(f))
    writes = {}
    for rank in (0, 1):
        path = spy / f"writes-rank{rank}.txt"
        lines = path.read_text().splitlines() if path.exists() else []
        writes[rank] = [line.split("\t", 1)[1] for line in lines]
    return log, writes, proc.stdout


def assert_only_rank0_writes(writes: dict[int, list[str]], tmp: Path, out: Path) -> None:
    ours = [p for p in writes[1] if p.startswith((str(tmp), str(ROOT))) or not p.startswith("/")]
    assert ours == [], f"rank 1 wrote {ours}"
    assert any(p.endswith("last.pt") for p in writes[0]) and any(p.startswith(str(out)) for p in writes[0])


def test_sampler_splits_the_global_batch_across_ranks():
    """Each rank gets global/world samples a step; together they are exactly the single-process batch,
    with the same per-sample augmentation seeds."""
    one = EpochSampler(50, 8, shuffle=True, seed=4, world=World(0, 1), drop_last=True)
    ranks = [EpochSampler(50, 8, shuffle=True, seed=4, world=World(r, 2), drop_last=True) for r in (0, 1)]
    for sampler in (one, *ranks):
        sampler.set_epoch(3)
    single, parts = list(one), [list(s) for s in ranks]
    assert all(s.local_batch == 4 for s in ranks) and len(parts[0]) == len(parts[1]) == 6 * 4
    for b in range(6):
        together = parts[0][b * 4:(b + 1) * 4] + parts[1][b * 4:(b + 1) * 4]
        assert sorted(together) == sorted(single[b * 8:(b + 1) * 8])


@pytest.fixture(scope="module")
def p1_root(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with fixture_dir(tmp_path_factory, "ddp_data") as tmp:
        yield small_p1_root(tiny_data, tmp)


@pytest.fixture(scope="module")
def byol_launch(p1_root: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, list[dict], dict, str]]:
    """One torchrun launch: the gloo checks of tests/ddp_checks.py, then BYOL pre-training in the same ranks."""
    with fixture_dir(tmp_path_factory, "ddp_byol") as tmp:
        out = tmp / "out"
        log, writes, stdout = torchrun("p1_pretrain.py", [
            "--arch", "resnet18", "--batch-size", "4", "--epochs", "1", "--projection-size", "32",
            "--projection-hidden-size", "64", "--data-root", str(p1_root), "--out", str(out), *SMALL], tmp, checks=True)
        yield tmp, out, log, writes, stdout


def test_global_batchnorm_byol_heads_and_stop_agreement_under_two_gloo_ranks(byol_launch):
    """GlobalBatchNorm1d == BatchNorm1d on the whole batch (outputs, gradients, running statistics); BYOL's heads
    use it; one rank's SIGTERM or NaN stops both (tests/ddp_checks.py)."""
    stdout = byol_launch[-1]
    assert "rank 0 ok" in stdout and "rank 1 ok" in stdout


def test_torchrun_finetune_frozen_backbone_matches_single_process(p1_root, tmp_path):
    backbone = tmp_path / "backbone.pt"
    torch.save(backbone_state(build_resnet("resnet18")), backbone)

    def args(out: Path) -> list[str]:
        return ["--setting", "E", "--backbone", str(backbone), "--arch", "resnet18", "--batch-size", "4",
                "--epochs", "1", "--data-root", str(p1_root), "--out", str(out),
                "--results", str(out / "results.csv"), *SMALL]

    log, writes, _ = torchrun("p1_finetune.py", args(tmp_path / "ddp"), tmp_path)
    with one_thread():
        p1_finetune.main(args(tmp_path / "single"))
    with open(tmp_path / "single" / "log.csv", newline="") as f:
        single_log = list(csv.DictReader(f))

    assert_only_rank0_writes(writes, tmp_path, tmp_path / "ddp")
    assert max_abs_diff(model_state(tmp_path / "ddp" / "last.pt"), model_state(tmp_path / "single" / "last.pt")) <= 1e-6
    # The logged loss is the mean over both ranks' halves, so it equals the single process's mean.
    assert float(log[-1]["train_loss"]) == pytest.approx(float(single_log[-1]["train_loss"]), rel=1e-5)
    assert log[-1]["val_acc"] == single_log[-1]["val_acc"] and log[-1]["step"] == single_log[-1]["step"] == "3"


def test_torchrun_byol_pretraining(byol_launch):
    tmp, out, log, writes, _ = byol_launch
    assert_only_rank0_writes(writes, tmp, out)
    assert math.isfinite(float(log[-1]["train_loss"])) and log[-1]["step"] == "3"
    assert "knn_acc" in log[-1]  # evaluated on every rank, logged by rank 0
    assert (out / "backbone_last.pt").is_file() and (out / "first.pt").is_file()


def test_torchrun_byol_resume_mid_epoch_matches_the_uninterrupted_two_rank_run(tiny_data, tmp_path):
    """Each rank draws its own batched views (--gpu-aug) from (seed, rank, step), so a 2-rank run stopped in
    epoch 2 (--max-steps 4 of 6) and resumed on 2 ranks ends at the uninterrupted 2-rank run's weights; the
    resumed epoch is logged once."""
    root = small_p1_root(tiny_data, tmp_path / "data", office=False)  # 12 images, batch 4: 3 steps an epoch

    def args(out: Path, *extra: str) -> list[str]:
        return ["--arch", "resnet18", "--batch-size", "4", "--epochs", "2", "--gpu-aug", "--projection-size", "32",
                "--projection-hidden-size", "64", "--data-root", str(root), "--out", str(out), *SMALL, *extra]

    ref, out = tmp_path / "ref", tmp_path / "run"
    for n, argv in enumerate((args(ref), args(out, "--max-steps", "4"), args(out, "--resume"))):
        (tmp_path / f"launch{n}").mkdir()
        log, _, stdout = torchrun("p1_pretrain.py", argv, tmp_path / f"launch{n}")
        if n == 1:
            stopped = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
            assert (stopped["epoch"], stopped["batch_in_epoch"], stopped["step"]) == (1, 1, 4)
            assert [r["epoch"] for r in log] == ["1", "2"]  # the partial epoch 2 is logged, then redone
    assert "resumed from" in stdout and [r["epoch"] for r in log] == ["1", "2"]
    assert_same_run(out / "last.pt", ref / "last.pt")


def test_torchrun_segmentation(tiny_data, tmp_path):
    root = small_p2_root(tiny_data, tmp_path / "data", train=8, val=2)
    out = tmp_path / "out"
    log, writes, _ = torchrun("p2_train_deeplab.py", [
        "--arch", "deeplabv3_mobilenet_v3_large", "--weights", "none", "--aux-weight", "0", "--batch-size", "4",
        "--epochs", "1", "--max-steps", "2", "--data-root", str(root), "--out", str(out),
        "--results", str(out / "results.csv"), *SMALL], tmp_path)
    assert_only_rank0_writes(writes, tmp_path, out)
    assert math.isfinite(float(log[-1]["train_loss"])) and log[-1]["step"] == "2"
    assert 0.0 <= float(log[-1]["miou"]) <= 1.0 or math.isnan(float(log[-1]["miou"]))  # summed over ranks' shares
