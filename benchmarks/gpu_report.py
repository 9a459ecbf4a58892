"""gpu_check's summary as Markdown (OUT/summary.md), and BENCHMARKS.md's gpu_check block replaced by it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from hw1 import io
from hw1.errors import UserError

from .table import markdown

BEGIN, END = "<!-- gpu_check:begin -->", "<!-- gpu_check:end -->"
SSL_BEGIN, SSL_END = "<!-- ssl_gpu:begin -->", "<!-- ssl_gpu:end -->"
SSL_STEPS = {"ssl": "Equal views on a GPU: ours against byol-pytorch, both fed our batched views",
             "ssl_small_stem": "Ours on the 32 px field's small stem (3x3 stride 1, no max-pool)"}
BENCH_TITLES = {"bench_p1": "bench.py: BYOL rows, MFU and the profile of one step",
                "bench_p2": "bench.py: segmentation rows and the per-epoch overhead"}


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(summary: dict, out: Path) -> str:
    """The summary: the environment, one row per step (status, seconds, the error's last line), what did not run
    and why, then the bench tables and the timed hw1_2.sh from the files under `out`."""
    env, results = summary.get("env", {}), summary["results"]
    on_gpu = summary["device"] == "cuda"
    ran = [s for s in summary["steps"] if s["name"] in results]
    ok = [s for s in ran if results[s["name"]]["status"] == "ok"]
    lines = [f"### `benchmarks/gpu_check.sh`{' on a GPU' if on_gpu else ' --cpu (tiny sizes: a check of the script)'}",
             "", f"Date: {summary['date']}. Device: {env.get('device', 'unknown (the prepare step did not say)')}. "
             f"{env.get('software', '')} Command: `{summary['command']}`: {len(ok)} of {len(summary['steps'])} steps "
             f"ok, {summary['wall_s']:.0f} s (budget {summary['budget_s']:.0f} s).", "",
             "| step | checks | status | seconds | error (last line) |", "|---|---|---|---|---|"]
    for s in summary["steps"]:
        r = results.get(s["name"], {"status": "not run", "seconds": 0.0, "error": "not selected (--only)"})
        lines.append(f"| {s['name']} | {cell(s['what'])} | {r['status']} | {r['seconds']:.1f} | {cell(r['error'])} |")
    not_run = [(s["name"], results.get(s["name"], {}).get("error", "not selected (--only)"))
               for s in summary["steps"] if results.get(s["name"], {}).get("status", "not run") != "ok"]
    if not_run:
        lines += ["", "Did not run or failed: " + "; ".join(f"`{name}`: {cell(why)}" for name, why in not_run) + "."]
    for name, title in BENCH_TITLES.items():
        path = out / name / "bench.json"
        if results.get(name, {}).get("status") in ("ok", "failed") and path.is_file():
            body = markdown(json.loads(path.read_text())).split("\n", 1)[1].strip("\n")  # less its title
            lines += ["", f"#### {title}", ""] + [ln for ln in body.splitlines() if not ln.startswith("config: ")]
    timed = results.get("hw1_2_timed")
    if timed and timed["status"] == "ok":
        lines += ["", f"#### {summary['timed']}", "",
                  f"{timed['seconds']:.1f} s wall, {summary['timed_images'] / timed['seconds']:.1f} images/s."]
    return "\n".join(lines).rstrip("\n") + "\n"


def splice(benchmarks: Path, body: str, markers: tuple[str, str] = (BEGIN, END)) -> None:
    """Replace what stands between two of BENCHMARKS.md's markers (the gpu_check block's by default) with `body`
    (a temp file, then a rename)."""
    text = benchmarks.read_text()
    (first, last), name = markers, markers[0][5:].split(":")[0]
    begin, end = text.find(first), text.find(last)
    if begin < 0 or end < begin:
        raise UserError(benchmarks, f"no {name} block (a line {first}, later a line {last})",
                        "put the two lines where the GPU rows go")
    io.write_text(benchmarks, text[:begin + len(first)] + "\n" + body.rstrip("\n") + "\n" + text[end:])


def ssl_block(out: Path, images: Path, benchmarks: Path) -> str:
    """The GPU side by side's tables, made anew from the curves its steps saved (a row stopped by its time limit
    shows where it got), and their PNGs copied into `images`; "" when neither step saved a curve."""
    from . import ssl_bench

    parts = []
    for name, title in SSL_STEPS.items():
        if not list((out / name / "curves").glob("*.json")):
            continue
        table = ssl_bench.report(out / name)
        png = images / f"ssl_gpu_{name}.png"
        shutil.copyfile(out / name / "ssl.png", png)
        setup = json.loads((out / name / "ssl.json").read_text())["results"][0].get("setup", {})
        sizes = ", ".join(f"{k} {v}" for k, v in setup.items())
        parts += [f"#### {title}", "", f"Setup: {sizes}.", "", table.strip(), "",
                  f"![{title}]({png.relative_to(benchmarks.parent).as_posix()})", ""]
    return "\n".join(parts)
