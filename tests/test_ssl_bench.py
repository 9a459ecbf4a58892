"""benchmarks/ssl_bench.py: the side by side is fair (one start, the same heads and schedule, equal views make equal
computations), and its table says where a curve crosses its start."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import ssl_bench as ssl
from hw1.train import distributed

SMALL = ["--arch", "resnet18", "--image-size", "32", "--batch-size", "8", "--projection-hidden-size", "64",
         "--workers", "0", "--device", "cpu", "--lr", "1e-3", "--warmup-steps", "1"]


def _args(data: Path, *extra: str):
    return ssl.get_args_parser().parse_args(["--data-root", str(data), *SMALL, *extra])


def _run(row: ssl.Row, data: Path, tmp_path: Path, steps: int = 2, seed: int = 0, *extra: str) -> ssl.RowRun:
    args = _args(data, "--steps", str(steps), *extra)
    return ssl.RowRun(row, args, seed, torch.device("cpu"), ssl.start_state(args, seed), steps, None,
                      tmp_path / f"{row.label}-{seed}")


def _start_tensors(run: ssl.RowRun) -> dict[str, torch.Tensor]:
    """Online and target network (buffers included, no `fc`), projector and predictor, by name."""
    model = run.model
    out = {}
    for prefix, module in (("net", model.online_encoder.net), ("target", model.target_encoder.net),
                           ("projector", model.online_encoder.projector), ("predictor", model.online_predictor),
                           ("target_projector", model.target_encoder.projector)):
        out.update({f"{prefix}.{k}": v for k, v in module.state_dict().items() if not k.startswith("fc.")})
    return out


def test_rows_start_from_one_state_with_the_same_heads(tiny_data, tmp_path):
    """Every fair row: identical weights and BatchNorm buffers at step 0, the same head sizes, no simplicial
    embeddings; byol-pytorch's constructor probe (which moves its buffers) leaves no trace."""
    runs = {name: _run(ssl.ROWS[name], tiny_data, tmp_path) for name in ("ours-per-image", "byol-pytorch-equal",
                                                                         "byol-pytorch-own")}
    ours = _start_tensors(runs["ours-per-image"])
    assert any(".running_var" in k for k in ours) and any(k.startswith("target_projector") for k in ours)
    for name in ("byol-pytorch-equal", "byol-pytorch-own"):
        theirs = _start_tensors(runs[name])
        assert theirs.keys() == ours.keys(), name
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), f"{name}: {key} differs at the start"
        assert not runs[name].model.online_encoder.use_simplicial_embeddings
    readme = _run(ssl.ROWS["byol-pytorch-readme"], tiny_data, tmp_path).model
    assert readme.online_encoder.use_simplicial_embeddings and readme.online_encoder.projection_hidden_size == 4096
    shared = {k: v for k, v in readme.online_encoder.net.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(v, ours[f"net.{k}"]) for k, v in shared.items())


def test_batched_pair_with_the_small_stem_shares_its_start_and_views(tiny_data, tmp_path):
    """The GPU's pair: byol-pytorch fed our batched views through its hooks, on the 32 px field's stem (3x3 stride 1,
    no max-pool) in both networks; one start, and the same views at a step."""
    runs = [_run(ssl.ROWS[name], tiny_data, tmp_path, 2, 0, "--stem", "small")
            for name in ("ours-batched", "byol-pytorch-equal-batched")]
    ours, theirs = (_start_tensors(run) for run in runs)
    assert ours["net.conv1.weight"].shape[-2:] == (3, 3) and ours["target.conv1.weight"].shape[-2:] == (3, 3)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours) and ours.keys() == theirs.keys()
    for run in runs:
        assert isinstance(run.model.online_encoder.net.maxpool, torch.nn.Identity)
        run.before_step(5)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    views = [[hook(images) for hook in (run.model.augment1, run.model.augment2)] for run in runs]
    assert all(torch.equal(a, b) for a, b in zip(*views)) and not torch.equal(*views[0])


def test_equal_views_and_target_give_byol_pytorch_our_computation(tiny_data, tmp_path):
    """With our views and our target EMA, byol-pytorch's pipeline computes what ours does, step for step: what is
    left to differ in the side by side's equal-views pair is its fixed-decay target update."""
    losses, nets = {}, {}
    for name, row in (("ours", ssl.ROWS["ours-per-image"]),
                      ("theirs", ssl.Row("byol-pytorch, our views and EMA", ours=False, views="per-image",
                                         target="cosine"))):
        run = _run(row, tiny_data, tmp_path, steps=3)
        seen = []
        inner = run.loss
        run.loss = lambda model, batch, inner=inner, seen=seen: seen.append(inner(model, batch)) or seen[-1]
        run.fit()
        losses[name] = torch.stack([x.detach() for x in seen])
        nets[name] = {k: v for k, v in run.model.target_encoder.net.state_dict().items() if not k.startswith("fc.")}
    assert len(losses["ours"]) == 3
    torch.testing.assert_close(losses["ours"], losses["theirs"], rtol=1e-4, atol=1e-5)
    for key, value in nets["ours"].items():
        torch.testing.assert_close(value, nets["theirs"][key], rtol=1e-3, atol=1e-5, msg=key)


