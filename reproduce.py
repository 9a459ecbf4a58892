"""Run every stage of the homework in order and write report/REPORT.md from what they produce.

  sample  synthetic sample data (written first), small models, few epochs, CPU: ~15 minutes
  full    the reference recipe (SPEC §5) on the course data at --data-root, on a GPU: days
  tiny    the smallest run of every stage (the tests use it)

Stages run as subprocesses of the project's scripts; each one's command goes to the report and its
output to RUNS/logs/<stage>.log. A stage that finished before (RUNS/stages.json) and whose outputs
exist is skipped, so a stopped run continues where it stopped (training resumes from its
last.pt); --force runs everything again from scratch.

    python reproduce.py --preset sample
    python reproduce.py --preset full --data-root hw1_data --sam-checkpoint checkpoints/sam_vit_b_01ec64.pth
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from hw1 import io  # noqa: E402
from hw1.errors import UserError, run_main  # noqa: E402
from hw1.report import P1_REFERENCE, Layout, ReportInfo, write_report  # noqa: E402

# Per preset: the sample data to write (None: use the course data), then extra flags per stage.
# Everything not named here is the script's default, i.e. the reference recipe.
PRESETS: dict[str, dict] = {
    "full": {
        "description": "The reference recipe (SPEC §5) on the course data: ResNet50 BYOL pre-training for 1000 "
                       "epochs (batch 256, 128 px, AdamW 1e-4, wd 0.05, 4000 warm-up iterations + cosine), "
                       "fine-tuning A–E (batch 128, 100 warm-up iterations + cosine, 100 epochs), VGG16-FCN32s and "
                       "DeepLabV3-ResNet101 with focal loss at 512 px from torchvision's pretrained weights.",
        "sample_data": None, "workers": None,
        "byol": [], "supervised": ["--epochs", "100"], "finetune": [], "tsne": [],
        "fcn32s": [], "deeplabv3": [],
    },
    "sample": {
        "description": "The sample preset: ResNet18 at 32 px; BYOL (2 epochs) and supervised pre-training (2 epochs) "
                       "on 768 synthetic Mini-ImageNet-layout images; fine-tuning A–E for 3 epochs on 520 Office-Home-"
                       "layout images (130 validation). Problem 1's short runs take a higher learning rate (1e-3) "
                       "than the reference recipe, except BYOL. Problem 2 trains both models from random weights at "
                       "128 px on 24 synthetic 512 px satellite images (8 validation) whose classes differ by texture (blocks, field stripes, speckle, canopy, "
                       "ripples, grain) as well as colour: FCN32s with fc6/fc7 narrowed from 4096 to 512 channels, "
                       "batch 2, 96 steps at the reference's 1e-4 (VGG16 without batch norm, from scratch, stalls or diverges at "
                       "higher rates), and DeepLabV3-MobileNetV3 for 150 steps at 4e-3 with its batch-norm statistics "
                       "re-estimated before each validation (a short run's running averages trail its weights). "
                       "It shows that every stage runs and that the numbers move, on a CPU in minutes.",
        "sample_data": "sample", "workers": "1",
        "byol": ["--arch", "resnet18", "--image-size", "32", "--epochs", "2", "--batch-size", "64",
                 "--projection-hidden-size", "1024"],
        "supervised": ["--arch", "resnet18", "--image-size", "32", "--epochs", "2", "--batch-size", "64", "--lr", "1e-3"],
        "finetune": ["--arch", "resnet18", "--image-size", "32", "--epochs", "3", "--batch-size", "64", "--lr", "1e-3"],
        "tsne": ["--perplexity", "20"],
        # 128 px gives FCN32s a 4 x 4 score map (at 32 px it is 1 x 1, a whole-image classifier); narrow fc6/fc7
        # make its steps cheap enough on a CPU for ~100 of them.
        "fcn32s": ["--weights", "none", "--fc-width", "512", "--image-size", "128", "--epochs", "8", "--batch-size", "2",
                   "--warmup-steps", "10", "--eval-every", "4"],
        "deeplabv3": ["--weights", "none", "--arch", "deeplabv3_mobilenet_v3_large", "--image-size", "128",
                      "--epochs", "50", "--batch-size", "8", "--aux-weight", "0", "--lr", "4e-3", "--warmup-steps", "10",
                      "--eval-every", "10", "--bn-recalibrate", "3"],
    },
    "tiny": {
        "description": "The tiny preset (tests): every stage for one or two optimiser steps on tiny synthetic data.",
        "sample_data": "tiny", "workers": "0",
        "byol": ["--arch", "resnet18", "--image-size", "32", "--epochs", "1", "--batch-size", "32",
                 "--max-steps", "1", "--projection-hidden-size", "64", "--projection-size", "32"],
        "supervised": ["--arch", "resnet18", "--image-size", "32", "--epochs", "1", "--batch-size", "32", "--max-steps", "1"],
        "finetune": ["--arch", "resnet18", "--image-size", "32", "--epochs", "2", "--batch-size", "128"],
        "tsne": ["--perplexity", "5"],
        "fcn32s": ["--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--max-steps", "1"],
        "deeplabv3": ["--weights", "none", "--arch", "deeplabv3_mobilenet_v3_large", "--image-size", "32",
                      "--epochs", "2", "--batch-size", "8", "--max-steps", "2", "--aux-weight", "0"],
    },
}
GIVEN_BACKBONE = Path("p1_data") / "pretrain_model_SL.pt"  # the course's supervised ResNet50 backbone
MODEL_TREES = {"classifier": "ResNet50 classifier (settings A–E)", "fcn32s": "model A: VGG16-FCN32s",
               "deeplabv3": "model B: DeepLabV3-ResNet101"}
PY = sys.executable


@dataclass
class Stage:
    """One step: a command, the files that show it is done, and (for training) its run folder."""

    name: str
    argv: list[str]
    outputs: list[Path]
    run_dir: Path | None = None          # training: resumed with --resume after a stop, else started afresh
    env: dict[str, str] = field(default_factory=dict)
    stdout_file: Path | None = None      # keep the command's stdout as a file (mean_iou.py's table)
    needs: list[str] = field(default_factory=list)  # earlier stages whose outputs it reads: it re-runs after them

    def command(self) -> str:
        """The command as a person would type it (python, paths relative to the repo when they can be)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        words = ["python" if w == PY else _short(w) for w in self.argv]
        text = shlex.join(words) + (f" > {shlex.quote(str(self.stdout_file))}" if self.stdout_file else "")
        return f"{env} {text}" if env else text


