"""p1_finetune.py --recipe and its pieces: the BN-MLP head on a frozen backbone (trained, graded by p1_inference.py),
TrivialAugmentWide, mixup/CutMix, label smoothing, the EMA of the weights (evaluated, kept as best.pt, resumed; its
update against the formula), a lower backbone learning rate (kept on resume), a resume that changes a piece (a warning,
or one error line where the checkpoint cannot follow), and reproduce.py --recipe strong."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import P1_SMALL, drop_checkpoints, fixture_dir
from torchvision.transforms import v2

import p1_finetune
import p1_inference
import reproduce
from hw1 import io
from hw1.data import folders as data
from hw1.errors import UserError, run_main
from hw1.p1 import finetune_recipe
from hw1.p1.finetune_recipe import RECIPES, FinetuneRecipe
from hw1.p1.models import Classifier
from hw1.report.markdown import Layout, write_report
from hw1.report.presets import PRESETS, shared_with_seed
from hw1.train import checkpoint, engine, optim, precision
from hw1.train import state as train_state


def finetune_argv(root: Path, out: Path, setting: str, backbone: Path | None, *extra: str) -> list[str]:
    return ["--setting", setting, "--data-root", str(root), "--out", str(out), *P1_SMALL, "--device", "cpu",
            "--results", str(out / "results.csv"), "--batch-size", "32",
            *(["--backbone", str(backbone)] if backbone else []), *extra]


def finetune(root: Path, out: Path, setting: str, backbone: Path | None, *extra: str) -> None:
    p1_finetune.main(finetune_argv(root, out, setting, backbone, *extra))


def resolve(*argv: str, frozen: bool, pretrained: bool = True) -> FinetuneRecipe:
    args = p1_finetune.get_args_parser().parse_args(["--setting", "A", *argv])
    return finetune_recipe.from_args(args, frozen, pretrained)


def test_seed_is_the_default_and_strong_gives_the_frozen_settings_the_mlp_head() -> None:
    assert resolve(frozen=True) == resolve(frozen=False) == FinetuneRecipe() == RECIPES["seed"]
    assert resolve("--recipe", "strong", frozen=True).head == "mlp"
    assert resolve("--recipe", "strong", frozen=False).head == "linear"  # full fine-tuning keeps torchvision's fc
    picked = resolve("--recipe", "strong", "--head", "linear", "--label-smoothing", "0.2", frozen=True)
    assert (picked.head, picked.label_smoothing) == ("linear", 0.2)  # a piece's flag overrides the recipe
    assert resolve("--backbone-lr-scale", "0.1", frozen=False, pretrained=False).backbone_lr_scale == 0.1
    for flag, value in (("--label-smoothing", "1.5"), ("--ema-decay", "1.0"), ("--backbone-lr-scale", "0")):
        with pytest.raises(UserError, match=flag):
            resolve(flag, value, frozen=False)


def test_mlp_head_trains_on_a_frozen_backbone_and_inference_rebuilds_it(tiny_data: Path, p1_backbone: Path,
                                                                         tmp_path: Path) -> None:
    """E --recipe strong: Linear(512, 4096) → BN → ReLU → Linear(65); the backbone's weights and BN statistics stay
    bit-identical, the head's BN statistics move; hw1_1.sh's p1_inference.py predicts what the model does."""
    finetune(tiny_data, tmp_path, "E", p1_backbone, "--recipe", "strong", "--epochs", "1", "--max-steps", "3")
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    assert ckpt["meta"]["head"] == "mlp" and ckpt["meta"]["recipe"] == "strong"
    weights = ckpt["model"]
    assert weights["net.fc.0.weight"].shape == (4096, 512) and weights["net.fc.3.weight"].shape == (65, 4096)
    assert weights["net.fc.1.running_mean"].abs().sum() > 0  # the head's BN trained (it starts at zero)
    backbone = torch.load(p1_backbone, weights_only=True)
    assert all(torch.equal(backbone[k], weights[f"net.{k}"]) for k in backbone)

    office = tiny_data / "p1_data" / "office"
    p1_inference.main(["--csv", str(office / "val.csv"), "--image-dir", str(office / "val"), "--out",
                       str(tmp_path / "pred.csv"), "--checkpoint", str(tmp_path / "best.pt"), "--device", "cpu",
                       "--workers", "0"])
    with open(tmp_path / "pred.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val = data.office_dataset(tiny_data, "val", data.classify_eval_transform(32))
    images = torch.stack([val[i][0] for i in range(len(val))])
    assert [int(r["label"]) for r in rows] == mlp_head_by_hand(weights, images).argmax(1).tolist()


def mlp_head_by_hand(weights: dict, images: torch.Tensor) -> torch.Tensor:
    """A checkpoint's resnet18 + BN-MLP head, rebuilt from its tensors without hw1.p1.models: torchvision's backbone,
    then Linear → BatchNorm1d (eval: running statistics) → ReLU → Linear written out."""
    backbone = torchvision.models.resnet18()
    backbone.fc = torch.nn.Identity()
    backbone.load_state_dict({k[len("net."):]: v for k, v in weights.items() if not k.startswith("net.fc.")})
    w = {k[len("net.fc."):]: v for k, v in weights.items() if k.startswith("net.fc.")}
    with torch.no_grad():
        hidden = F.linear(backbone.eval()(images), w["0.weight"], w["0.bias"])
        hidden = (hidden - w["1.running_mean"]) / torch.sqrt(w["1.running_var"] + 1e-5) * w["1.weight"] + w["1.bias"]
        return F.linear(hidden.clamp(min=0), w["3.weight"], w["3.bias"])


@pytest.mark.parametrize("gpu_aug", [False, True])
def test_full_fine_tuning_pieces_on_both_view_paths(gpu_aug: bool, tiny_data: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """TrivialAugmentWide (in the loader, or per image on the device), mixup/CutMix (soft targets), label smoothing
    and the EMA: the EMA is what is evaluated (val_acc in log.csv and --results is its score), best.pt holds its
    weights, last.pt the live ones and the EMA."""
    calls = {"trivial": 0, "soft_targets": 0}
    evaluated: list[tuple[bool, dict]] = []  # per evaluation: whether fit handed it the EMA, and the scores
    real_fit = engine.fit

    def fit(cfg: object, task: engine.Task, *args: object) -> list[dict]:
        evaluate = task.evaluate

        def recorded(m: torch.nn.Module, epoch: int) -> dict:
            evaluated.append((m is task.ema.module, evaluate(m, epoch)))
            return evaluated[-1][1]

        task.evaluate = recorded
        return real_fit(cfg, task, *args)

    real_trivial, real_ce = finetune_recipe.trivial_augment_batch, p1_finetune.F.cross_entropy

    def trivial(images: torch.Tensor) -> torch.Tensor:
        calls["trivial"] += 1
        return real_trivial(images)

    def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, **kw: float) -> torch.Tensor:
        calls["soft_targets"] += targets.dim() == 2 and kw.get("label_smoothing") == 0.1
        return real_ce(logits, targets, **kw)

    monkeypatch.setattr(finetune_recipe, "trivial_augment_batch", trivial)
    monkeypatch.setattr(p1_finetune.F, "cross_entropy", cross_entropy)
    monkeypatch.setattr(engine, "fit", fit)
    finetune(tiny_data, tmp_path, "A", None, "--gpu-aug" if gpu_aug else "--no-gpu-aug", "--augment",
             "trivialaugment", "--mix", "mixup-cutmix", "--label-smoothing", "0.1", "--ema-decay", "0.9",
             "--epochs", "1", "--max-steps", "3")
    assert calls == {"trivial": 3 if gpu_aug else 0, "soft_targets": 3}
    best = torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert int(last["ema"]["n_averaged"]) == 3
    assert all(torch.equal(best[k], last["ema"][f"module.{k}"]) for k in best)
    assert not torch.equal(best["net.fc.weight"], last["model"]["net.fc.weight"])
    assert [on_ema for on_ema, _ in evaluated] == [True]  # one epoch, one evaluation: of the EMA, not the live model
    score = evaluated[0][1]["val_acc"]
    logged = [float(r["val_acc"]) for r in io.read_csv_rows(tmp_path / "log.csv")]
    reported = [float(r["val_acc"]) for r in io.read_csv_rows(tmp_path / "results.csv")]
    assert logged == reported == [pytest.approx(score, abs=1e-4)]  # the CSVs keep 4 decimals
    assert score == pytest.approx(val_accuracy(best, tiny_data))


def val_accuracy(weights: dict, root: Path) -> float:
    """A setting-A resnet18's accuracy on the val images, computed with torchvision's model (batches of 32, as
    p1_finetune.py evaluates)."""
    model = torchvision.models.resnet18(num_classes=data.NUM_OFFICE_CLASSES)
    model.load_state_dict({k[len("net."):]: v for k, v in weights.items()})
    val = data.office_dataset(root, "val", data.classify_eval_transform(32))
    images, labels = (torch.stack([val[i][0] for i in range(len(val))]),
                      torch.tensor([val[i][1] for i in range(len(val))]))
    with torch.no_grad():
        predicted = torch.cat([model.eval()(images[i:i + 32]) for i in range(0, len(images), 32)]).argmax(1)
    return (predicted == labels).float().mean().item()


def test_loader_path_puts_trivial_augment_before_the_crop() -> None:
    transforms = data.classify_train_transform(32, trivial_augment=True).transforms
    assert isinstance(transforms[1], v2.TrivialAugmentWide) and isinstance(transforms[2], v2.RandomResizedCrop)
    assert not any(isinstance(t, v2.TrivialAugmentWide) for t in data.classify_train_transform(32).transforms)


def test_device_trivial_augment_draws_per_image() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).expand(16, -1, -1, -1)
    out = finetune_recipe.trivial_augment_batch(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert len({o.numpy().tobytes() for o in out}) > 4  # one op for the whole batch would give one image


def test_ema_resumes_where_it_stopped(tiny_data: Path, tmp_path: Path) -> None:
    """Two epochs in one run, or one then --resume one more: the same EMA and the same best.pt."""
    flags = ["--ema-decay", "0.9"]
    finetune(tiny_data, tmp_path / "once", "A", None, *flags, "--epochs", "2")
    finetune(tiny_data, tmp_path / "twice", "A", None, *flags, "--epochs", "2", "--max-steps", "3")
    finetune(tiny_data, tmp_path / "twice", "A", None, *flags, "--epochs", "2", "--resume")
    once, twice = (torch.load(tmp_path / r / "last.pt", weights_only=True)["ema"] for r in ("once", "twice"))
    assert once.keys() == twice.keys() and all(torch.allclose(once[k].float(), twice[k].float()) for k in once)


# ---------------------------------------------------------------- a resume that changes the recipe


@pytest.fixture(scope="module")
def ema_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A setting-A run with an EMA of the weights (--ema-decay 0.9), stopped after its first step."""
    with fixture_dir(tmp_path_factory, "ema_run") as out:
        finetune(tiny_data, out, "A", None, "--ema-decay", "0.9", "--epochs", "2", "--max-steps", "1")
        drop_checkpoints(out, keep=("last.pt",))
        yield out


