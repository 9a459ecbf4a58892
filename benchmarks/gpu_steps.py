"""What benchmarks/gpu_check.sh runs: its steps in order at a profile's sizes (`GPU`, `CPU`), and its first step,
`prepare` (the device line, the tiny sample data, the timed hw1_2.sh's images and checkpoint)."""
from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hw1 import io
from hw1.errors import UserError
from hw1.report.stages import Stage

# The idx files (about 30 MB) a device call carries for the side by side: gpu_check.sh's header.
ROOT = Path(__file__).resolve().parents[1]
FASHION_IDX = ROOT / ".data" / "fashion-mnist"
# bench.py in two runs, each its own bench.json: a half cut short by the time limit leaves the other's rows
BENCH_P1 = ("aug", "data", "loaders", "a", "b", "c", "c-compile", "mfu", "profile")
BENCH_P2 = ("seg", "overhead")


@dataclass(frozen=True)
class Profile:
    """The sizes of a run: `GPU` fits a 10-minute call on a GPU machine (from BENCHMARKS.md's estimates); `CPU` is
    the tests' tiny data, a check of this script."""

    device: str
    p1: tuple[str, ...]        # model, size and batch of the Problem 1 steps
    head: tuple[str, ...]      # BYOL's projector
    compiled: tuple[str, ...]  # the --compile step's model: its compile time grows with the model
    small: tuple[str, ...]     # the resume and torchrun steps (the resume's first half runs on the CPU)
    fcn32s: tuple[str, ...]
    deeplab: tuple[str, ...]
    bench: tuple[str, ...]
    workers: str
    compile_backend: str
    timed_images: int          # the timed hw1_2.sh: how many images of which size, and the model
    timed_px: int
    timed_model: tuple[str, int]
    budget_s: float            # the whole run: a step starts only while time is left
    step_s: float              # one step's limit (the compile, reproduce and bench steps: 3x)
    ssl_data: str              # the side by side's images under OUT: "fashion" (Fashion-MNIST) or "data" (tiny)
    ssl: tuple[str, ...]       # benchmarks/ssl_bench.py's sizes: the equal-views pair
    ssl_small: tuple[str, ...]  # and one row of ours on the 32 px field's small stem
    ssl_s: tuple[float, float]  # their limits


GPU = Profile(
    device="cuda",
    p1=("--arch", "resnet50", "--image-size", "128", "--batch-size", "64"),
    head=(),
    compiled=("--arch", "resnet18", "--image-size", "64", "--batch-size", "64"),
    small=("--arch", "resnet18", "--image-size", "64", "--batch-size", "32"),
    fcn32s=("--weights", "none", "--image-size", "512", "--batch-size", "8"),
    deeplab=("--weights", "none", "--image-size", "512", "--batch-size", "8"),
    bench=("--device", "cuda", "--steps", "10", "--warmup", "3", "--seg-steps", "3", "--seg-warmup", "1"),
    workers="4", compile_backend="inductor", timed_images=257, timed_px=512, timed_model=("deeplabv3_resnet101", 512),
    budget_s=560, step_s=90, ssl_data="fashion",
    # 3,000 steps of 256 (77 epochs of the 10,000 images), about 15 ms a step: ~50 s a row, kNN every 300
    ssl=("--batch-size", "256", "--steps", "3000", "--eval-every", "300", "--workers", "4"),
    # 16x the activations of the ImageNet stem at 32 px: ~40 ms a step, 1,000 steps ~45 s
    ssl_small=("--batch-size", "256", "--steps", "1000", "--eval-every", "100", "--workers", "4"),
    ssl_s=(180, 120))
CPU = Profile(
    device="cpu",
    p1=("--arch", "resnet18", "--image-size", "32", "--batch-size", "32"),
    head=("--projection-hidden-size", "64", "--projection-size", "32"),
    compiled=("--arch", "resnet18", "--image-size", "32", "--batch-size", "32"),
    small=("--arch", "resnet18", "--image-size", "32", "--batch-size", "32"),
    fcn32s=("--weights", "none", "--image-size", "32", "--batch-size", "8", "--fc-width", "64"),  # fc6: 102 M -> 1.6 M
    deeplab=("--weights", "none", "--arch", "deeplabv3_mobilenet_v3_large", "--image-size", "32", "--batch-size", "8",
             "--aux-weight", "0"),
    bench=("--quick",),
    workers="0", compile_backend="eager", timed_images=4, timed_px=64,
    timed_model=("deeplabv3_mobilenet_v3_large", 64), budget_s=24 * 3600, step_s=3600,  # shared cores: hours
    ssl_data="data", ssl=("--batch-size", "8", "--steps", "4", "--eval-every", "2", "--workers", "0",
                          "--projection-hidden-size", "64"),
    ssl_small=("--batch-size", "8", "--steps", "2", "--eval-every", "1", "--workers", "0",
               "--projection-hidden-size", "64"),
    ssl_s=(3600, 3600))


