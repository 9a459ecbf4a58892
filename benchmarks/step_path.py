"""Which of the project's functions and files one BYOL step passes through: the call stack at the optimiser step
(from p1_pretrain.main down) and every project function called between two optimiser steps (data, views, forward,
backward, schedule, EMA). A reading aid for the training loop, not a timing.

    python -m benchmarks.step_path --data-root DATA --out OUT
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def project_file(code: CodeType) -> str | None:
    """The code's file relative to the repository, or None outside it (the standard library, site-packages) and for
    this file."""
    path = Path(code.co_filename)
    if not path.is_absolute():  # <frozen os>, <string>: the standard library and dataclass-made methods
        return None
    try:
        rel = path.resolve().relative_to(ROOT)
    except ValueError:
        return None
    return None if rel.parts[0].startswith(".venv") or path.resolve() == Path(__file__).resolve() else str(rel)


def name(code: CodeType) -> str:
    return getattr(code, "co_qualname", code.co_name)  # the qualified name from Python 3.11


def trace(argv: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(the stack at the 3rd optimiser step, main first; the functions called between the 2nd and the 3rd)."""
    import p1_pretrain

    stacks: list[list[tuple[str, str]]] = []
    calls: set[tuple[str, str]] = set()
    recording = [False]
    real_step = torch.optim.AdamW.step

    def step(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        frame: FrameType | None = sys._getframe(1)
        stack = []
        while frame:
            rel = project_file(frame.f_code)
            if rel:
                stack.append((rel, name(frame.f_code)))
            frame = frame.f_back
        stacks.append(stack[::-1])
        recording[0] = len(stacks) == 2
        return real_step(self, *args, **kwargs)

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if recording[0] and event == "call":
            rel = project_file(frame.f_code)
            if rel:
                calls.add((rel, name(frame.f_code)))

    torch.optim.AdamW.step = step  # type: ignore[method-assign]
    sys.setprofile(profile)
    try:
        p1_pretrain.main(argv)
    finally:
        sys.setprofile(None)
        torch.optim.AdamW.step = real_step  # type: ignore[method-assign]
    return stacks[2], sorted(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True,
                        help="course-layout data (python -m hw1.samples.synthetic --preset tiny)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    stack, between = trace(["--data-root", args.data_root, "--out", args.out, "--arch", "resnet18", "--image-size",
                            "32", "--workers", "0", "--device", "cpu", "--batch-size", "16", "--epochs", "1",
                            "--max-steps", "4", "--gpu-aug", "--projection-hidden-size", "64", "--projection-size",
                            "32", "--eval-every", "100"])
    print("stack at the optimiser step (main first):")
    print("".join(f"    {f} {n}\n" for f, n in stack), end="")
    print(f"  {len(stack)} functions in {len({f for f, _ in stack})} files")
    print("project functions called between two optimiser steps:")
    print("".join(f"    {f} {n}\n" for f, n in between), end="")
    print(f"  {len(between)} functions in {len({f for f, _ in between})} files")
    every = set(stack) | set(between)
    print(f"together: {len(every)} functions in {len({f for f, _ in every})} files")


if __name__ == "__main__":
    main()
