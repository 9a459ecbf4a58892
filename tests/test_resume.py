"""Interruption loses nothing: a run killed (SIGKILL) or stopped (SIGTERM) mid-epoch and resumed with
`--resume` ends at exactly the weights of an uninterrupted run (CPU, fixed seed, one thread); a write
that fails midway leaves the previous file whole and no temp file behind.

Resnet18 at 32 px on 12 images, batch 4: 3 steps an epoch, 2 epochs. The interrupted run is a
subprocess whose optimiser step sleeps a little (timing only, no numeric change), so the signal
reliably lands in epoch 2 after its first step; the reference and the resumed runs are in-process.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import drop_checkpoints, fixture_dir
from PIL import Image
from robust_helpers import ENV, PYTHON, ROOT, assert_same_run, max_abs_diff, one_thread, run, small_p1_root

import p1_finetune
import p1_pretrain
import p2_inference
from hw1 import io
from hw1.errors import UserError, run_main
from hw1.train import checkpoint, distributed, loading

COMMON = ["--arch", "resnet18", "--image-size", "32", "--epochs", "2", "--batch-size", "4", "--device", "cpu",
          "--seed", "3"]
STEPS_PER_EPOCH = 3
# Run a script with a slowed optimiser step, so that a test can interrupt it mid-epoch.
SLOW_STEP = """
import runpy, sys, time
import torch
step = torch.optim.AdamW.step
def slow_step(self, *args, **kwargs):
    time.sleep(0.3)
    return step(self, *args, **kwargs)
torch.optim.AdamW.step = slow_step
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def finetune_args(root: Path, out: Path, workers: int = 0) -> list[str]:
    return ["--setting", "A", "--data-root", str(root), "--out", str(out), "--results", str(out / "results.csv"),
            "--workers", str(workers), *COMMON]


def pretrain_args(root: Path, out: Path, workers: int = 0) -> list[str]:
    return ["--data-root", str(root), "--out", str(out), "--workers", str(workers),
            "--projection-size", "32", "--projection-hidden-size", "64", *COMMON]


def train_in_process(main, argv: list[str]) -> None:
    with one_thread():
        main(argv)