@dataclass
class Plan:
    """Builds the check's steps at `prof`'s sizes, writing under `out`: each a `Stage` run from the repository root."""

    out: Path
    prof: Profile
    python: str = sys.executable

    def step(self, name: str, what: str, argv: list[str], *, reads: tuple[str, ...] = (),
             makes: tuple[str, ...] = (), says: str = "", env: dict[str, str] | None = None,
             timeout_s: float | None = None, check: Callable[[Path], str] | None = None) -> Stage:
        """A step that is not started without `reads` (files under OUT that earlier steps make), must leave `makes`
        there ("PATTERN", at least one, or "PATTERN=COUNT"), its log must say `says`, and `check(OUT)` must pass
        (it returns the problem, or "")."""
        out, counts = self.out, [(pat, int(n)) for pat, _, n in (m.partition("=") for m in makes) if n]

        def checks(log: Path) -> str:
            problems = [f"{pat} ({found} of {n})" for pat, n in counts if (found := len(glob.glob(str(out / pat)))) < n]
            if says and says not in log.read_text(errors="replace"):
                problems.append(f"its output does not say {says!r}")
            return "; ".join(problems) or (check(out) if check else "")

        return Stage(name, argv, [out / m.partition("=")[0] for m in makes], env=dict(env or {}),
                     inputs=[out / r for r in reads], what=what, timeout_s=timeout_s or self.prof.step_s,
                     check=checks, cwd=ROOT)

    @property
    def common(self) -> list[str]:
        return ["--data-root", str(self.out / "data"), "--device", self.prof.device, "--workers", self.prof.workers]

    def pretrain(self, name: str, what: str, *flags: str, model: tuple[str, ...] = (), head: tuple[str, ...] = (),
                 says: str = "", timeout_s: float | None = None) -> Stage:
        argv = [*(head or [self.python]), "p1_pretrain.py", *self.common, *(model or self.prof.p1), *self.prof.head,
                "--epochs", "1", "--max-steps", "2", "--out", str(self.out / "runs" / name), *flags]
        return self.step(name, what, argv, reads=("data/p1_data",), says=says, timeout_s=timeout_s,
                         makes=(f"runs/{name}/last.pt", f"runs/{name}/backbone_last.pt"))

    def finetune(self, setting: str, name: str = "", what: str = "", recipe: tuple[str, ...] = ()) -> Stage:
        name, runs = name or f"finetune_{setting}", self.out / "runs"
        argv = [self.python, "p1_finetune.py", *self.common, *self.prof.p1, "--setting", setting, "--epochs", "2",
                "--backbone", str(runs / "pretrain_gpu_aug" / "backbone_last.pt"), *recipe,
                "--results", str(runs / "p1_results.csv"), "--out", str(runs / name)]
        return self.step(name, what or f"fine-tuning {setting} from the BYOL backbone: first, last and best.pt", argv,
                         reads=("runs/pretrain_gpu_aug/backbone_last.pt",),
                         makes=tuple(f"runs/{name}/{f}.pt" for f in ("first", "last", "best")))

    def segment(self, name: str, script: str, model: tuple[str, ...]) -> Stage:
        runs = self.out / "runs"
        argv = [self.python, script, *self.common, *model, "--epochs", "1", "--max-steps", "2",
                "--results", str(runs / "p2_results.csv"), "--out", str(runs / name)]
        return self.step(name, f"{script}: 2 steps, validation mIoU, last and best.pt", argv, reads=("data/p2_data",),
                         makes=(f"runs/{name}/last.pt", f"runs/{name}/best.pt"))

    def bench(self, name: str, sections: tuple[str, ...]) -> Stage:
        argv = [self.python, "bench.py", *self.prof.bench, "--out", str(self.out / name), "--sections", *sections]
        return self.step(name, f"bench.py --sections {' '.join(sections)}", argv, makes=(f"{name}/bench.json",),
                         timeout_s=3 * self.prof.step_s, check=lambda o: bench_problem(o / name))

    def side_by_side(self, name: str, what: str, rows: tuple[str, ...], sizes: tuple[str, ...], timeout_s: float,
                     *flags: str) -> Stage:
        argv = [self.python, "-m", "benchmarks.ssl_bench", "--data-root", str(self.out / self.prof.ssl_data),
                "--out", str(self.out / name), "--device", self.prof.device, "--rows", *rows, "--seeds", "0",
                "--arch", "resnet18", "--image-size", "32", "--time-repeats", "0", *sizes, *flags]
        return self.step(name, what, argv, reads=(f"{self.prof.ssl_data}/p1_data",),
                         makes=(f"{name}/ssl.md", f"{name}/ssl.png"), timeout_s=timeout_s)