def resume(run: Path, root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, *flags: str,
           edit: Callable[[dict], None] | None = None) -> tuple[int, list[str], Path]:
    """Resume a copy of `run` (its last.pt changed by `edit` first) with `flags`, as the command line would: the exit
    code, stderr's lines and the copy's last.pt."""
    out = tmp_path / "run"
    shutil.copytree(run, out)
    if edit:
        ckpt = torch.load(out / "last.pt", weights_only=True)
        edit(ckpt)
        torch.save(ckpt, out / "last.pt")
    capsys.readouterr()
    try:
        run_main(p1_finetune.main)(finetune_argv(root, out, "A", None, "--epochs", "2", "--resume", *flags))
        code = 0
    except SystemExit as stop:
        code = stop.code  # type: ignore[assignment]
    return code, capsys.readouterr().err.strip().splitlines(), out / "last.pt"


def test_every_recipe_piece_is_a_recipe_key() -> None:
    pieces = {f.name for f in dataclasses.fields(FinetuneRecipe)}
    assert pieces | {"recipe"} <= set(checkpoint.RECIPE_KEYS) and "head" in checkpoint.SHAPE_KEYS


def test_resume_with_another_label_smoothing_warns_and_applies_it(ema_run: Path, tiny_data: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    smoothing = []
    real_ce = p1_finetune.F.cross_entropy

    def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, **kw: float) -> torch.Tensor:
        smoothing.append(kw["label_smoothing"])
        return real_ce(logits, targets, **kw)

    monkeypatch.setattr(p1_finetune.F, "cross_entropy", cross_entropy)
    code, err, last = resume(ema_run, tiny_data, tmp_path, capsys, "--ema-decay", "0.9", "--label-smoothing", "0.1",
                             "--max-steps", "2")
    assert code == 0 and smoothing == [0.1]
    assert f"warning: {last}: resuming with other hyper-parameters: --label-smoothing 0.0→0.1 (the new values apply " \
           "from here on)" in err
    assert torch.load(last, weights_only=True)["args"]["label_smoothing"] == 0.1