def test_learning_rate_and_target_ema_span_exactly_the_steps(tiny_data, tmp_path, monkeypatch):
    """The warm-up/cosine and the target decay end at --steps, not at the end of the epochs that hold them."""
    from hw1.p1.byol import ema_decay

    run = _run(ssl.ROWS["ours-per-image"], tiny_data, tmp_path, steps=3)
    assert run.loader.sampler.batches_per_epoch() * int(run.flags.epochs) > 3  # the epochs would span more
    assert run.ema.total_steps == 3 and ema_decay(3, 3, run.args.ema_start) == 1.0
    seen_lr = []
    original = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen_lr.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    run.fit()
    # warm-up 1 step, then cosine over steps 1..3: factors 1, 1, 0.5 (over the epochs' steps the third is near 1)
    assert seen_lr == pytest.approx([1e-3, 1e-3, 0.5e-3])


def test_curve_files_are_saved_and_kept_and_the_table_written(tiny_data, tmp_path, capsys):
    """One row end to end: kNN at 0 and every --eval-every, a saved curve not run again, the timing, the report."""
    out = tmp_path / "ssl"
    argv = ["--data-root", str(tiny_data), *SMALL, "--out", str(out), "--rows", "ours-per-image", "--steps", "2",
            "--eval-every", "1", "--time-steps", "1", "--time-repeats", "2"]
    ssl.main(argv)
    saved = json.loads((out / "curves" / "ours-per-image-seed0.json").read_text())
    assert [row["step"] for row in saved["curve"]] == [0, 1, 2]
    assert all(0 <= row["knn_acc"] <= 1 for row in saved["curve"])
    timing = json.loads((out / "timing" / "ours-per-image.json").read_text())
    assert len(timing["images_per_s"]) == 2 and timing["median"] > 0
    assert (out / "ssl.png").stat().st_size > 0 and "| ours, per-image views | 0 |" in (out / "ssl.md").read_text()
    capsys.readouterr()
    ssl.main(argv)
    assert "saved already: kept" in capsys.readouterr().out
    assert not list(out.glob("tmp*"))  # engine.fit's own files are not kept


def test_table_says_where_a_curve_crosses_and_the_equal_views_verdict():
    below = [{"step": 0, "knn_acc": 0.70}, {"step": 25, "knn_acc": 0.60}, {"step": 50, "knn_acc": 0.70}]
    above = below[:2] + [{"step": 50, "knn_acc": 0.71}]
    assert ssl.crossing(below) is None and ssl.crossing(above) == 50

    def result(row: str, seed: int, curve: list[dict]) -> dict:
        return {"row": row, "label": ssl.ROWS[row].label, "seed": seed, "steps": 50, "curve": curve,
                "crosses_at": ssl.crossing(curve)}

    results = [result("ours-per-image", 0, above), result("byol-pytorch-equal", 0, below)]
    timings = {"ours-per-image": {"median": 20.0, "images_per_s": [19.0, 20.0, 21.5]}}
    table = ssl.markdown(results, timings)
    assert "| ours, per-image views | 0 | 0.700 | 0.600 | 0.710 | step 50 | 20.0 (19.0–21.5) |" in table
    assert "| byol-pytorch, our per-image views | 0 |" in table and "no, within 50 steps" in table
    assert "one seed: no spread yet" in table
    # Two seeds: ours trailing by more than the seeds' spread is called a defect.
    low = [{"step": 0, "knn_acc": 0.70}, {"step": 50, "knn_acc": 0.50}]
    low2 = [{"step": 0, "knn_acc": 0.70}, {"step": 50, "knn_acc": 0.51}]
    high = [{"step": 0, "knn_acc": 0.70}, {"step": 50, "knn_acc": 0.60}]
    high2 = [{"step": 0, "knn_acc": 0.70}, {"step": 50, "knn_acc": 0.61}]
    trailing = [result("ours-per-image", 0, low), result("ours-per-image", 1, low2),
                result("byol-pytorch-equal", 0, high), result("byol-pytorch-equal", 1, high2)]
    assert "a defect to find" in ssl.equal_views_verdict(trailing)
    level = [result("ours-per-image", 0, high), result("ours-per-image", 1, low2),
             result("byol-pytorch-equal", 0, high2), result("byol-pytorch-equal", 1, low)]
    assert "does not trail" in ssl.equal_views_verdict(level)


@pytest.fixture(autouse=True)
def _seeded():
    distributed.seed_everything(0)
