"""What the course's stack (Python 3.8, torch 2.4, SPEC §9) lacks and the pinned one has, in one place."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence


class BooleanOptionalAction(argparse.Action):
    """`--flag` / `--no-flag` (argparse has it only from Python 3.9)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        names = [n for s in option_strings for n in ((s, "--no-" + s[2:]) if s.startswith("--") else (s,))]
        super().__init__(names, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, not (option_string or "").startswith("--no-"))

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def strip_prefix(text: str, prefix: str) -> str:
    """`str.removeprefix` (Python 3.9)."""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def strip_suffix(text: str, suffix: str) -> str:
    """`str.removesuffix` (Python 3.9)."""
    return text[:-len(suffix)] if suffix and text.endswith(suffix) else text


def is_relative_to(path: Path, other: Path) -> bool:
    """`Path.is_relative_to` (Python 3.9)."""
    try:
        path.relative_to(other)
    except ValueError:
        return False
    return True