def steps(out: Path, prof: Profile, python: str = sys.executable) -> list[Stage]:
    """The check's steps in order, at `prof`'s sizes, writing under `out`."""
    plan = Plan(out, prof, python)
    return [*p1_steps(plan), *p2_and_grading_steps(plan), *timed_steps(plan)]


def p1_steps(plan: Plan) -> list[Stage]:
    """`prepare`, then pre-training on each code path (views on the device or in the workers, --compile, fp16, a
    resume crossing devices) and fine-tuning C and E with the seed's and the strong recipe's pieces, and t-SNE."""
    out, prof, python = plan.out, plan.prof, plan.python
    data, runs, workers = out / "data", out / "runs", ["--workers", prof.workers]
    launch = (python, "benchmarks/launch.py", "--compile-backend", prof.compile_backend)
    # --cpu: the resumed half takes the GPU's code path on the CPU (bf16 autocast, channels_last parameters)
    resumed_as = ["--precision", "bf16"] if prof.device == "cpu" else []
    return [
        plan.step("prepare", "the device and packages; tiny sample data; images and a checkpoint for the timed "
                  "hw1_2.sh",
                  [python, "-m", "benchmarks.gpu_check", "prepare", str(out), "--device", prof.device,
                   "--timed-images", str(prof.timed_images), "--timed-px", str(prof.timed_px), "--timed-arch",
                   prof.timed_model[0], "--timed-size", str(prof.timed_model[1]),
                   *(["--fashion"] if prof.ssl_data == "fashion" else [])],
                  makes=("env.json", "data/p1_data", "data/p2_data", "timed/p2_random.pt",
                         f"timed/images/*_sat.jpg={prof.timed_images}", f"{prof.ssl_data}/p1_data")),
        plan.pretrain("pretrain_gpu_aug", "BYOL, views batched on the device (--gpu-aug), kNN monitor", "--gpu-aug"),
        plan.pretrain("pretrain_cpu_aug", "BYOL, views per image in the loader workers (--no-gpu-aug)",
                      "--no-gpu-aug"),
        plan.pretrain("pretrain_compile", f"BYOL with --compile ({prof.compile_backend})", "--gpu-aug", "--compile",
                      model=prof.compiled, head=launch, timeout_s=3 * prof.step_s),
        plan.pretrain("pretrain_fp16", "BYOL with --precision fp16 (gradient scaler)", "--gpu-aug", "--precision",
                      "fp16"),
        plan.step("resume_write_cpu", "a last.pt written on the CPU, stopped after 2 of 12 steps",
                  [python, "p1_pretrain.py", "--data-root", str(data), "--device", "cpu", *workers, *prof.small,
                   *prof.head, "--gpu-aug", "--epochs", "2", "--max-steps", "2", "--out", str(runs / "resume")],
                  reads=("data/p1_data",), makes=("runs/resume/last.pt",)),
        plan.step("resume_on_device", "that last.pt resumed " + ("on CUDA" if prof.device == "cuda" else
                                                                  "in the GPU's code path (bf16, channels_last)"),
                  [python, "p1_pretrain.py", *plan.common, *prof.small, *prof.head, "--gpu-aug", *resumed_as,
                   "--epochs", "2", "--max-steps", "4", "--out", str(runs / "resume"), "--resume"],
                  reads=("runs/resume/last.pt",), makes=("runs/resume/backbone_last.pt",), says="resumed from"),
        plan.finetune("C"),
        plan.finetune("E"),
        plan.finetune("C", "finetune_C_pieces", "fine-tuning C with every strong-recipe piece: per-image "
                      "TrivialAugmentWide on the device, mixup/CutMix, label smoothing, the EMA, a lower backbone lr",
                      ("--augment", "trivialaugment", "--mix", "mixup-cutmix", "--label-smoothing", "0.1",
                       "--ema-decay", "0.99", "--backbone-lr-scale", "0.1")),
        plan.finetune("E", "finetune_E_strong", "fine-tuning E --recipe strong: the BN-MLP head on the frozen backbone",
                      ("--recipe", "strong")),
        plan.step("tsne", "t-SNE of fine-tuning C's first and last epoch",
                  [python, "p1_tsne.py", *plan.common, "--checkpoints", str(runs / "finetune_C" / "first.pt"),
                   str(runs / "finetune_C" / "last.pt"), "--perplexity", "5", "--out", str(runs / "tsne")],
                  reads=("runs/finetune_C/first.pt", "runs/finetune_C/last.pt"),
                  makes=("runs/tsne/tsne_scores.json",)),
    ]