def _short(word: str) -> str:
    p = Path(word)
    return str(p.relative_to(ROOT)) if p.is_absolute() and p.is_relative_to(ROOT) else word


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="sample", help="default: %(default)s")
    parser.add_argument("--data-root", default=None,
                        help="course data (full) or where to write the sample data (default: hw1_data for full, "
                             "sample_data/<preset> otherwise)")
    parser.add_argument("--runs", default=None, help="run folders go here (default: runs/<preset>)")
    parser.add_argument("--report", default="report", help="REPORT.md and its PNGs go here (default: %(default)s)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--sam-checkpoint", default=None, help="run Segment Anything with these weights (sam_vit_*.pth)")
    parser.add_argument("--sam-model-type", choices=["vit_h", "vit_l", "vit_b"], default=None,
                        help="default: read from the checkpoint's name")
    parser.add_argument("--force", action="store_true", help="run every stage again from scratch")
    parser.add_argument("--report-only", action="store_true", help="run no stage; write the report from what exists")
    parser.add_argument("--in-process", action="store_true",
                        help="run the Python stages inside this process (faster start; for tests), not as subprocesses")
    return parser


def plan(args: argparse.Namespace, layout: Layout) -> list[Stage]:
    """Every stage of the preset, in order, each naming the earlier stages whose outputs it reads."""
    preset, data = PRESETS[args.preset], Path(args.data_root)
    common = ["--data-root", str(data), "--device", args.device, "--seed", str(args.seed)]
    if preset["workers"] is not None:
        common += ["--workers", preset["workers"]]
    script = lambda name: [PY, str(ROOT / name)]  # noqa: E731
    stages: list[Stage] = []
    data_stage: list[str] = []
    if preset["sample_data"]:
        stages.append(Stage("sample data", [PY, "-m", "hw1.sample_data", "--out", str(data), "--preset", preset["sample_data"],
                                            "--seed", str(args.seed)],
                            [data / "p1_data" / "office" / "val.csv", data / "p2_data" / "validation"]))
        data_stage = ["sample data"]

    def train(name: str, script_name: str, run_dir: Path, extra: list[str], outputs: list[str], needs: list[str]) -> None:
        stages.append(Stage(name, script(script_name) + common + extra + ["--out", str(run_dir)],
                            [run_dir / o for o in outputs], run_dir=run_dir, needs=data_stage + needs))

    train("pre-train BYOL", "p1_pretrain.py", layout.pretrain_byol, ["--method", "byol"] + preset["byol"],
          ["backbone_last.pt"], [])
    given = data / GIVEN_BACKBONE
    if given.is_file() and _flag(preset["finetune"], "--arch", "resnet50") == "resnet50":
        supervised, supervised_stage = given, []
    else:  # B/D need a supervised backbone: make one from the Mini-ImageNet labels in the file names
        train("pre-train supervised", "p1_pretrain.py", layout.pretrain_supervised,
              ["--method", "supervised"] + preset["supervised"], ["backbone_last.pt"], [])
        supervised, supervised_stage = layout.pretrain_supervised / "backbone_last.pt", ["pre-train supervised"]
    for setting in P1_REFERENCE:
        backbone, needs = {"A": ([], []), "B": ([supervised], supervised_stage), "D": ([supervised], supervised_stage)}.get(
            setting, ([layout.pretrain_byol / "backbone_last.pt"], ["pre-train BYOL"]))
        train(f"fine-tune {setting}", "p1_finetune.py", layout.finetune(setting),
              ["--setting", setting, *[a for b in backbone for a in ("--backbone", str(b))],
               "--results", str(layout.p1_results)] + preset["finetune"], ["first.pt", "last.pt"], needs)
    c = layout.finetune("C")
    stages.append(Stage("t-SNE", script("p1_tsne.py") + common + [
        "--checkpoints", str(c / "first.pt"), str(c / "last.pt"), "--out", str(layout.tsne), *preset["tsne"]],
        [layout.tsne / "tsne_scores.json"], needs=data_stage + ["fine-tune C"]))

    seg_extra = ["--results", str(layout.p2_results)]
    train("train FCN32s", "p2_train_fcn32.py", layout.seg("fcn32s"), preset["fcn32s"] + seg_extra, ["best.pt", "last.pt"], [])
    train("train DeepLabV3", "p2_train_deeplab.py", layout.seg("deeplabv3"), preset["deeplabv3"] + seg_extra,
          ["best.pt", "last.pt"], [])
    val = data / "p2_data" / "validation"
    for model, trained_by in (("fcn32s", "train FCN32s"), ("deeplabv3", "train DeepLabV3")):
        stages.append(Stage(f"hw1_2.sh {model}", ["bash", str(ROOT / "hw1_2.sh"), str(val), str(layout.pred(model))],
                            [layout.pred(model)], env={"P2_CHECKPOINT": str(layout.seg(model) / "best.pt")},
                            needs=data_stage + [trained_by]))
        stages.append(Stage(f"mean_iou {model}", script("mean_iou.py") + ["--pred", str(layout.pred(model)), "--labels", str(val)],
                            [layout.miou(model)], stdout_file=layout.miou(model), needs=[f"hw1_2.sh {model}"]))

    # The report's architecture drawings are of the reference models, whatever this preset trains.
    trees = {"classifier": ("p1_finetune.py", ["--setting", "A", "--arch", "resnet50", "--results", os.devnull]),
             "fcn32s": ("p2_train_fcn32.py", ["--weights", "none"]),
             "deeplabv3": ("p2_train_deeplab.py", ["--weights", "none", "--arch", "deeplabv3_resnet101"])}
    for name, (script_name, extra) in trees.items():
        run_dir = layout.model_tree(name).parent
        stages.append(Stage(f"print model {name}", script(script_name) + common + extra + ["--print-model", "--out", str(run_dir)],
                            [layout.model_tree(name)], needs=data_stage))
    if args.sam_checkpoint:
        stages.append(Stage("Segment Anything", script("p2_sam.py") + [
            "--checkpoint", args.sam_checkpoint, *(["--model-type", args.sam_model_type] if args.sam_model_type else []),
            "--data-root", str(data), "--device", args.device, "--out", str(layout.sam)], [layout.sam / "sam_masks.json"],
            needs=data_stage))
    return stages