@pytest.mark.parametrize("recorded", ["as it ran", "left to the recipe"])
def test_resume_with_another_head_stops_naming_the_flag_and_the_checkpoints_head(
        recorded: str, ema_run: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The weights' shapes differ: one error line. A last.pt written before the recipe's pieces were recorded as they
    ran has None for --head: its meta's head is the one named."""
    def legacy(ckpt: dict) -> None:
        ckpt["args"].update(head=None, label_smoothing=None, ema_decay=0.9)

    code, err, last = resume(ema_run, tiny_data, tmp_path, capsys, "--ema-decay", "0.9", "--head", "mlp",
                             edit=legacy if recorded == "left to the recipe" else None)
    assert code == 2 and err == [f"error: --head: {last} was trained with --head linear; --head mlp has weights of "
                                 "other shapes — resume with --head linear, or train anew in another --out"]


def test_resume_without_the_ema_stops_rather_than_drop_it(ema_run: Path, tiny_data: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """The checkpoint's best score is the EMA's: going on without it would drop the average and compare the live
    model's scores with that best. The reverse (an EMA asked of a checkpoint without one) stops too."""
    code, err, last = resume(ema_run, tiny_data, tmp_path, capsys)
    assert code == 2 and err == [f"error: --ema-decay: {last} holds an EMA of the weights (--ema-decay 0.9), whose "
                                 "score is the run's best: without --ema-decay this run would drop it — resume with "
                                 "--ema-decay 0.9"]
    assert (last.read_bytes() == (ema_run / "last.pt").read_bytes())  # untouched, EMA and all
    shutil.rmtree(last.parent)
    code, err, last = resume(ema_run, tiny_data, tmp_path, capsys, "--ema-decay", "0.9", edit=lambda c: c.pop("ema"))
    assert code == 2 and err == [f"error: --ema-decay: {last} holds no EMA of the weights for --ema-decay 0.9 to go "
                                 "on from (its best score is the live model's) — resume without --ema-decay, or train "
                                 "anew in another --out"]


def test_resume_with_other_optimiser_groups_names_the_flag(ema_run: Path, tiny_data: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """--backbone-lr-scale 1.0 → 0.1 splits the optimiser's groups, which the checkpoint's state cannot fill."""
    code, err, last = resume(ema_run, tiny_data, tmp_path, capsys, "--ema-decay", "0.9", "--backbone-lr-scale", "0.1")
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {last}: does not fit this run (")
    assert err[0].endswith("— resume with the flags it was trained with (--backbone-lr-scale 1.0)")


def test_backbone_lr_scale_makes_groups_that_resume_keeps() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    params = list(model.parameters())
    scales = [0.1, 0.1, 1.0, 1.0]  # the first layer as a "backbone"
    opt = optim.build_optimizer(params, lr=1e-2, weight_decay=0.05, betas=(0.9, 0.999), fused=False,
                                lr_scales=scales)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups] == [
        (pytest.approx(1e-3), 0.05, 1), (pytest.approx(1e-3), 0.0, 1), (1e-2, 0.05, 1), (1e-2, 0.0, 1)]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, optim.warmup_cosine_lambda(2, 10))
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    sched.step()
    saved = {"optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict()}
    fresh = optim.build_optimizer(params, lr=2e-2, weight_decay=0.05, betas=(0.9, 0.999), fused=False,
                                  lr_scales=scales)
    fresh_sched = torch.optim.lr_scheduler.LambdaLR(fresh, optim.warmup_cosine_lambda(2, 10))
    optim.restore(fresh, fresh_sched, saved, 2e-2)  # resumed under a new --lr: the scales hold
    assert [g["initial_lr"] for g in fresh.param_groups] == pytest.approx([2e-3, 2e-3, 2e-2, 2e-2])
    fresh_sched.step()
    assert fresh.param_groups[0]["lr"] == pytest.approx(0.1 * fresh.param_groups[2]["lr"])


def test_p1_finetune_gives_the_head_the_full_lr_and_the_backbone_its_scale(tiny_data: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """--backbone-lr-scale 0.1: the optimiser p1_finetune.py's task makes holds the classifier's weight and bias at
    --lr, every other parameter at a tenth of it, each in a group of its own rate."""
    built: dict = {}
    monkeypatch.setattr(engine, "fit", lambda cfg, task, *args: built.update(cfg=cfg, task=task) or [])
    finetune(tiny_data, tmp_path, "A", None, "--backbone-lr-scale", "0.1", "--lr", "1e-3")
    cfg, task, cpu = built["cfg"], built["task"], torch.device("cpu")
    state = train_state.fresh(task.model, cfg, 10, precision.resolve("fp32", cpu), cpu, False, task.lr_scale)
    name = {id(p): n for n, p in task.model.named_parameters()}
    lr = {name[id(p)]: (g["initial_lr"], g["lr_scale"]) for g in state.optimizer.param_groups for p in g["params"]}
    head = {"net.fc.weight", "net.fc.bias"}
    assert lr == {n: (1e-3, 1.0) if n in head else (pytest.approx(1e-4), 0.1) for n, _ in task.model.named_parameters()}
    assert all(len({name[id(p)] in head for p in g["params"]}) == 1 for g in state.optimizer.param_groups)


def trained_ema_pair(frozen: bool) -> tuple[torch.nn.Module, finetune_recipe.WeightEMA]:
    torch.manual_seed(0)
    model = Classifier("resnet18", 5, frozen=frozen, head="mlp", hidden=16)
    return model, finetune_recipe.WeightEMA(model, decay=0.5)


def step_the_model(model: torch.nn.Module) -> None:
    """A stand-in for an optimiser step: the trainable weights move, and a forward in train mode moves the BN
    statistics (the head's only, when the backbone is frozen)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p), alpha=0.1)
        model.train()(torch.randn(4, 3, 32, 32))


@pytest.mark.parametrize("frozen", [False, True])
def test_weight_ema_follows_the_formula_and_a_frozen_backbone_is_its_own_average(frozen: bool) -> None:
    """ema = d·ema + (1 − d)·current on the trainable parameters and the BN statistics, d = min(decay, (1 + n) /
    (10 + n)), the first update a copy; a frozen backbone's tensors (and counters) are the live ones, not copies."""
    model, ema = trained_ema_pair(frozen)
    live = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
    mine = dict(itertools.chain(ema.module.named_parameters(), ema.module.named_buffers()))
    assert mine.keys() == live.keys()
    averaged = {n for n, t in live.items() if t.is_floating_point() and (not frozen or n.startswith("net.fc."))}
    assert frozen == (len(averaged) == 8)  # frozen: the head's two Linear, its BN's weight, bias and statistics
    reference: dict[str, torch.Tensor] = {}
    for n in range(12):  # the decay reaches 0.5 at n = 8
        step_the_model(model)
        ema.update()
        d = min(0.5, (1 + n) / (10 + n)) if n else 0.0
        reference = {k: d * reference[k] + (1 - d) * live[k].double() if n else live[k].double().clone()
                     for k in averaged}
        for k in averaged:
            assert mine[k].data_ptr() != live[k].data_ptr()
            torch.testing.assert_close(mine[k].double(), reference[k], rtol=1e-6, atol=1e-6)
    assert int(ema.state_dict()["n_averaged"]) == 12
    for k in live.keys() - averaged:  # frozen weights, their BN statistics, num_batches_tracked: shared
        assert mine[k].data_ptr() == live[k].data_ptr() and torch.equal(mine[k], live[k])
    assert not torch.equal(mine["net.fc.1.running_mean"], live["net.fc.1.running_mean"])


def test_weight_ema_update_reads_no_tensor_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, reading a tensor's value on the host waits for the device: the update reads none (torch's
    AveragedModel read its step count twice per tensor)."""
    _, ema = trained_ema_pair(frozen=False)

    def host_read(*args: object) -> None:
        raise AssertionError("the EMA update read a tensor's value on the host")

    for name in ("__bool__", "__float__", "__int__", "__index__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    for _ in range(3):
        ema.update()
    monkeypatch.undo()
    assert int(ema.n_averaged) == 3


def test_weight_ema_loads_a_last_pt_written_by_averaged_model() -> None:
    """last.pt's "ema" before WeightEMA was torch's AveragedModel state (module.*, n_averaged): it loads, and the
    EMA counts on from its n_averaged."""
    model, ema = trained_ema_pair(frozen=True)
    old = torch.optim.swa_utils.AveragedModel(model, use_buffers=True)
    for _ in range(3):
        step_the_model(model)
        old.update_parameters(model)
    saved = {k: v.clone() for k, v in old.state_dict().items()}
    ema.load_state_dict(saved)
    assert ema.updates == 3 and all(torch.equal(v, ema.state_dict()[k]) for k, v in saved.items())


def test_reproduce_recipe_strong_runs_beside_the_seed_stages(tmp_path: Path) -> None:
    """Same pre-training stages; the probes' fine-tuning under their own names and folders, each with --recipe
    strong; A–C and the t-SNE of C are the seed's stages (strong fine-tunes them with the seed's flags); the seed
    plan is unchanged."""
    def plan(recipe: str) -> dict:
        args = argparse.Namespace(preset="fashion", data_root=str(tmp_path / "data"), device="cpu", seed=0,
                                  sam_checkpoint=None, sam_model_type=None)
        layout = Layout(tmp_path / "runs", recipe, shared_with_seed(PRESETS["fashion"]))
        return {s.name: s for s in reproduce.plan(args, layout)}

    seed, strong = plan("seed"), plan("strong")
    assert "fine-tune E" in seed and "fine-tune E (strong)" in strong and "t-SNE (strong)" not in strong
    assert seed["pre-train BYOL"].command() == strong["pre-train BYOL"].command()
    e = strong["fine-tune E (strong)"]
    assert e.run_dir == tmp_path / "runs" / "finetune_E_strong" and "--recipe strong" in e.command()
    assert "--recipe" not in seed["fine-tune E"].command() and seed["fine-tune E"].run_dir.name == "finetune_E"
    for name in ("fine-tune A", "fine-tune B", "fine-tune C", "t-SNE"):
        assert strong[name].command() == seed[name].command() and strong[name].run_dir == seed[name].run_dir
    assert [n for n in strong if "(strong)" in n] == ["fine-tune D (strong)", "fine-tune E (strong)",
                                                      "fine-tune E0 (strong)"]


def test_report_shows_the_other_recipe_beside_the_seed(tiny_data: Path, tmp_path: Path) -> None:
    """A seed run and a strong run in one runs folder: the A–E table gets a strong column, results.json p1_strong."""
    from test_analysis_report import fabricate_runs, fabricated_info

    layout = Layout(tmp_path / "runs")
    fabricate_runs(layout, tiny_data)
    for setting, acc in (("D", 0.61), ("E", 0.71)):
        io.append_csv_row(layout.p1_results, {"setting": setting, "recipe": "strong", "val_acc": acc,
                                              "best_val_acc": acc, "epochs": 2})
    report = write_report(layout, tmp_path / "report", fabricated_info(tiny_data))
    text = report.read_text()
    assert "Fine-tuning recipe: **seed**" in text and " strong recipe (final) |" in text
    row = next(line for line in text.splitlines() if line.startswith("| E | "))
    assert row.endswith(" 0.7100 |")
    results = json.loads((report.parent / "results.json").read_text())
    assert results["p1_strong"] == {"D": {"val_acc": 0.61, "best_val_acc": 0.61},
                                    "E": {"val_acc": 0.71, "best_val_acc": 0.71}}
    assert "recipe" not in results and results["p1"]["E"]["val_acc"] != 0.71  # the seed's numbers stay the run's


def test_recipe_bench_compares_each_variant_with_the_seed_recipe_on_the_same_seeds() -> None:
    from benchmarks import recipe_bench

    rows = [{"variant": v, "setting": "E", "seed": k, "val_acc": a}
            for v, k, a in (("seed", "0", "0.5"), ("seed", "1", "0.7"), ("strong", "0", "0.6"))]
    text = recipe_bench.table(rows, ["seed", "strong"], ["E"])
    assert "| seed | 0.600 n=2 |" in text and "| strong | 0.600 (+0.100) n=1 |" in text  # paired on seed 0 only
