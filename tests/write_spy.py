"""Run a script and record every file this process opens for writing, for the distributed tests:

    SPY_DIR=DIR torchrun --nproc_per_node 2 tests/write_spy.py p1_finetune.py ARGS...

Writes DIR/writes-rank<RANK>.txt, one `how<TAB>path` line per write (open for writing, temp file,
rename, torch.save), so a test can check that only rank 0 writes. With DDP_CHECKS=1 the ranks run
tests/ddp_checks.py first.
"""
from __future__ import annotations

import builtins
import io
import os
import runpy
import sys
import tempfile

import torch

_log = os.open(os.path.join(os.environ["SPY_DIR"], f"writes-rank{os.environ.get('RANK', '0')}.txt"),
               os.O_WRONLY | os.O_CREAT | os.O_APPEND)


def _note(how: str, path: object) -> None:
    if isinstance(path, (str, os.PathLike)) and not str(path).startswith(("/dev/", "/proc/")):
        os.write(_log, f"{how}\t{os.fspath(path)}\n".encode())


def _spy(how: str, fn, path_arg: int = 0, path_kw: str = "", writes=lambda args, kwargs: True):
    def wrapper(*args, **kwargs):
        path = args[path_arg] if len(args) > path_arg else kwargs.get(path_kw)
        if writes(args, kwargs):
            _note(how, path)
        return fn(*args, **kwargs)
    return wrapper


def _open_writes(args: tuple, kwargs: dict) -> bool:
    mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
    return any(c in mode for c in "wax+")


builtins.open = io.open = _spy("open", builtins.open, 0, "file", _open_writes)
tempfile.mkstemp = _spy("mkstemp", tempfile.mkstemp, 2, "dir")
os.replace = _spy("replace", os.replace, 1, "dst")
torch.save = _spy("torch.save", torch.save, 1, "f")

if os.environ.get("DDP_CHECKS") == "1":  # the gloo checks first, in the same ranks (one launch fewer)
    import ddp_checks

    ddp_checks.run_all()
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python SCRIPT` would have it
runpy.run_path(sys.argv[0], run_name="__main__")
