"""Run every stage of the homework in order and write report/REPORT.md from what they produce.

  sample  synthetic sample data (written first), small models, short runs, CPU: ~10 minutes
  full    the reference recipe (SPEC §5) on the course data at --data-root, on a GPU: days
  fashion Problem 1 on real photographs (Fashion-MNIST, SPEC §10), CPU: ~45 minutes
  tiny    the smallest run of every stage (the tests use it)

Stages run as subprocesses of the project's scripts; each one's command goes to the report and its
output to RUNS/logs/<stage>.log. A stage that finished before (RUNS/stages.json) and whose outputs
exist is skipped, so a stopped run continues where it stopped (training resumes from its
last.pt); --force runs everything again from scratch.

The data the sample, tiny and fashion presets write goes to a folder of the preset and seed (sample_data/<preset>,
sample_data/<preset>_s<seed> for a seed other than 0). Its stamp (hw1/samples/synthetic.py) says what it holds: the same
data is reused as it is (Fashion-MNIST's idx files are then not needed), and other data there stops the run with one
line before any stage, unless --force, which then deletes exactly the files the data stage writes, and writes them.

    python reproduce.py --preset sample
    python reproduce.py --preset full --data-root hw1_data --sam-checkpoint checkpoints/sam_vit_b_01ec64.pth
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from hw1 import io  # noqa: E402
from hw1.errors import UserError, run_main  # noqa: E402
from hw1.p1.finetune_recipe import RECIPES  # noqa: E402
from hw1.p1.settings import SETTINGS  # noqa: E402
from hw1.report.markdown import Layout, ReportInfo, write_report  # noqa: E402
from hw1.report.presets import GIVEN_BACKBONE, MODEL_TREES, PRESETS, finetune_flags, shared_with_seed  # noqa: E402
from hw1.report.stages import PY, Stage, cpu_seconds, log_tail, missing, run_stage  # noqa: E402
from hw1.samples import fashion, stamps, synthetic  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="sample", help="default: %(default)s")
    parser.add_argument("--data-root", default=None,
                        help="course data (full) or where to write the sample data (default: hw1_data for full, "
                             "sample_data/<preset> otherwise, sample_data/<preset>_s<seed> for a seed other than 0)")
    parser.add_argument("--runs", default=None, help="run folders go here (default: runs/<preset>)")
    parser.add_argument("--report", default="report", help="REPORT.md and its PNGs go here (default: %(default)s)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="seed",
                        help="the fine-tuning recipe of every fine-tuning stage (p1_finetune.py --recipe); strong runs "
                             "in folders of its own beside the seed's, from the same backbones, but for the settings "
                             "it fine-tunes with the seed's flags (A–C, and C's t-SNE), whose seed runs it shares (run "
                             "once); the report shows both when both ran (default: %(default)s)")
    parser.add_argument("--sam-checkpoint", default=None,
                        help="run Segment Anything with these weights (sam_vit_*.pth)")
    parser.add_argument("--sam-model-type", choices=["vit_h", "vit_l", "vit_b"], default=None,
                        help="default: read from the checkpoint's name")
    parser.add_argument("--force", action="store_true",
                        help="run every stage again from scratch; replaces other data in --data-root (another "
                             "preset's or seed's, or unstamped) by the preset's")
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
    first = [stage for stage in [data_stage(args, preset)] if stage is not None]
    after = [s.name for s in first]  # every later stage reads the data the first one writes
    problems = preset.get("problems", ("p1", "p2"))
    return [*first, *(p1_stages(preset, data, layout, common, after) if "p1" in problems else []),
            *(p2_stages(preset, data, layout, common, after) if "p2" in problems else []),
            *model_tree_stages(layout, common, after, problems),
            *(sam_stages(args, data, layout, after) if "p2" in problems else [])]


def data_stage(args: argparse.Namespace, preset: dict) -> Stage | None:
    """The stage that writes the preset's data (None: the course data, which nothing writes). It is done when the
    folder's stamp says this data is written, whatever command wrote it (`-m hw1.sample_data` before hw1/samples/)."""
    data, written = Path(args.data_root), data_write(args, preset)
    if written is None:
        return None
    done = functools.partial(stamps.is_written, data, written[0])
    if preset["sample_data"] == "fashion":  # real images: the split is drawn by the seed, as training is
        return Stage("Fashion-MNIST data",
                     [PY, "-m", "hw1.samples.fashion", "--out", str(data), "--seed", str(args.seed)],
                     [data / "p1_data" / "office" / "val.csv"], done=done)
    return Stage("sample data", [PY, "-m", "hw1.samples.synthetic", "--out", str(data),
                                 "--preset", preset["sample_data"], "--seed", str(args.seed)],
                 [data / "p1_data" / "office" / "val.csv", data / "p2_data" / "validation"], done=done)


