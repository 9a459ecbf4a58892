"""One error path for the project: user mistakes become one line and exit code 2."""
from __future__ import annotations

import collections
import contextlib
import functools
import os
import sys
import tempfile
import traceback
import warnings
from typing import Callable


class UserError(Exception):
    """A mistake in the user's input: printed as `error: <file>: <problem> — <fix>`."""

    def __init__(self, where: object, problem: str = "", fix: str = "") -> None:
        self.where, self.problem, self.fix = str(where), problem, fix
        super().__init__(self.line())

    def line(self) -> str:
        if not self.problem:  # torch re-creates a DataLoader worker's error from its traceback text: keep our line
            return "error: " + self.where.rsplit("UserError: error: ", 1)[-1].strip().splitlines()[-1]
        text = f"error: {self.where}: {self.problem}"
        return f"{text} — {self.fix}" if self.fix else text


class WarningCounter:
    """Counts repeated warnings (skipped images, off-palette pixels) and reports each kind once.

    DataLoader workers are forked processes: their `add` appends to a spool file that the main
    process folds into its counts when it reports, so nothing is lost and nothing prints per item.
    """

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}
        self._owner = os.getpid()
        self._spool = os.path.join(tempfile.gettempdir(), f"hw1-warnings-{self._owner}.tsv")
        with contextlib.suppress(FileNotFoundError):  # a stale spool of an earlier process with our pid
            os.unlink(self._spool)

    def add(self, kind: str, example: str, n: int = 1) -> None:
        if os.getpid() != self._owner:
            with open(self._spool, "a") as f:
                f.write(f"{_one_line(kind)}\t{_one_line(example)}\t{n}\n")
            return
        self.counts[kind] += n
        self.examples.setdefault(kind, example)

    def _collect(self) -> None:
        """Fold the workers' spooled warnings into this process's counts."""
        reading = self._spool + ".reading"
        try:
            os.replace(self._spool, reading)  # workers still running start a new spool
        except FileNotFoundError:
            return
        with open(reading) as f:
            for line in f:
                kind, example, n = line.rstrip("\n").rsplit("\t", 2)
                self.add(kind, example, int(n))
        os.unlink(reading)

    def summary(self) -> list[str]:
        if os.getpid() == self._owner:
            self._collect()
        return [f"warning: {kind}: {n} time(s), e.g. {self.examples[kind]}" for kind, n in self.counts.items()]

    def flush(self) -> None:
        if os.getpid() != self._owner:  # a worker's warnings are already in the spool
            return
        for line in self.summary():
            print(line, file=sys.stderr)
        self.counts.clear()
        self.examples.clear()


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


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
