"""One stage of reproduce.py or of the GPU check (benchmarks/gpu_check.sh): its command, and running it with its
output in a log file.

A stage runs as a subprocess (SIGTERM passed on, so training saves a checkpoint), or for the tests
inside this interpreter; its stdout can be kept as a file, renamed into place only on success. A stage with a time
limit runs in its own session: past the limit, or when the runner is stopped, it is killed with every process it
started (torchrun's workers, loader workers, compilers).
"""
from __future__ import annotations

import contextlib
import glob
import os
import runpy
import shlex
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TextIO

from ..compat import is_relative_to

ROOT = Path(__file__).resolve().parent.parent  # the repository: the scripts stages run live here
PY = sys.executable


@dataclass
class Stage:
    """One stage of reproduce.py or step of the GPU check: a command, the files that show it is done, and (for
    training) its run folder."""

    name: str
    argv: list[str]
    outputs: list[Path]
    run_dir: Path | None = None          # training: resumed with --resume after a stop, else started afresh
    env: dict[str, str] = field(default_factory=dict)
    stdout_file: Path | None = None      # keep the command's stdout as a file (mean_iou.py's table)
    needs: list[str] = field(default_factory=list)  # earlier stages whose outputs it reads: it re-runs after them
    inputs: list[Path] = field(default_factory=list)  # files it reads that an earlier stage makes: not run without
    what: str = ""                       # one line: what it shows (the GPU check's summary)
    timeout_s: float | None = None       # past it, killed with every process it started
    check: Callable[[Path], str] | None = None  # after exit 0, a further check given its log: the problem, or ""
    cwd: Path | None = None              # where it runs (default: here)
    done: Callable[[], bool] | None = None  # its work says for itself that it is there (a data folder's stamp)

    def command(self) -> str:
        """The command as a person would type it (python, paths relative to the repo when they can be)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        words = ["python" if w == PY else _short(w) for w in self.argv]
        text = shlex.join(words) + (f" > {shlex.quote(str(self.stdout_file))}" if self.stdout_file else "")
        return f"{env} {text}" if env else text


def _short(word: str) -> str:
    p = Path(word)
    return str(p.relative_to(ROOT)) if p.is_absolute() and is_relative_to(p, ROOT) else word


def missing(paths: Sequence[Path]) -> list[str]:
    """The outputs that are not there: a path, or a glob pattern with no match."""
    return [str(p) for p in paths if not (glob.glob(str(p)) if any(c in str(p) for c in "*?[") else p.exists())]


def run_stage(stage: Stage, log: Path, in_process: bool, timeout_s: float | None = None) -> int | None:
    """Run one stage with its output in `log` (stdout in `stage.stdout_file` when set); returns the exit code, or
    None when it ran past `timeout_s` (default: its own limit)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as log_f:
        log_f.write(f"$ {stage.command()}\n")
        log_f.flush()
        if stage.stdout_file is None:
            return _run(stage, log_f, log_f, in_process, timeout_s or stage.timeout_s)
        tmp = stage.stdout_file.with_name(f".{stage.stdout_file.name}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as out_f:
            rc = _run(stage, out_f, log_f, in_process, timeout_s or stage.timeout_s)
        if rc == 0:  # renamed only on success: never a half-made output
            os.replace(tmp, stage.stdout_file)
        else:
            tmp.unlink(missing_ok=True)
        return rc


def _run(stage: Stage, stdout_f: TextIO, stderr_f: TextIO, in_process: bool, limit: float | None) -> int | None:
    if in_process and stage.argv[0] == PY and limit is None:
        return _run_in_process(stage, stdout_f, stderr_f)
    proc = subprocess.Popen(stage.argv, stdout=stdout_f, stderr=stderr_f, cwd=stage.cwd,
                            env={**os.environ, **stage.env}, stdin=subprocess.DEVNULL if limit is not None else None,
                            start_new_session=limit is not None)
    if limit is not None:  # its own session: past its time, or when the runner stops, its whole group is killed
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
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


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children: unlike wall time, not inflated
    by other programs sharing the machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def last_error_line(log: Path) -> str:
    """The line of a log that says what went wrong: the last `error:` or exception line, else the last line."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or "Error:" in line or "Exception:" in line:
            return line[:200]
    return lines[-1][:200] if lines else ""


def log_tail(path: Path, n: int = 15) -> str:
    """The last `n` lines of a stage's log (progress bars' carriage returns as line breaks)."""
    return "\n".join(path.read_text(errors="replace").replace("\r", "\n").splitlines()[-n:]) if path.is_file() else ""