def interrupt_in_epoch_2(script: str, argv: list[str], sig: signal.Signals, tmp: Path, epoch: int = 2,
                         epochs: int = 2) -> int:
    """Start `script`, send `sig` to its process group once epoch 2 (or `epoch` of `epochs`) has done a step;
    return its exit code."""
    err_path = tmp / f"{sig.name}.stderr"
    with open(err_path, "w") as err, open(tmp / f"{sig.name}.stdout", "w") as out:
        proc = subprocess.Popen([PYTHON, "-c", SLOW_STEP, script, *argv], cwd=ROOT, env=ENV, stdout=out, stderr=err,
                                start_new_session=True)
        progress = re.compile(rf"epoch {epoch}/{epochs}:\s+\d+%\|[^|]*\|\s*(\d+)/{STEPS_PER_EPOCH}")
        deadline = time.monotonic() + 240
        try:
            while True:
                assert proc.poll() is None, (f"{script} ended before it could be interrupted:\n"
                                             f"{err_path.read_text()[-2000:]}")
                assert time.monotonic() < deadline, f"epoch {epoch} never started"
                done = [int(n) for n in progress.findall(err_path.read_text(errors="replace"))]
                if done and 1 <= max(done) < STEPS_PER_EPOCH:
                    break
                time.sleep(0.05)
            os.killpg(proc.pid, sig)
            return proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def p1_root(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with fixture_dir(tmp_path_factory, "resume_data") as tmp:
        yield small_p1_root(tiny_data, tmp)


@pytest.fixture(scope="module")
def finetune_reference(p1_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with fixture_dir(tmp_path_factory, "finetune_ref") as out:
        train_in_process(p1_finetune.main, finetune_args(p1_root, out))
        drop_checkpoints(out, keep=("last.pt",))
        yield out / "last.pt"


def test_sigkill_mid_epoch_then_resume_finetune_matches_uninterrupted(p1_root, finetune_reference, tmp_path):
    out = tmp_path / "run"
    code = interrupt_in_epoch_2("p1_finetune.py", finetune_args(p1_root, out), signal.SIGKILL, tmp_path)
    assert code == -signal.SIGKILL
    killed = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert (killed["epoch"], killed["batch_in_epoch"]) == (1, 0)  # epoch 1's checkpoint; epoch 2's steps were lost
    train_in_process(p1_finetune.main, finetune_args(p1_root, out) + ["--resume"])
    assert_same_run(out / "last.pt", finetune_reference)


def test_sigkill_between_two_writes_resumes_from_the_older_and_matches_uninterrupted(p1_root, tmp_path):
    """The fine-tuning cadence: with --save-every 3 of 4 epochs, last.pt is written after epochs 1, 3 and 4, and
    best.pt (kept in memory when validation improves) with it. A SIGKILL in epoch 3 loses epoch 2 as well; the
    resume redoes it and ends with the uninterrupted run's last.pt and best.pt. With --gpu-aug (the default on
    CUDA): the redone steps draw their crops, flips and jitter again from (seed, rank, step)."""
    def argv(out: Path) -> list[str]:
        return finetune_args(p1_root, out) + ["--epochs", "4", "--save-every", "3", "--gpu-aug"]

    reference, out = tmp_path / "reference", tmp_path / "out"
    train_in_process(p1_finetune.main, argv(reference))
    code = interrupt_in_epoch_2("p1_finetune.py", argv(out), signal.SIGKILL, tmp_path, epoch=3, epochs=4)
    assert code == -signal.SIGKILL
    killed = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert (killed["epoch"], killed["batch_in_epoch"]) == (1, 0)  # epoch 2 ended but was not written: the cadence
    train_in_process(p1_finetune.main, argv(out) + ["--resume"])
    assert_same_run(out / "last.pt", reference / "last.pt")
    best, best_reference = (torch.load(d / "best.pt", weights_only=True) for d in (out, reference))
    assert (best["epoch"], best["best"]) == (best_reference["epoch"], best_reference["best"])
    assert max_abs_diff(best["model"], best_reference["model"]) <= 1e-6 and "optimizer" not in best


def test_sigkill_mid_epoch_then_resume_byol_matches_uninterrupted(tiny_data, tmp_path):
    """BYOL (online, target EMA, predictor): killed with --workers 2, resumed and compared with --workers 0.
    Mini-ImageNet only: without Office-Home the kNN monitor is off."""
    root = small_p1_root(tiny_data, tmp_path / "data", office=False)
    reference, out = tmp_path / "ref", tmp_path / "run"
    train_in_process(p1_pretrain.main, pretrain_args(root, reference))
    code = interrupt_in_epoch_2("p1_pretrain.py", pretrain_args(root, out, workers=2), signal.SIGKILL, tmp_path)
    assert code == -signal.SIGKILL
    assert torch.load(out / "last.pt", map_location="cpu", weights_only=True)["epoch"] == 1
    train_in_process(p1_pretrain.main, pretrain_args(root, out) + ["--resume"])
    assert_same_run(out / "last.pt", reference / "last.pt")
    assert max_abs_diff(torch.load(out / "backbone_last.pt", weights_only=True),
                        torch.load(reference / "backbone_last.pt", weights_only=True)) <= 1e-6


def test_sigterm_to_process_group_saves_batch_position_and_resume_matches(p1_root, finetune_reference, tmp_path,
                                                                          capsys):
    """A scheduler's SIGTERM (or Ctrl-C) reaches the loader workers too: the run still checkpoints mid-epoch."""
    out = tmp_path / "run"
    code = interrupt_in_epoch_2("p1_finetune.py", finetune_args(p1_root, out, workers=2), signal.SIGTERM, tmp_path)
    assert code == 143, (tmp_path / "SIGTERM.stderr").read_text()[-2000:]
    assert "SIGTERM received" in (tmp_path / "SIGTERM.stderr").read_text()
    stopped = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert stopped["epoch"] == 1 and 1 <= stopped["batch_in_epoch"] < STEPS_PER_EPOCH
    assert stopped["step"] == STEPS_PER_EPOCH + stopped["batch_in_epoch"]
    train_in_process(p1_finetune.main, finetune_args(p1_root, out) + ["--resume"])
    assert f"batch {stopped['batch_in_epoch']}, step {stopped['step']}" in capsys.readouterr().out
    assert_same_run(out / "last.pt", finetune_reference)
    assert not list(out.glob(".*.tmp*")), "a temp file was left behind"


class _Draws(torch.utils.data.Dataset):
    """Each item: one draw of the torch RNG (as an augmentation would make) and the process that made it."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> tuple[float, int]:
        return torch.rand(()).item(), os.getpid()


def test_kept_loader_workers_see_each_epoch_and_draw_what_the_main_process_would():
    """The training loader's workers live across epochs (the same processes), yet every epoch brings its own
    order and per-sample seeds, and mid-epoch starts: with 2 workers the draws equal --workers 0, epoch by epoch."""
    def draws(workers: int) -> tuple[list[list[float]], list[set[int]]]:
        loader = loading.make_loader(_Draws(), 4, train=True, workers=workers, seed=5, world=distributed.World(),
                                     device=torch.device("cpu"))
        values, pids = [], []
        for epoch, start in ((0, 0), (1, 0), (2, 1)):
            loader.sampler.set_epoch(epoch, start)
            batches = list(loader)
            values.append([v for b in batches for v in b[0].tolist()])
            pids.append({p for b in batches for p in b[1].tolist()})
        return values, pids

    (main_values, main_pids), (kept_values, kept_pids) = draws(0), draws(2)
    assert kept_values == main_values
    assert len({tuple(v) for v in main_values}) == 3 and len(main_values[2]) == 8  # epochs differ; epoch 3 from batch 1
    assert main_pids == [{os.getpid()}] * 3
    assert len(kept_pids[0]) == 2 and kept_pids[0] == kept_pids[1] == kept_pids[2] and os.getpid() not in kept_pids[0]


def test_finetune_with_two_kept_workers_matches_the_in_process_run(p1_root, finetune_reference, tmp_path):
    """Two epochs with --workers 2 (workers kept across epochs) end at the weights of --workers 0."""
    out = tmp_path / "run"
    train_in_process(p1_finetune.main, finetune_args(p1_root, out, workers=2))
    assert_same_run(out / "last.pt", finetune_reference)


# ---------------------------------------------------------------- atomic outputs


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path):
    """A write that fails midway (here: an exception; a kill works the same way) never replaces the old file."""
    table = tmp_path / "pred.csv"
    io.write_csv(table, ["id", "filename", "label"], [[0, "a.jpg", 1]])
    before = table.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        with io.atomic_path(table) as tmp:
            tmp.write_text("id,filename,la")
            raise RuntimeError("disk full")
    assert table.read_bytes() == before

    ckpt = tmp_path / "last.pt"
    checkpoint.save_checkpoint(ckpt, {"model": {"w": torch.ones(3)}})
    with pytest.raises(Exception):  # pickling fails after the tensors were written
        checkpoint.save_checkpoint(ckpt, {"model": {"w": torch.zeros(10_000)}, "hook": lambda: None})
    assert torch.load(ckpt, weights_only=True)["model"]["w"].tolist() == [1.0, 1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "pred.csv"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in (table, ckpt))  # not mkstemp's private 0600


@pytest.mark.parametrize("failure", ["ENOSPC", "torch's zip writer"])
def test_a_full_disk_is_one_error_line_and_keeps_the_previous_checkpoint(failure, tmp_path, monkeypatch):
    """torch.save on a full disk raises OSError(ENOSPC) or, from its zip writer, a RuntimeError ("unexpected
    pos ..."): both read as the disk being full, naming the file."""
    ckpt = tmp_path / "last.pt"
    checkpoint.save_checkpoint(ckpt, {"model": {"w": torch.ones(3)}})

    def full_disk_save(obj, f):
        with open(f, "wb") as out:
            out.write(b"PK partial")
        if failure == "ENOSPC":
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(io.shutil, "disk_usage", lambda _: SimpleNamespace(total=10**9, used=10**9, free=0))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8822848 vs 8822744")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk_save)
    with pytest.raises(UserError) as err:
        checkpoint.save_checkpoint(ckpt, {"model": {"w": torch.zeros(3)}})
    assert err.value.line().startswith(f"error: {ckpt}: not written: the disk is full"), err.value.line()
    monkeypatch.undo()
    assert torch.load(ckpt, weights_only=True)["model"]["w"].tolist() == [1.0, 1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


def test_hw1_2_sh_never_leaves_a_partial_mask_and_a_rerun_overwrites_cleanly(tiny_data, seg_checkpoint, tmp_path,
                                                                             capsys):
    sat, out = tmp_path / "sat", tmp_path / "masks"
    sat.mkdir()
    sources = sorted((tiny_data / "p2_data" / "validation").glob("*_sat.jpg"))[:3]
    for src in sources:
        shutil.copy(src, sat / src.name)
    bad = sat / sources[2].name
    bad.write_bytes(sources[2].read_bytes()[:500])
    out.mkdir()
    (out / sources[0].name.replace("_sat.jpg", "_mask.png")).write_bytes(b"a stale, broken mask")

    # The third image is unreadable: the run stops with one error line; what it wrote is whole, nothing is half.
    with pytest.raises(SystemExit) as exc:
        run_main(p2_inference.main)([str(sat), str(out), "--checkpoint", str(seg_checkpoint), "--batch-size", "1",
                                     "--workers", "0", "--device", "cpu"])
    assert exc.value.code == 2 and f"error: {bad}: unreadable image" in capsys.readouterr().err
    masks = sorted(p.name for p in out.iterdir())
    assert masks == [s.name.replace("_sat.jpg", "_mask.png") for s in sources[:2]]
    for name in masks:
        Image.open(out / name).load()  # complete PNGs

    # The real grading command over the same folder once the image is fixed: every mask, cleanly overwritten.
    shutil.copy(sources[2], bad)
    proc = run(["bash", "hw1_2.sh", str(sat), str(out)], env_extra={"P2_CHECKPOINT": str(seg_checkpoint)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [s.name.replace("_sat.jpg", "_mask.png") for s in sources]
    for src in sources:
        with Image.open(out / src.name.replace("_sat.jpg", "_mask.png")) as mask, Image.open(src) as image:
            assert mask.mode == "RGB" and mask.size == image.size