def p2_and_grading_steps(plan: Plan) -> list[Stage]:
    """Both segmentation scripts, the two grading scripts on their best.pt, and pre-training as a DDP run."""
    out, prof, python = plan.out, plan.prof, plan.python
    runs, office = out / "runs", out / "data" / "p1_data" / "office"
    backend = "nccl" if prof.device == "cuda" else "gloo"
    torchrun = (python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                "benchmarks/launch.py", "--ddp")
    return [
        plan.segment("seg_fcn32s", "p2_train_fcn32.py", prof.fcn32s),
        plan.segment("seg_deeplab", "p2_train_deeplab.py", prof.deeplab),
        plan.step("hw1_1", "hw1_1.sh on Office-Home val with fine-tuning C's best.pt",
                  ["bash", "hw1_1.sh", str(office / "val.csv"), str(office / "val"), str(runs / "hw1_1" / "pred.csv")],
                  env={"P1_CHECKPOINT": str(runs / "finetune_C" / "best.pt")},
                  reads=("runs/finetune_C/best.pt",), makes=("runs/hw1_1/pred.csv",)),
        plan.step("hw1_2", "hw1_2.sh on the validation images with the DeepLabV3 run's best.pt",
                  ["bash", "hw1_2.sh", str(out / "data" / "p2_data" / "validation"), str(runs / "hw1_2")],
                  env={"P2_CHECKPOINT": str(runs / "seg_deeplab" / "best.pt")},
                  reads=("runs/seg_deeplab/best.pt",), makes=("runs/hw1_2/*_mask.png=6",)),
        plan.pretrain("torchrun_ddp", f"torchrun --nproc_per_node 1 pre-training as a one-rank DDP run ({backend})",
                      "--gpu-aug", model=prof.small, head=torchrun, says=f"backend {backend}"),
    ]


def timed_steps(plan: Plan) -> list[Stage]:
    """hw1_2.sh timed, bench.py, reproduce.py --preset tiny, and last, in what the budget leaves, the SSL side by
    side at a GPU's scale (BENCHMARKS.md)."""
    out, prof, python = plan.out, plan.prof, plan.python
    timed_model = f"{prof.timed_model[0]} at {prof.timed_model[1]} px"
    return [
        plan.step("hw1_2_timed", f"hw1_2.sh on {prof.timed_images} images of {prof.timed_px} px, {timed_model}, timed",
                  ["bash", "hw1_2.sh", str(out / "timed" / "images"), str(out / "runs" / "hw1_2_timed")],
                  env={"P2_CHECKPOINT": str(out / "timed" / "p2_random.pt")}, reads=("timed/p2_random.pt",),
                  makes=(f"runs/hw1_2_timed/*_mask.png={prof.timed_images}",)),
        plan.bench("bench_p1", BENCH_P1),
        plan.bench("bench_p2", BENCH_P2),
        # the scripts above again, at tiny sizes (the least news per second when the budget runs short)
        plan.step("reproduce_tiny", "reproduce.py --preset tiny: every stage, the report",
                  [python, "reproduce.py", "--preset", "tiny", "--device", prof.device, "--in-process", "--data-root",
                   str(out / "reproduce" / "data"), "--runs", str(out / "reproduce" / "runs"),
                   "--report", str(out / "reproduce" / "report")],
                  makes=("reproduce/report/REPORT.md", "reproduce/report/results.json"), timeout_s=3 * prof.step_s),
        plan.side_by_side("ssl", "BYOL side by side, equal (batched) views: ours against byol-pytorch, ResNet18 at "
                          "32 px", ("equal-batched",), prof.ssl, prof.ssl_s[0]),
        plan.side_by_side("ssl_small_stem", "the same, ours only, on the 32 px field's stem (3x3 stride 1, no "
                          "max-pool)", ("ours-batched",), prof.ssl_small, prof.ssl_s[1], "--stem", "small"),
    ]


