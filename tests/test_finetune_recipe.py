"""p1_finetune.py --recipe and its pieces: the BN-MLP head on a frozen backbone (trained, graded by p1_inference.py),
TrivialAugmentWide, mixup/CutMix, label smoothing, the EMA of the weights (evaluated, kept as best.pt, resumed), a
lower backbone learning rate (kept on resume), and reproduce.py --recipe strong."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

import p1_finetune
import p1_inference
import reproduce
from hw1 import data, finetune_recipe, io, optim
from hw1.errors import UserError
from hw1.finetune_recipe import RECIPES, FinetuneRecipe
from hw1.report import Layout, write_report
from conftest import P1_SMALL


def finetune(root: Path, out: Path, setting: str, backbone: Path | None, *extra: str) -> None:
    p1_finetune.main(["--setting", setting, "--data-root", str(root), "--out", str(out), *P1_SMALL, "--device", "cpu",
                      "--results", str(out / "results.csv"), "--batch-size", "32",
                      *(["--backbone", str(backbone)] if backbone else []), *extra])


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
    model, _ = p1_inference.load_classifier(tmp_path / "best.pt", torch.device("cpu"))
    with open(tmp_path / "pred.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val = data.office_dataset(tiny_data, "val", data.classify_eval_transform(32))
    with torch.no_grad():
        expected = model(torch.stack([val[i][0] for i in range(len(val))])).argmax(1).tolist()
    assert [int(r["label"]) for r in rows] == expected


@pytest.mark.parametrize("gpu_aug", [False, True])
def test_full_fine_tuning_pieces_on_both_view_paths(gpu_aug: bool, tiny_data: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """TrivialAugmentWide (in the loader, or per image on the device), mixup/CutMix (soft targets), label smoothing
    and the EMA: best.pt holds the EMA's weights, last.pt the live ones and the EMA."""
    calls = {"trivial": 0, "soft_targets": 0}
    real_trivial, real_ce = finetune_recipe.trivial_augment_batch, p1_finetune.F.cross_entropy

    def trivial(images: torch.Tensor) -> torch.Tensor:
        calls["trivial"] += 1
        return real_trivial(images)

    def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, **kw: float) -> torch.Tensor:
        calls["soft_targets"] += targets.dim() == 2 and kw.get("label_smoothing") == 0.1
        return real_ce(logits, targets, **kw)

    monkeypatch.setattr(finetune_recipe, "trivial_augment_batch", trivial)
    monkeypatch.setattr(p1_finetune.F, "cross_entropy", cross_entropy)
    finetune(tiny_data, tmp_path, "A", None, "--gpu-aug" if gpu_aug else "--no-gpu-aug", "--augment",
             "trivialaugment", "--mix", "mixup-cutmix", "--label-smoothing", "0.1", "--ema-decay", "0.9",
             "--epochs", "1", "--max-steps", "3")
    assert calls == {"trivial": 3 if gpu_aug else 0, "soft_targets": 3}
    best = torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert int(last["ema"]["n_averaged"]) == 3
    assert all(torch.equal(best[k], last["ema"][f"module.{k}"]) for k in best)
    assert not torch.equal(best["net.fc.weight"], last["model"]["net.fc.weight"])


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


def test_reproduce_recipe_strong_runs_beside_the_seed_stages(tmp_path: Path) -> None:
    """Same pre-training stages; fine-tuning and t-SNE under their own names and folders, each with --recipe
    strong; the seed plan is unchanged."""
    def plan(recipe: str) -> dict:
        args = argparse.Namespace(preset="fashion", data_root=str(tmp_path / "data"), device="cpu", seed=0,
                                  sam_checkpoint=None, sam_model_type=None)
        return {s.name: s for s in reproduce.plan(args, Layout(tmp_path / "runs", recipe))}

    seed, strong = plan("seed"), plan("strong")
    assert "fine-tune E" in seed and "fine-tune E (strong)" in strong and "t-SNE (strong)" in strong
    assert seed["pre-train BYOL"].command() == strong["pre-train BYOL"].command()
    e = strong["fine-tune E (strong)"]
    assert e.run_dir == tmp_path / "runs" / "finetune_E_strong" and "--recipe strong" in e.command()
    assert "--recipe" not in seed["fine-tune E"].command() and seed["fine-tune E"].run_dir.name == "finetune_E"
    assert strong["t-SNE (strong)"].needs[-1] == "fine-tune C (strong)"


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