def data_write(args: argparse.Namespace, preset: dict) -> tuple[dict, tuple[str, ...]] | None:
    """The stamp of the data the preset writes with `args.seed`, and the paths its writer owns (None: course data)."""
    if preset["sample_data"] == "fashion":
        return fashion.data_stamp(args.seed), fashion.OWNED
    if preset["sample_data"]:
        return synthetic.data_stamp(preset["sample_data"], args.seed), stamps.OWNED
    return None


def _script(name: str) -> list[str]:
    return [PY, str(ROOT / name)]


def _train(name: str, script_name: str, run_dir: Path, argv: list[str], outputs: list[str], needs: list[str]) -> Stage:
    """A training stage: its run folder is resumed after a stop."""
    return Stage(name, _script(script_name) + argv + ["--out", str(run_dir)], [run_dir / o for o in outputs],
                 run_dir=run_dir, needs=needs)


def p1_stages(preset: dict, data: Path, layout: Layout, common: list[str], after: list[str]) -> list[Stage]:
    """Pre-training (BYOL; supervised unless the given backbone fits), fine-tuning A–E and E0, t-SNE of C."""
    stages = [_train("pre-train BYOL", "p1_pretrain.py", layout.pretrain_byol,
                     common + ["--method", "byol"] + preset["byol"], ["backbone_last.pt"], after)]
    given = data / GIVEN_BACKBONE
    if given.is_file() and _flag(preset["finetune"], "--arch", "resnet50") == "resnet50":
        supervised, supervised_stage = given, []
    else:  # B/D need a supervised backbone: make one from the Mini-ImageNet labels in the file names
        stages.append(_train("pre-train supervised", "p1_pretrain.py", layout.pretrain_supervised,
                             common + ["--method", "supervised"] + preset["supervised"], ["backbone_last.pt"], after))
        supervised, supervised_stage = layout.pretrain_supervised / "backbone_last.pt", ["pre-train supervised"]
    sources = {"none": ([], []), "supervised": ([supervised], supervised_stage),
               "byol": ([layout.pretrain_byol / "backbone_last.pt"], ["pre-train BYOL"])}
    # The seed recipe's stages keep their names (a runs folder from before --recipe continues); another's say it. A
    # setting that another recipe fine-tunes with the seed's flags (layout.shared) is the seed's stage: run once.
    named = {s: "" if layout.run_recipe(s) == "seed" else f" ({layout.recipe})" for s in SETTINGS}
    for name, setting in SETTINGS.items():  # A–E and the control E0 (a random backbone, as A)
        backbone, needs = sources[setting.backbone]
        stages.append(_train(f"fine-tune {name}{named[name]}", "p1_finetune.py", layout.finetune(name),
                             common + ["--setting", name, *[a for b in backbone for a in ("--backbone", str(b))],
                                       "--results", str(layout.p1_results)]
                             + finetune_flags(preset, setting.frozen, layout.run_recipe(name), setting.needs_backbone),
                             ["first.pt", "last.pt"], after + needs))
    c = layout.finetune("C")
    stages.append(Stage(f"t-SNE{named['C']}", _script("p1_tsne.py") + common + [
        "--checkpoints", str(c / "first.pt"), str(c / "last.pt"), "--out", str(layout.tsne), *preset["tsne"]],
        [layout.tsne / "tsne_scores.json"], needs=after + [f"fine-tune C{named['C']}"]))
    return stages


