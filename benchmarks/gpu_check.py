"""benchmarks/gpu_check.sh: every CUDA path of the project once at small sizes, then bench.py at the reference sizes
and hw1_2.sh on 257 images of 512 px, timed. A log per step, every step run even when an earlier one failed (only a
step whose input a failed step should have made is not started, and says so), a summary table at the end.

    bash benchmarks/gpu_check.sh OUT            # on a GPU: OUT/summary.md and BENCHMARKS.md's gpu_check block
    bash benchmarks/gpu_check.sh OUT --cpu      # the same steps on the CPU at tiny sizes: OUT/summary.md only
    python -m benchmarks.gpu_check apply OUT    # a GPU run's OUT/summary.md into this checkout's BENCHMARKS.md

`--only STEP ...` runs those steps again; the others keep their result from OUT/summary.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import signal
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable

from hw1 import io
from hw1.errors import UserError, run_main
from hw1.report.stages import Stage, last_error_line, missing, run_stage

from . import gpu_report
from .gpu_steps import CPU, GPU, Profile, prepare, steps

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"


# ---------------------------------------------------------------- running the steps


def run_step(stage: Stage, log: Path, timeout_s: float) -> dict:
    """Run one step, its output in `log`; its result: status, seconds, the error's last line."""
    absent = missing(stage.inputs)
    if absent:
        return {"status": "not run", "seconds": 0.0, "error": f"input missing: {', '.join(absent)}"}
    t = time.perf_counter()
    stage = dataclasses.replace(stage, env={"PYTHONUNBUFFERED": "1", **stage.env})
    rc = run_stage(stage, log, in_process=False, timeout_s=timeout_s)
    seconds = round(time.perf_counter() - t, 1)
    if rc is None:
        return {"status": "timeout", "seconds": seconds,
                "error": f"stopped after {timeout_s:.0f} s; last line: {last_error_line(log)}"}
    if rc:
        return {"status": "failed", "seconds": seconds, "error": f"exit {rc}: {last_error_line(log)}"}
    absent = missing(stage.outputs)
    problem = f"missing {', '.join(absent)}" if absent else (stage.check(log) if stage.check else "")
    return {"status": "failed" if problem else "ok", "seconds": seconds, "error": problem}


def run_steps(todo: list[Stage], out: Path, budget_s: float, only: list[str] | None = None,
              after_each: Callable[[dict], None] = lambda results: None) -> dict[str, dict]:
    """Every step in order (those in `only`, when given), each with its log in OUT/logs; a step starts only while
    `budget_s` lasts. The results by step name; `after_each` sees them after each step."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    deadline = time.monotonic() + budget_s
    for n, step in enumerate(todo, start=1):
        if only and step.name not in only:
            continue
        head, left = f"[{n}/{len(todo)}] {step.name}", deadline - time.monotonic()
        if left < 10:
            result = {"status": "not run", "seconds": 0.0,
                      "error": f"the run's time budget ({budget_s:.0f} s) was spent"}
        else:
            print(f"{head}: {step.what}", flush=True)
            log = out / "logs" / f"{n:02d}_{step.name}.log"
            result = {**run_step(step, log, min(step.timeout_s or left, left)), "log": str(log.relative_to(out))}
        results[step.name] = result
        print(f"{head}: {result['status']} ({result['seconds']:.1f} s) {result['error']}".rstrip(), flush=True)
        after_each(results)
    return results


# ---------------------------------------------------------------- the command line


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bash benchmarks/gpu_check.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", prog="bash benchmarks/gpu_check.sh", help="run the check (what gpu_check.sh does)")
    run.add_argument("out", help="logs, outputs and summary.md go here")
    run.add_argument("--cpu", action="store_true", help="the same steps on the CPU at tiny sizes")
    run.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps")
    run.add_argument("--budget-s", type=float, default=None, help="start no step after this many seconds (default: "
                     f"{GPU.budget_s:.0f} on a GPU, {CPU.budget_s:.0f} with --cpu)")
    prep = sub.add_parser("prepare", help="the first step: data, images and a checkpoint under OUT")
    prep.add_argument("out")
    prep.add_argument("--device", choices=["cpu", "cuda"], required=True)
    prep.add_argument("--timed-images", type=int, required=True)
    prep.add_argument("--timed-px", type=int, choices=[64, 512], required=True)
    prep.add_argument("--timed-arch", required=True)
    prep.add_argument("--timed-size", type=int, required=True)
    prep.add_argument("--fashion", action="store_true", help="also the Fashion-MNIST data of the side by side")
    apply = sub.add_parser("apply", help="put a GPU run's OUT/summary.md into BENCHMARKS.md's gpu_check block")
    apply.add_argument("out", help="a folder with a GPU run's summary.json and summary.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 when every step is ok."""
    args = get_args_parser().parse_args(argv)
    out = Path(args.out).resolve()
    if args.command == "prepare":
        prepare(out, args.device, args.timed_images, args.timed_px, args.timed_arch, args.timed_size,
                args.fashion)
        return 0
    if args.command == "apply":
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
        if summary.get("device") != "cuda":
            raise UserError(out, "holds no GPU run's summary.json", "pass the OUT of `bash benchmarks/gpu_check.sh "
                            "OUT` run on a GPU (a --cpu run never goes into BENCHMARKS.md)")
        gpu_report.splice(BENCHMARKS, (out / "summary.md").read_text())
        print(f"{BENCHMARKS}: the gpu_check block now holds {out / 'summary.md'}")
        apply_ssl(out)
        return 0
    return check(out, CPU if args.cpu else GPU, args.only, args.budget_s)


