"""bench.md: the rows, MFU, ratios, profile and overhead of a result as Markdown."""
from __future__ import annotations

from typing import Any


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:,.{digits}f}"
    return str(v)


def markdown(result: dict) -> str:
    env = result["env"]
    lines = [f"# bench.py — {env['date']}", "",
             f"device: {env['device']} · torch {env['torch']} · {env['cpus']} CPUs · command: `{env['command']}`",
             f"config: {env['config']}", "",
             "| row | images/s | peak memory (GiB) | notes |", "|---|---|---|---|"]
    for r in result["rows"]:
        notes = [f"{k}={fmt(v, 2)}" for k, v in r.items() if k not in ("row", "images_per_s", "peak_mem_gib")]
        lines.append(f"| {r['row']} | {fmt(r.get('images_per_s'))} | "
                     f"{fmt(r.get('peak_mem_gib'), 2)} | {'; '.join(notes)} |")
    if result.get("mfu"):
        m = result["mfu"]
        lines += ["", f"MFU of (c): {fmt(m['gflop_per_image'], 2)} GFLOP per image "
                  "(FlopCounterMode, forward + backward), "
                  f"peak {fmt(m['peak_tflops'])} TFLOP/s → compile off {fmt(m.get('c'), 3)}, "
                  f"compile on {fmt(m.get('c+compile'), 3)}"]
    if result.get("ratios"):
        lines += ["", "ratios: " + ", ".join(f"{k} = {fmt(v, 2)}" for k, v in result["ratios"].items())]
    if result.get("profile"):
        p = result["profile"]
        step = sum(v for k, v in p["phases_ms"].items() if not k.startswith("augment"))
        lines += ["", f"profile of one step of (c) ({p['clock']}, ms; share of the listed phases):", "",
                  "| phase | ms | share |", "|---|---|---|"]
        lines += [f"| {k} | {v:.1f} | {v / step:.0%} |" for k, v in p["phases_ms"].items()]
        lines += ["", "| top op | ms (self) | calls |", "|---|---|---|"]
        lines += [f"| `{o['op']}` | {o['ms']:.1f} | {o['calls']} |" for o in p["top_ops"]]
    if result.get("overhead"):
        lines += ["", "per-epoch overhead (seconds; `before_s`: what every epoch paid before issue 12):", "",
                  "| cost | seconds | notes |", "|---|---|---|"]
        lines += [f"| {k} | {fmt(v.get('seconds'), 3)} | "
                  f"{'; '.join(f'{n}={fmt(x, 3)}' for n, x in v.items() if n != 'seconds')} |"
                  for k, v in result["overhead"].items()]
    if result.get("section_seconds"):
        lines += ["", "seconds per section: " + ", ".join(f"{k} {v}" for k, v in result["section_seconds"].items())]
    return "\n".join(lines) + "\n"