def p2_stages(preset: dict, data: Path, layout: Layout, common: list[str], after: list[str]) -> list[Stage]:
    """Training FCN32s and DeepLabV3, then each one's validation masks (hw1_2.sh) and their mIoU (mean_iou.py)."""
    seg_extra = ["--results", str(layout.p2_results)]
    stages = [_train("train FCN32s", "p2_train_fcn32.py", layout.seg("fcn32s"), common + preset["fcn32s"] + seg_extra,
                     ["best.pt", "last.pt"], after),
              _train("train DeepLabV3", "p2_train_deeplab.py", layout.seg("deeplabv3"),
                     common + preset["deeplabv3"] + seg_extra, ["best.pt", "last.pt"], after)]
    val = data / "p2_data" / "validation"
    for model, trained_by in (("fcn32s", "train FCN32s"), ("deeplabv3", "train DeepLabV3")):
        stages.append(Stage(f"hw1_2.sh {model}", ["bash", str(ROOT / "hw1_2.sh"), str(val), str(layout.pred(model))],
                            [layout.pred(model)],
                            env={"P2_CHECKPOINT": str(layout.seg(model) / "best.pt"), "HW1_PYTHON": PY},
                            needs=after + [trained_by]))
        stages.append(Stage(f"mean_iou {model}",
                            _script("mean_iou.py") + ["--pred", str(layout.pred(model)), "--labels", str(val)],
                            [layout.miou(model)], stdout_file=layout.miou(model), needs=[f"hw1_2.sh {model}"]))
    return stages


def model_tree_stages(layout: Layout, common: list[str], after: list[str], problems: tuple[str, ...]) -> list[Stage]:
    """`--print-model` of the reference models of the preset's problems: the report's architecture drawings,
    whatever size this preset trains."""
    trees = {"classifier": ("p1_finetune.py", ["--setting", "A", "--arch", "resnet50", "--results", os.devnull]),
             "fcn32s": ("p2_train_fcn32.py", ["--weights", "none"]),
             "deeplabv3": ("p2_train_deeplab.py", ["--weights", "none", "--arch", "deeplabv3_resnet101"])}
    if "p2" not in problems:
        del trees["fcn32s"], trees["deeplabv3"]
    if "p1" not in problems:
        del trees["classifier"]
    return [Stage(f"print model {name}", _script(script_name) + common + extra + ["--print-model", "--out",
                                                                                str(layout.model_tree(name).parent)],
                  [layout.model_tree(name)], needs=after)
            for name, (script_name, extra) in trees.items()]


def sam_stages(args: argparse.Namespace, data: Path, layout: Layout, after: list[str]) -> list[Stage]:
    """Segment Anything on the validation images, when --sam-checkpoint gives its weights."""
    if not args.sam_checkpoint:
        return []
    return [Stage("Segment Anything", _script("p2_sam.py") + [
        "--checkpoint", args.sam_checkpoint, *(["--model-type", args.sam_model_type] if args.sam_model_type else []),
        "--data-root", str(data), "--device", args.device, "--out", str(layout.sam)], [layout.sam / "sam_masks.json"],
        needs=after)]


def _flag(argv: list[str], name: str, default: str) -> str:
    return argv[argv.index(name) + 1] if name in argv else default


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    # The load average says how much other programs shared the CPU: wall times grow with it.
    return (f"CPU, {os.cpu_count()} cores, {platform.machine()} (torch {torch.__version__}; load average "
            f"over the last 15 minutes {os.getloadavg()[2]:.1f})")