def _flag(argv: list[str], name: str, default: str) -> str:
    return argv[argv.index(name) + 1] if name in argv else default


# ---------------------------------------------------------------- running


def run_stage(stage: Stage, log: Path, in_process: bool) -> int:
    """Run one stage with its output in `log` (stdout in `stage.stdout_file` when set); returns the exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as log_f:
        log_f.write(f"$ {stage.command()}\n")
        log_f.flush()
        if stage.stdout_file is None:
            return _run(stage, log_f, log_f, in_process)
        tmp = stage.stdout_file.with_name(f".{stage.stdout_file.name}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as out_f:
            rc = _run(stage, out_f, log_f, in_process)
        if rc == 0:  # renamed only on success: never a half-made output
            os.replace(tmp, stage.stdout_file)
        else:
            tmp.unlink(missing_ok=True)
        return rc


def _run(stage: Stage, stdout_f: TextIO, stderr_f: TextIO, in_process: bool) -> int:
    if in_process and stage.argv[0] == PY:
        return _run_in_process(stage, stdout_f, stderr_f)
    proc = subprocess.Popen(stage.argv, stdout=stdout_f, stderr=stderr_f, env={**os.environ, **stage.env})
    # SIGTERM (a job scheduler, `kill`) goes on to the stage, which saves a checkpoint and exits; its
    # non-zero exit then stops this run, and the next one resumes it.
    old = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, old)


def _run_in_process(stage: Stage, stdout_f: TextIO, stderr_f: TextIO) -> int:
    """`python script.py ARGS` / `python -m module ARGS` inside this interpreter (torch is imported once)."""
    args = stage.argv[1:]
    old_argv, old_env = sys.argv, dict(os.environ)
    os.environ.update(stage.env)
    try:
        with contextlib.redirect_stdout(stdout_f), contextlib.redirect_stderr(stderr_f):
            if args[0] == "-m":
                sys.argv = [args[1], *args[2:]]
                runpy.run_module(args[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = args
                runpy.run_path(args[0], run_name="__main__")
        return 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except Exception:  # a crash in a stage is that stage's failure, with its traceback in the log
        traceback.print_exc(file=stderr_f)
        return 1
    finally:
        sys.argv = old_argv
        os.environ.clear()
        os.environ.update(old_env)


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children: unlike wall time, not inflated
    by other programs sharing the machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _tail(path: Path, n: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").replace("\r", "\n").splitlines()[-n:]) if path.is_file() else ""


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    # The load average says how much other programs shared the CPU: wall times grow with it.
    return (f"CPU, {os.cpu_count()} cores, {platform.machine()} (torch {torch.__version__}; load average "
            f"over the last 15 minutes {os.getloadavg()[2]:.1f})")


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    preset = PRESETS[args.preset]
    args.data_root = args.data_root or ("hw1_data" if preset["sample_data"] is None else f"sample_data/{args.preset}")
    layout = Layout(Path(args.runs or f"runs/{args.preset}"))
    if preset["sample_data"] is None and not (Path(args.data_root) / "p1_data").is_dir():
        raise UserError(args.data_root, "course data not found (no p1_data/)",
                        "pass --data-root with the course's hw1_data, or use --preset sample")
    if args.sam_checkpoint and not Path(args.sam_checkpoint).is_file():
        raise UserError(args.sam_checkpoint, "SAM checkpoint not found",
                        "download https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth (vit_b) and pass its path")
    if args.force and layout.runs.exists() and not args.report_only:
        print(f"--force: removing {layout.runs} to start from scratch")
        shutil.rmtree(layout.runs)
    stages = plan(args, layout)
    records: dict = json.loads(layout.stages.read_text()) if layout.stages.is_file() else {}
    ran_now: list[str] = []
    t_start = time.time()
    for n, stage in enumerate(stages if not args.report_only else [], start=1):
        rec, command = records.get(stage.name, {}), stage.command()
        head = f"[{n}/{len(stages)}] {stage.name}"
        same = rec.get("command") == command
        if (rec.get("status") == "done" and same and all(p.exists() for p in stage.outputs)
                and not set(stage.needs) & set(ran_now)):
            print(f"{head}: done before, skipped")
            continue
        if stage.run_dir is not None and stage.run_dir.exists():
            if rec.get("status") != "done" and same and (stage.run_dir / "last.pt").is_file():
                stage.argv.append("--resume")  # the same run was stopped: continue from its last checkpoint
            else:  # another command's run, or inputs that changed since: start afresh
                shutil.rmtree(stage.run_dir)
        log = layout.logs / f"{n:02d}_{stage.name.replace(' ', '_')}.log"
        print(f"{head}: {stage.command()}", flush=True)
        records[stage.name] = {"command": command, "status": "running", "log": str(log)}
        io.write_json(layout.stages, records)
        t0, cpu0 = time.time(), _cpu_seconds()
        rc = run_stage(stage, log, args.in_process)
        seconds, cpu = round(time.time() - t0, 1), round(_cpu_seconds() - cpu0, 1)
        ok = rc == 0 and all(p.exists() for p in stage.outputs)
        records[stage.name].update(seconds=seconds, cpu_seconds=cpu, status="done" if ok else f"failed (exit {rc})",
                                   finished=datetime.datetime.now().isoformat(timespec="seconds"))
        io.write_json(layout.stages, records)
        ran_now.append(stage.name)
        print(f"{head}: {'done' if ok else 'FAILED'} in {seconds:.0f}s (log: {log})", flush=True)
        if not ok:
            missing = [str(p) for p in stage.outputs if not p.exists()]
            print(f"--- last lines of {log}:\n{_tail(log)}\n---", file=sys.stderr)
            raise UserError(log, f"stage '{stage.name}' failed (exit {rc}; missing: {', '.join(missing) or 'nothing'})",
                            "fix the cause shown above, then run the same command again to continue")
    how = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--report-only", "--in-process", "--force")]
    info = ReportInfo(preset=args.preset, command=shlex.join(["python", "reproduce.py", *how]),
                      data_root=args.data_root, description=preset["description"], sample_data=preset["sample_data"] is not None,
                      machine=machine(), wall_seconds=None if args.report_only else time.time() - t_start,
                      ran_now=ran_now, model_names=MODEL_TREES)
    path = write_report(layout, args.report, info)
    print(f"report: {path} ({time.time() - t_start:.0f}s)")


if __name__ == "__main__":
    run_main(main)()
