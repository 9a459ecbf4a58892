"""Atomic file writes: every output is written to a temp file beside it, then renamed."""
from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from .errors import UserError

_UMASK = os.umask(0o022)  # the only way to read the umask is to set it: put it straight back
os.umask(_UMASK)


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create a folder (and its parents), or fail with one clear error when it cannot be written to."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise _unwritable(path, err) from err
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Hidden and not ending in the target's extension: a temp file left by a killed run matches no `*.png` glob.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _unwritable(path.parent, err) from err
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private (0600); outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except Exception as err:
        if _disk_full(path.parent, err):  # torch.save reports a full disk as a zip-writer RuntimeError
            raise UserError(path, "not written: the disk is full (the previous file, if any, is kept)",
                            "free some space there, or write the outputs to another disk") from err
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def append_csv_row(path: str | os.PathLike, row: dict) -> None:
    """Append one row to a metrics log, rewriting it atomically (logs are small: one row an epoch)."""
    path = Path(path)
    rows: list[dict] = []
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    rows.append({k: _fmt(v) for k, v in row.items()})
    header: list[str] = []
    for r in rows:
        header += [k for k in r if k not in header]
    write_csv(path, header, [[r.get(k, "") for k in header] for r in rows])


def read_csv_rows(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _disk_full(folder: Path, err: Exception) -> bool:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    try:
        return shutil.disk_usage(folder).free < 16 * 2**20
    except OSError:
        return False


def _unwritable(folder: Path, err: OSError) -> UserError:
    return UserError(folder, f"cannot write here ({err.strerror or err})", "choose a writable output folder")


def _fmt(v: object) -> object:
    return f"{v:.6g}" if isinstance(v, float) else v