def bench_problem(folder: Path) -> str:
    """A bench.json's failed sections as one line ("" when none failed)."""
    rows = json.loads((folder / "bench.json").read_text())["rows"]
    return "; ".join(f"{r['row']} {r['error']}" for r in rows if r.get("error"))


# ---------------------------------------------------------------- the first step (in its own process, as the others)


def prepare(out: Path, device: str, timed_images: int, timed_px: int, timed_arch: str, timed_size: int,
            fashion: bool = False) -> None:
    """The device line and packages (OUT/env.json), the tiny sample data (OUT/data), for the timed hw1_2.sh
    `timed_images` satellite images of `timed_px` (distinct images, repeated) and a random-weight checkpoint; with
    `fashion`, the Fashion-MNIST preset's data (OUT/fashion) from the idx files carried in FASHION_IDX."""
    from hw1.p2.data import NUM_CLASSES, write_p2_sample
    from hw1.p2.models import build_seg_model
    from hw1.samples.synthetic import write_sample_data
    from hw1.train import checkpoint

    env = environment(device)
    io.write_json(out / "env.json", env)
    print(f"device: {env['device']}\n{env['software']}", flush=True)
    write_sample_data(out / "data", preset="tiny")
    timed = out / "timed"
    p2 = out / "data" / "p2_data" if timed_px == 64 else write_p2_sample(timed / "source", "sample")  # tiny: 64 px
    sources = sorted(p2.glob("*/*_sat.jpg"))
    images = io.ensure_dir(timed / "images")
    for i in range(timed_images):
        shutil.copyfile(sources[i % len(sources)], images / f"{i:04d}_sat.jpg")
    meta = {"task": "segment", "arch": timed_arch, "num_classes": NUM_CLASSES, "image_size": timed_size,
            "weights": "none", "aux": False}
    checkpoint.save_checkpoint(timed / "p2_random.pt", {"model": build_seg_model(timed_arch, "none").state_dict(),
                                                        "meta": meta})
    if fashion:
        from hw1.samples import fashion as fmnist

        # last: without the carried idx files this step fails on its one line, and only the side by side is not run
        fmnist.write_fashion(out / "fashion", seed=0, source=FASHION_IDX if FASHION_IDX.is_dir() else None)
    if env["missing"]:
        raise UserError("gpu_check", f"{', '.join(env['missing'])} cannot be imported: the steps that need it fail",
                        "install it, or carry its wheel to the device machine (benchmarks/gpu_check.sh's header)")


def environment(device: str) -> dict:
    """Where the check ran: the device line, the software, the packages it needs and which are missing."""
    import importlib
    import importlib.metadata

    import torch

    versions, absent = {}, []
    for module, package in (("torchvision", "torchvision"), ("byol_pytorch", "byol-pytorch"),
                            ("sklearn", "scikit-learn"), ("matplotlib", "matplotlib"), ("tqdm", "tqdm"),
                            ("kornia", "kornia")):
        try:
            importlib.import_module(module)
            versions[package] = importlib.metadata.version(package)
        except ImportError:
            absent += [] if module == "kornia" else [package]  # kornia: bench.py leaves its row out
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        smi = shutil.which("nvidia-smi")
        driver = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                text=True).stdout.strip().splitlines()[:1] if smi else []
        line = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}"
                f"{', driver ' + driver[0] if driver else ''}")
    else:
        line = f"CPU ({platform.machine()}), load average {os.getloadavg()[0]:.1f}"
    software = (f"torch {torch.__version__} (CUDA {torch.version.cuda}), Python {platform.python_version()}, "
                f"{os.cpu_count()} CPUs; " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    return {"device": line, "software": software, "missing": absent}
