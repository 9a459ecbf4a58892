"""Defects of the CUDA path, reproduced on the CPU: a resume into channels_last parameters, a GPU that this torch
build cannot drive, the kNN monitor's precision, a rank without a batch. (Per-rank dropout streams: ddp_checks.py.)"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import p1_pretrain
from hw1.data import cache
from hw1.data.cache import CacheConfig
from hw1.errors import UserError
from hw1.p1.pretraining import KnnMonitor, PretrainConfig
from hw1.train import distributed, optim
from hw1.train.distributed import World
from hw1.train.loading import EpochSampler


def test_optimizer_state_restored_into_channels_last_parameters_takes_their_layout() -> None:
    """A CPU run's (contiguous) AdamW moments, loaded into the channels_last model a GPU resume builds."""
    recipe = {"lr": 1e-3, "weight_decay": 0.05, "betas": (0.9, 0.999), "fused": False}
    saved_model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
    saved_opt = optim.build_optimizer(list(saved_model.parameters()), **recipe)
    saved_model(torch.randn(2, 3, 8, 8)).sum().backward()
    saved_opt.step()
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8),
                          nn.Conv2d(8, 4, 1)).to(memory_format=torch.channels_last)
    model.load_state_dict(saved_model.state_dict())
    opt = optim.build_optimizer(list(model.parameters()), **recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, optim.warmup_cosine_lambda(1, 10))
    optim.restore(opt, scheduler, {"optimizer": saved_opt.state_dict(), "lr_scheduler": scheduler.state_dict()}, 1e-3)
    conv = model[0].weight  # 3x3: channels_last differs from contiguous (a 1x1 kernel is both)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for p in model.parameters():
        for key in ("exp_avg", "exp_avg_sq"):
            moment = opt.state[p][key]
            assert moment.stride() == p.stride(), (key, tuple(p.shape))
            assert torch.equal(moment, saved_opt.state[saved_model_param(saved_model, model, p)][key])


def saved_model_param(saved: nn.Module, model: nn.Module, p: nn.Parameter) -> nn.Parameter:
    names = {id(q): n for n, q in model.named_parameters()}
    return dict(saved.named_parameters())[names[id(p)]]


@pytest.fixture
def gpu_but_old_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU the kernel driver shows, and a CUDA 13.0 torch whose CUDA start-up fails as it does with a driver too
    old for it (torch warns, then reports no CUDA)."""
    def is_available() -> bool:
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 12020).")
        return False

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(distributed, "gpu_device_present", lambda: True)


LINE = "a GPU is present, but this torch build (CUDA 13.0) cannot use its driver (CUDA initialization: The NVIDIA " \
       "driver on your system is too old (found version 12020).)"
FIX = "use the course stack (requirements-course.txt: torch 2.4.0, CUDA 12.1, drivers 525.60 and newer), or install " \
      "a torch build that matches the driver (nvidia-smi shows its CUDA version)"


def test_gpu_with_a_driver_too_old_is_named_under_auto(gpu_but_old_driver: None, capsys: pytest.CaptureFixture) -> None:
    assert distributed.setup_device("auto") == torch.device("cpu")
    out, err = capsys.readouterr()
    assert (err.splitlines() == [f"warning: --device auto: {LINE}; running on the CPU — {FIX}"]
            and "no CUDA GPU" not in out)


def test_gpu_with_a_driver_too_old_is_one_error_under_cuda(gpu_but_old_driver: None) -> None:
    with pytest.raises(UserError) as err:
        distributed.setup_device("cuda")
    assert err.value.line() == f"error: --device cuda: {LINE} — {FIX}"


def test_no_gpu_at_all_keeps_the_plain_note(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed, "gpu_device_present", lambda: False)
    assert distributed.setup_device("auto") == torch.device("cpu")
    assert capsys.readouterr().out == "note: --device auto: no CUDA GPU is visible; running on the CPU\n"
    with pytest.raises(UserError, match="CUDA was requested but no GPU is visible"):
        distributed.setup_device("cuda")


def test_knn_monitor_runs_the_backbone_in_fp32_under_training_autocast(tiny_data: Path, tmp_path: Path) -> None:
    """The engine evaluates under the run's autocast (bf16 here, as on a GPU); the monitor's backbone must not."""
    args = p1_pretrain.get_args_parser().parse_args(["--data-root", str(tiny_data), "--out", str(tmp_path), "--arch",
                                                     "resnet18", "--image-size", "32", "--no-cache", "--device", "cpu"])
    evaluate = KnnMonitor.build(PretrainConfig.from_args(args), CacheConfig.from_args(args), World(),
                                torch.device("cpu"), torch.channels_last)
    backbone = torchvision.models.resnet18(num_classes=8).to(memory_format=torch.channels_last).eval()
    seen: list[torch.dtype] = []
    for conv in (backbone.conv1, backbone.layer4[-1].conv2):
        conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        result = evaluate(backbone)
    assert seen and set(seen) == {torch.float32}
    assert 0.0 <= result["knn_acc"] <= 1.0


@pytest.mark.parametrize("size, world, empty_rank", [(5, 4, 3), (3, 4, 3), (1, 2, 1)])
def test_a_rank_without_a_batch_is_one_error_on_every_rank(size: int, world: int, empty_rank: int) -> None:
    for rank in range(world):  # each rank computes the same refusal, before any collective could hang
        with pytest.raises(UserError) as err:
            EpochSampler(size, 8, shuffle=True, seed=0, world=World(rank, world, rank), drop_last=True)
        assert err.value.line() == (
            f"error: --batch-size: the training set's {size} images fill less than one global batch of 8; split across "
            f"{world} processes, rank {empty_rank} gets none — train on more images, or with fewer processes")


def test_every_rank_with_a_share_trains() -> None:
    """6 images on 4 ranks: 2, 2, 2, 0 by the split — refused; 8 or more: full batches, no refusal."""
    with pytest.raises(UserError):
        EpochSampler(6, 8, shuffle=True, seed=0, world=World(0, 4, 0), drop_last=True)
    sampler = EpochSampler(8, 8, shuffle=True, seed=0, world=World(3, 4, 3), drop_last=True)
    assert len(list(sampler)) == 2
    # evaluation
    assert len(list(EpochSampler(5, 8, shuffle=False, seed=0, world=World(3, 4, 3), drop_last=False))) == 0


def test_waiting_ranks_wait_for_the_cache_as_long_as_it_takes_and_say_so(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """Not at NCCL's barrier (10 minutes, then a crash): for the file rank 0 renames into place, with a note."""
    target = tmp_path / "office_train-128px-key.npy"
    threading.Timer(0.4, target.write_bytes, args=(b"done",)).start()
    cache.wait_for_build(target, "office_train", 3951, poll_s=0.02, say_every_s=0.1)
    assert ("note: waiting for rank 0 to build the decoded-image cache of office_train (3951 images)"
            in capsys.readouterr().out)
    monkeypatch.setattr(cache, "WAIT_S", 0.1)
    with pytest.raises(UserError, match="rank 0 did not finish the decoded-image cache of mini_train"):
        cache.wait_for_build(tmp_path / "never.npy", "mini_train", 0, poll_s=0.02)