def check(out: Path, prof: Profile, only: list[str] | None, budget_s: float | None) -> int:
    """Run the steps, write OUT/summary.{json,md} after each and OUT/logs.tar.gz at the end; on a GPU, BENCHMARKS.md's
    gpu_check block too."""
    todo = steps(out, prof)
    unknown = sorted(set(only or ()) - {s.name for s in todo})
    if unknown:
        raise UserError("--only", f"no step named {', '.join(unknown)}", f"pick from {', '.join(s.name for s in todo)}")
    if prof.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("benchmarks/gpu_check.sh", "no CUDA GPU is visible",
                            "run it on a GPU, or add --cpu for the same steps on the CPU at tiny sizes")
    io.ensure_dir(out)
    before = {}
    if only and (out / "summary.json").is_file():  # a rerun of some steps: the others keep their earlier result
        before = json.loads((out / "summary.json").read_text()).get("results", {})
    budget_s = budget_s or prof.budget_s
    t_start = time.perf_counter()
    summary = {"device": prof.device, "date": datetime.date.today().isoformat(), "budget_s": budget_s,
               "command": "bash benchmarks/gpu_check.sh OUT" + (" --cpu" if prof.device == "cpu" else ""),
               "steps": [{"name": s.name, "what": s.what} for s in todo], "timed_images": prof.timed_images,
               "timed": next((s.what for s in todo if s.name == "hw1_2_timed"), "")}

    def write(results: dict) -> None:
        env = json.loads((out / "env.json").read_text()) if (out / "env.json").is_file() else {}
        summary.update(results={**before, **results}, env=env, wall_s=time.perf_counter() - t_start)
        io.write_json(out / "summary.json", summary)
        io.write_text(out / "summary.md", gpu_report.render(summary, out))

    stop = signal.signal(signal.SIGTERM, _interrupted)  # a step runs in its own session: run_stage ends it first
    try:
        results = {**before, **run_steps(todo, out, budget_s, only, write)}
    finally:
        signal.signal(signal.SIGTERM, stop)
    write(results)
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:  # what a device call brings back, with summary.*
        for path in sorted([*out.glob("logs/*.log"), *out.glob("bench_p*/bench.*"), *out.glob("runs/*/log.csv")]):
            tar.add(path, arcname=str(path.relative_to(out)))
    if prof.device == "cuda":
        gpu_report.splice(BENCHMARKS, (out / "summary.md").read_text())
        apply_ssl(out)
    print("\n" + (out / "summary.md").read_text())
    return 0 if all(results.get(s.name, {}).get("status") == "ok" for s in todo) else 1


def apply_ssl(out: Path) -> None:
    """The GPU side by side's curves into BENCHMARKS.md's ssl_gpu block, their PNGs into docs/img."""
    block = gpu_report.ssl_block(out, io.ensure_dir(BENCHMARKS.parent / "docs" / "img"), BENCHMARKS)
    if block:
        gpu_report.splice(BENCHMARKS, block, (gpu_report.SSL_BEGIN, gpu_report.SSL_END))
        print(f"{BENCHMARKS}: the ssl_gpu block now holds the side by side of {out}")


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cli(argv: list[str] | None = None) -> None:
    code = main(argv)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    run_main(cli)()