def check_inputs(args: argparse.Namespace, preset: dict) -> None:
    """What the stages read and nothing writes: missing, it is one error line before any stage runs."""
    if preset["sample_data"] is None and not (Path(args.data_root) / "p1_data").is_dir():
        raise UserError(args.data_root, "course data not found (no p1_data/)",
                        "pass --data-root with the course's hw1_data, or use --preset sample")
    written = data_write(args, preset)
    data = Path(args.data_root)
    if written is not None and not args.report_only and not stamps.is_written(data, written[0]):
        problem = stamps.conflict(data, *written)  # another preset's or seed's data: never mixed with ours
        if problem and not args.force:
            raise UserError(data, problem, f"`{data_stage(args, preset).command()} --replace` replaces it (only the "
                                           "files that command writes), --force does too and runs every stage again; "
                                           "or pass --data-root another folder")
        if preset["sample_data"] == "fashion":
            fashion.find_dir(data)  # no idx files: one line with both ways to get them
    if args.sam_checkpoint and not Path(args.sam_checkpoint).is_file():
        raise UserError(args.sam_checkpoint, "SAM checkpoint not found",
                        "download https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth (vit_b) "
                        "and pass its path")


def done_before(stage: Stage, rec: dict, command: str, ran_now: list[str]) -> bool:
    """Whether a stage is skipped: its work says for itself that it is there (`Stage.done`), or it finished with this
    command, its outputs are there and no stage it reads from ran again in this run."""
    return bool(stage.done and stage.done()) or (
        rec.get("status") == "done" and rec.get("command") == command and not missing(stage.outputs)
        and not set(stage.needs) & set(ran_now))


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    preset = PRESETS[args.preset]
    args.data_root = args.data_root or str("hw1_data" if preset["sample_data"] is None
                                           else stamps.default_root(args.preset, args.seed))
    layout = Layout(Path(args.runs or f"runs/{args.preset}"), args.recipe, shared_with_seed(preset))
    check_inputs(args, preset)
    if args.force and layout.runs.exists() and not args.report_only:
        print(f"--force: removing {layout.runs} to start from scratch")
        shutil.rmtree(layout.runs)
    written = data_write(args, preset)
    if args.force and written and not args.report_only and stamps.conflict(args.data_root, *written):
        print(f"--force: removing the other data in {args.data_root} ({', '.join(written[1])})")
        stamps.remove_write(args.data_root, written[1])
    stages = plan(args, layout)
    records: dict = json.loads(layout.stages.read_text()) if layout.stages.is_file() else {}
    ran_now: list[str] = []
    t_start = time.time()
    for n, stage in enumerate(stages if not args.report_only else [], start=1):
        rec, command = records.get(stage.name, {}), stage.command()
        head = f"[{n}/{len(stages)}] {stage.name}"
        same = rec.get("command") == command
        if done_before(stage, rec, command, ran_now):
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
        t0, cpu0 = time.time(), cpu_seconds()
        rc = run_stage(stage, log, args.in_process)
        seconds, cpu = round(time.time() - t0, 1), round(cpu_seconds() - cpu0, 1)
        ok = rc == 0 and not missing(stage.outputs)
        records[stage.name].update(seconds=seconds, cpu_seconds=cpu, status="done" if ok else f"failed (exit {rc})",
                                   finished=datetime.datetime.now().isoformat(timespec="seconds"))
        io.write_json(layout.stages, records)
        ran_now.append(stage.name)
        print(f"{head}: {'done' if ok else 'FAILED'} in {seconds:.0f}s (log: {log})", flush=True)
        if not ok:
            absent = missing(stage.outputs)
            print(f"--- last lines of {log}:\n{log_tail(log)}\n---", file=sys.stderr)
            raise UserError(log, f"stage '{stage.name}' failed (exit {rc}; missing: {', '.join(absent) or 'nothing'})",
                            "fix the cause shown above, then run the same command again to continue")
    how = [a for a in (argv if argv is not None else sys.argv[1:])
           if a not in ("--report-only", "--in-process", "--force")]
    info = ReportInfo(preset=args.preset, command=shlex.join(["python", "reproduce.py", *how]),
                      data_root=args.data_root, description=preset["description"],
                      sample_data=preset["sample_data"] is not None, data_note=preset.get("data_note", ""),
                      classes_note=preset.get("classes_note", ""),
                      machine=machine(), wall_seconds=None if args.report_only else time.time() - t_start,
                      ran_now=ran_now, model_names=MODEL_TREES)
    path = write_report(layout, args.report, info)
    print(f"report: {path} ({time.time() - t_start:.0f}s)")


if __name__ == "__main__":
    run_main(main)()
