"""One error path for the project: user mistakes become one line and exit code 2."""
from __future__ import annotations

import collections
import functools
import os
import sys
import traceback
import warnings
from typing import Callable


class UserError(Exception):
    """A mistake in the user's input: printed as `error: <file>: <problem> — <fix>`."""

    def __init__(self, where: object, problem: str, fix: str = "") -> None:
        self.where, self.problem, self.fix = str(where), problem, fix
        super().__init__(self.line())

    def line(self) -> str:
        text = f"error: {self.where}: {self.problem}"
        return f"{text} — {self.fix}" if self.fix else text


class WarningCounter:
    """Counts repeated warnings (skipped images, off-palette pixels) and reports each kind once."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}

    def add(self, kind: str, example: str, n: int = 1) -> None:
        self.counts[kind] += n
        self.examples.setdefault(kind, example)

    def summary(self) -> list[str]:
        return [f"warning: {kind}: {n} time(s), e.g. {self.examples[kind]}" for kind, n in self.counts.items()]

    def flush(self) -> None:
        for line in self.summary():
            print(line, file=sys.stderr)
        self.counts.clear()
        self.examples.clear()


WARNINGS = WarningCounter()


def run_main(main: Callable[[list[str] | None], object]) -> Callable[[list[str] | None], None]:
    """Wrap a script's main: UserError → one line on stderr and exit 2 (`--debug` keeps the traceback)."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> None:
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in argv or os.environ.get("HW1_DEBUG") == "1"
        if "--debug" in argv:
            argv.remove("--debug")
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        try:
            main(argv)
        except UserError as err:
            if debug:
                traceback.print_exc()
            print(err.line(), file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        finally:
            WARNINGS.flush()

    return wrapper
