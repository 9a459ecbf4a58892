"""benchmarks/gpu_check.sh without running its steps: every step names a script and flags that exist, each input
comes from an earlier step, the runner goes on past a failed step and exits non-zero, a step past its time limit
is killed, and only a GPU run writes BENCHMARKS.md's block (`bash benchmarks/gpu_check.sh OUT --cpu` runs them all)."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check, gpu_report, gpu_steps
from benchmarks.gpu_steps import CPU, GPU, Plan, Profile
from hw1.errors import UserError
from hw1.report.stages import Stage, last_error_line, missing

ROOT = Path(__file__).resolve().parents[1]


def script_args(argv: list[str]) -> tuple[str, list[str]]:
    """The project script a step runs and the arguments it gets (after torchrun's and launch.py's own)."""
    if argv[0] == "bash":
        return argv[1], argv[2:]
    if argv[1] == "-m" and argv[2].startswith("benchmarks."):
        return argv[2].replace(".", "/") + ".py", argv[3:]
    last = max(i for i, a in enumerate(argv) if a.endswith(".py"))
    return argv[last], argv[last + 1:]


@pytest.mark.parametrize("prof", [GPU, CPU], ids=["gpu", "cpu"])
def test_every_step_runs_a_script_with_flags_it_takes(prof: Profile, tmp_path: Path) -> None:
    todo = gpu_steps.steps(tmp_path, prof)
    assert [s.name for s in todo][:1] == ["prepare"] and len({s.name for s in todo}) == len(todo) == 23
    for step in todo:
        script, args = script_args(step.argv)
        assert (ROOT / script).is_file(), (step.name, script)
        if script.endswith(".sh"):
            assert step.argv[0] == "bash" and len(args) == {"hw1_1.sh": 3, "hw1_2.sh": 2}[script], step.name
            continue
        module = importlib.import_module(script[:-3].replace("/", "."))
        try:
            module.get_args_parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"{step.name}: {script} refuses {args}")
    torchrun = next(s for s in todo if s.name == "torchrun_ddp").argv
    assert importlib.util.find_spec("torch.distributed.run") and "--ddp" in torchrun
    assert "--compile-backend" in next(s for s in todo if s.name == "pretrain_compile").argv


@pytest.mark.parametrize("prof", [GPU, CPU], ids=["gpu", "cpu"])
def test_each_input_is_made_by_an_earlier_step_and_read_by_its_command(prof: Profile,
                                                                       tmp_path: Path) -> None:
    made: set[Path] = set()
    for step in gpu_steps.steps(tmp_path, prof):
        assert set(step.inputs) <= made, (step.name, set(step.inputs) - made)
        made |= set(step.outputs)
        given = [a for a in [*step.argv, *step.env.values()] if a.startswith(str(tmp_path))]
        for need in map(str, step.inputs):
            assert any(need.startswith(a) or a.startswith(need) for a in given), (step.name, need)


def test_the_gpu_sizes_fit_the_device_call() -> None:
    """The device tool stops a command at 600 s: the run stops starting steps before, and no step may outlast it."""
    todo = gpu_steps.steps(Path("/out"), GPU)
    assert GPU.budget_s <= 570 and max(s.timeout_s for s in todo) < GPU.budget_s
    assert all("--device" not in s.argv or s.argv[s.argv.index("--device") + 1] == "cuda" for s in todo
               if s.name != "resume_write_cpu")


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def fake_steps(out: Path, prof: Profile) -> list[Stage]:
    plan = Plan(out, prof)
    return [
        plan.step("prepare", "writes a file", py("import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('x')")
                  + [str(out / "a")], makes=("a",)),
        plan.step("breaks", "fails with one error line",
                  py("import sys; print('error: x.pt: broken — fix it'); sys.exit(3)"), makes=("b",)),
        plan.step("after_the_failure", "needs what `breaks` should have made", py("pass"), reads=("b",)),
        plan.step("independent", "still runs", py("print('all good')"), says="all good"),
        plan.step("hw1_2_timed", "says too little", py("print('something')"), says="resumed from"),
    ]


@pytest.fixture
def benchmarks_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "BENCHMARKS.md"
    copy.write_text((ROOT / "BENCHMARKS.md").read_text())
    monkeypatch.setattr(gpu_check, "BENCHMARKS", copy)
    monkeypatch.setattr(gpu_check, "steps", fake_steps)
    return copy


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_failed_step_leaves_the_others_running_and_the_exit_status_non_zero(benchmarks_copy: Path,
                                                                              tmp_path: Path) -> None:
    real, copy = digest(ROOT / "BENCHMARKS.md"), digest(benchmarks_copy)
    out = tmp_path / "out"
    assert gpu_check.main(["run", str(out), "--cpu"]) == 1
    results = json.loads((out / "summary.json").read_text())["results"]
    assert {k: r["status"] for k, r in results.items()} == {
        "prepare": "ok", "breaks": "failed", "after_the_failure": "not run", "independent": "ok",
        "hw1_2_timed": "failed"}
    assert results["breaks"]["error"] == "exit 3: error: x.pt: broken — fix it"
    assert results["after_the_failure"]["error"] == f"input missing: {out / 'b'}"
    assert results["hw1_2_timed"]["error"] == "its output does not say 'resumed from'"
    assert "all good" in (out / results["independent"]["log"]).read_text()
    md = (out / "summary.md").read_text()
    assert "| breaks | fails with one error line | failed |" in md and "2 of 5 steps ok" in md
    assert (out / "logs.tar.gz").is_file()
    # --cpu never writes BENCHMARKS.md: neither the file the run would write nor the checkout's
    assert digest(benchmarks_copy) == copy and digest(ROOT / "BENCHMARKS.md") == real


def test_only_reruns_some_steps_and_keeps_the_others(benchmarks_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    gpu_check.main(["run", str(out), "--cpu"])
    (out / "b").write_text("now there")
    assert gpu_check.main(["run", str(out), "--cpu", "--only", "after_the_failure"]) == 1
    results = json.loads((out / "summary.json").read_text())["results"]
    assert results["after_the_failure"]["status"] == "ok" and results["breaks"]["status"] == "failed"
    with pytest.raises(UserError, match="no step named nope"):
        gpu_check.main(["run", str(out), "--cpu", "--only", "nope"])


def test_a_gpu_run_writes_the_block_and_nothing_else(benchmarks_copy: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    before = benchmarks_copy.read_text()
    assert gpu_check.main(["run", str(tmp_path / "out")]) == 1
    after = benchmarks_copy.read_text()
    head, tail = before.split(gpu_report.BEGIN)[0], before.split(gpu_report.END)[1]
    assert after.startswith(head + gpu_report.BEGIN + "\n### `benchmarks/gpu_check.sh` on a GPU")
    assert after.endswith(gpu_report.END + tail) and "not run yet" not in after
    assert "| breaks | fails with one error line | failed |" in after


def test_without_a_gpu_the_gpu_run_is_one_error(benchmarks_copy: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        gpu_check.main(["run", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_step_past_its_limit_is_killed_with_its_children(tmp_path: Path) -> None:
    """torchrun's workers, DataLoader workers, inductor's compilers: nothing of a stopped step keeps running."""
    pid_file = tmp_path / "grandchild.pid"
    grandchild = (f"import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); "
                  "time.sleep(60)")
    child = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); "
             "print('started', flush=True); time.sleep(60)")
    t = time.perf_counter()
    result = gpu_check.run_step(Stage("slow", py(child), [], what="sleeps"), tmp_path / "slow.log", timeout_s=3)
    assert result["status"] == "timeout" and time.perf_counter() - t < 15
    assert result["error"].startswith("stopped after 3 s; last line: ")
    time.sleep(0.2)
    stat = Path(f"/proc/{pid_file.read_text()}/stat")  # the grandchild started well within the 3 s
    assert not stat.exists() or stat.read_text().split(")")[1].split()[0] == "Z"  # gone, or a zombie not yet reaped


def test_a_spent_budget_starts_no_step(tmp_path: Path) -> None:
    results = gpu_check.run_steps(fake_steps(tmp_path, CPU), tmp_path, budget_s=0)
    assert {r["status"] for r in results.values()} == {"not run"}
    assert results["prepare"]["error"] == "the run's time budget (0 s) was spent"


def test_missing_counts_and_the_error_line(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}_mask.png").touch()
    log = tmp_path / "log"
    log.write_text("done\n")
    plan = Plan(tmp_path, CPU)
    assert plan.step("three", "", [], makes=("*_mask.png=3", "*_mask.png")).check(log) == ""
    four = plan.step("four", "", [], makes=("*_mask.png=4", "x.pt"), says="resumed from")
    assert four.check(log) == "*_mask.png (3 of 4); its output does not say 'resumed from'"
    assert missing(four.outputs) == [str(tmp_path / "x.pt")] and missing([tmp_path / "*_mask.png"]) == []
    log.write_text("epoch 1/1:  50%|█\repoch 1/1: 100%|██\nTraceback (most recent call last):\n  File x\n"
                   "RuntimeError: CUDA error: out of memory\nwarning: later\n")
    assert last_error_line(log) == "RuntimeError: CUDA error: out of memory"


def test_the_summary_shows_the_bench_rows_and_the_timed_grading(tmp_path: Path) -> None:
    bench = {"rows": [{"row": "c: cache + batched views on the device", "images_per_s": 9123.4, "peak_mem_gib": 20.5},
                      {"row": "seg: failed", "error": "RuntimeError: boom"}],
             "env": {"date": "2026-12-03", "device": "NVIDIA H200", "torch": "2.11", "cpus": 16,
                     "command": "python bench.py", "config": {"x": 1}}}
    (tmp_path / "bench_p1").mkdir()
    (tmp_path / "bench_p1" / "bench.json").write_text(json.dumps(bench))
    summary = {"device": "cuda", "date": "2026-12-03", "budget_s": 560, "wall_s": 500.0, "command": "bash x OUT",
               "env": {"device": "NVIDIA H200, 140 GiB", "software": "torch 2.11."},
               "steps": [{"name": "bench_p1", "what": "bench"}, {"name": "hw1_2_timed", "what": "timed"},
                         {"name": "tsne", "what": "t | SNE"}],
               "results": {"bench_p1": {"status": "failed", "seconds": 200.0, "error": "seg: failed RuntimeError"},
                           "hw1_2_timed": {"status": "ok", "seconds": 12.5, "error": ""}},
               "timed_images": 257, "timed": "hw1_2.sh on 257 images"}
    md = gpu_report.render(summary, tmp_path)
    assert "Device: NVIDIA H200, 140 GiB. torch 2.11." in md and "1 of 3 steps ok" in md
    assert "| c: cache + batched views on the device | 9,123.4 | 20.50 |" in md and "config:" not in md
    assert "12.5 s wall, 20.6 images/s" in md and "| tsne | t \\| SNE | not run | 0.0 | not selected (--only) |" in md
    assert "Did not run or failed: `bench_p1`: seg: failed RuntimeError; `tsne`: not selected (--only)." in md


def test_splice_replaces_only_the_block_and_apply_takes_only_a_gpu_run(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "B.md"
    path.write_text(f"top\n{gpu_report.BEGIN}\nold\n{gpu_report.END}\nbottom\n")
    gpu_report.splice(path, "new\n")
    gpu_report.splice(path, "newer\n")
    assert path.read_text() == f"top\n{gpu_report.BEGIN}\nnewer\n{gpu_report.END}\nbottom\n"
    (tmp_path / "plain.md").write_text("no markers\n")
    with pytest.raises(UserError, match="no gpu_check block"):
        gpu_report.splice(tmp_path / "plain.md", "x")
    monkeypatch.setattr(gpu_check, "BENCHMARKS", path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.md").write_text("from the GPU\n")
    for device in ("cpu", "cuda"):
        (run / "summary.json").write_text(json.dumps({"device": device}))
        if device == "cpu":
            with pytest.raises(UserError, match="holds no GPU run's summary.json"):
                gpu_check.main(["apply", str(run)])
        else:
            assert gpu_check.main(["apply", str(run)]) == 0
    assert path.read_text() == f"top\n{gpu_report.BEGIN}\nfrom the GPU\n{gpu_report.END}\nbottom\n"


def test_the_checkout_holds_the_empty_block() -> None:
    text = (ROOT / "BENCHMARKS.md").read_text()
    assert text.count(gpu_report.BEGIN) == 1 == text.count(gpu_report.END)
    assert text.index(gpu_report.BEGIN) < text.index(gpu_report.END)


def test_launch_hands_the_script_its_arguments_with_the_repository_first_on_the_path() -> None:
    """benchmarks/ must not be on the path: its ssl.py would shadow the standard library's (torch imports it)."""
    proc = subprocess.run([sys.executable, "benchmarks/launch.py", "--ddp", "--compile-backend", "eager", "mean_iou.py",
                           "--help"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: mean_iou.py"), proc.stderr[-2000:]


def test_the_side_by_side_comes_last_and_apply_puts_its_curves_in(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU's side by side: the last steps, on Fashion-MNIST written by `prepare` (the carried idx files) on a
    GPU and the tiny data with --cpu; `apply` makes its table from the saved curves, a stopped row's too."""
    gpu, cpu = gpu_steps.steps(tmp_path, GPU), gpu_steps.steps(tmp_path, CPU)
    assert [s.name for s in gpu][-2:] == ["ssl", "ssl_small_stem"]
    assert "--fashion" in gpu[0].argv and "--fashion" not in cpu[0].argv
    assert gpu[-2].inputs == [tmp_path / "fashion/p1_data"] and cpu[-2].inputs == [tmp_path / "data/p1_data"]
    assert "equal-batched" in gpu[-2].argv and gpu[-1].argv[-2:] == ["--stem", "small"]
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text(f"top\n{gpu_report.BEGIN}\n{gpu_report.END}\n{gpu_report.SSL_BEGIN}\nold\n"
                          f"{gpu_report.SSL_END}\nbottom\n")
    monkeypatch.setattr(gpu_check, "BENCHMARKS", benchmarks)
    run = tmp_path / "run"
    (run / "ssl" / "curves").mkdir(parents=True)
    (run / "summary.md").write_text("from the GPU\n")
    (run / "summary.json").write_text(json.dumps({"device": "cuda"}))
    curve = [{"step": 0, "knn_acc": 0.5}, {"step": 300, "knn_acc": 0.6}]
    for row, partial in (("ours-batched", False), ("byol-pytorch-equal-batched", True)):
        name = f"{row}-seed0" + (".partial" if partial else "")
        (run / "ssl" / "curves" / f"{name}.json").write_text(json.dumps(
            {"row": row, "label": row, "seed": 0, "steps": 3000, "curve": curve, "crosses_at": 300,
             "partial": partial, "setup": {"stem": "torchvision"}}))
    assert gpu_check.main(["apply", str(run)]) == 0
    text = benchmarks.read_text()
    block = text[text.index(gpu_report.SSL_BEGIN):text.index(gpu_report.SSL_END)]
    assert "| ours-batched | 0 | 0.500 | 0.600 | step 300 |" in block and "old" not in block
    assert "stopped at step 300 of 3000" in block
    assert "](docs/img/ssl_gpu_ssl.png)" in block and (tmp_path / "docs" / "img" / "ssl_gpu_ssl.png").is_file()
    assert text.endswith("bottom\n") and "from the GPU" in text
