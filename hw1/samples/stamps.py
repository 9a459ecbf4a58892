"""What a data folder holds (`data_stamp.json`, written last: writer, preset, seed, counts), so that two writes
never mix: a finished write of the same data is reused as it is, and a folder of another preset's or seed's data (or
of files with no stamp) is refused in one line unless `--replace` asks to delete exactly what the writer owns there.
The sample writers (`synthetic.py`, `fashion.py`) and `reproduce.py` read it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

from .. import io
from ..errors import UserError

STAMP = "data_stamp.json"  # what a data folder holds: {writer, preset, seed, counts, finished}
# What the writers own under a data folder: deleted, and nothing else, when a write replaces another.
P1_OWNED = ("p1_data/mini/train", "p1_data/office/train", "p1_data/office/val", "p1_data/office/train.csv",
            "p1_data/office/val.csv")
OWNED = (*P1_OWNED, "p2_data/train", "p2_data/validation")


def default_root(preset: str, seed: int) -> Path:
    """A preset's own data folder: `sample_data/<preset>` for seed 0, `sample_data/<preset>_s<seed>` otherwise."""
    return Path("sample_data") / (preset if seed == 0 else f"{preset}_s{seed}")


def read_stamp(root: str | Path) -> dict | None:
    """A data folder's stamp: None when it has none, {} when it cannot be read."""
    try:
        stamp = json.loads((Path(root) / STAMP).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def describe(stamp: dict) -> str:
    """A stamp in words, for an error line."""
    if not stamp.get("preset"):
        return f"an unreadable {STAMP}"
    counts = "".join(f", {k} {v}" for k, v in stamp.get("counts", {}).items())
    return f"preset {stamp['preset']}, seed {stamp.get('seed')}{counts}"


def is_written(root: str | Path, stamp: dict) -> bool:
    """Whether `root` holds a finished write of `stamp`'s data: it is reused as it is."""
    return read_stamp(root) == {**stamp, "finished": True}


def conflict(root: str | Path, stamp: dict, owned: Sequence[str]) -> str | None:
    """Why writing `stamp`'s data into `root` would mix it with what is there; None when nothing would."""
    old = read_stamp(root)
    if old is not None:
        if {k: v for k, v in old.items() if k != "finished"} == stamp:
            return None  # this same write, finished or stopped before its end: the writer rewrites it
        return f"holds other data ({describe(old)}), not this write's ({describe(stamp)})"
    found = [rel for rel in owned if (Path(root) / rel).exists()]
    if found:
        return (f"holds {found[0]} but no {STAMP} (written before data folders were stamped, or by a write "
                "stopped before its end)")
    return None


def check_free(root: str | Path, stamp: dict, owned: Sequence[str], *, replace: bool) -> None:
    """Refuse in one line to write `stamp`'s data where other data is, unless `replace` asks to delete it."""
    problem = conflict(root, stamp, owned)
    if problem and not replace:
        raise UserError(root, problem, f"pass --replace to delete {', '.join(owned)} and {STAMP} there and write "
                                       "it again, or choose another --out")


def remove_write(root: str | Path, owned: Sequence[str]) -> None:
    """Delete a write from `root`: its stamp, then the paths its writer owns; nothing else."""
    for rel in (STAMP, *owned):
        path = Path(root) / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def begin_write(root: str | Path, stamp: dict, owned: Sequence[str]) -> Path:
    """Empty what the writer owns under `root` and stamp the write as begun; `end_write` stamps it finished."""
    root = io.ensure_dir(root)
    root = Path(root)
    remove_write(root, owned)
    io.write_json(root / STAMP, {**stamp, "finished": False})
    return root


def end_write(root: str | Path, stamp: dict) -> None:
    """Stamp the write finished: the last file written, so a folder without it holds an unfinished write."""
    io.write_json(Path(root) / STAMP, {**stamp, "finished": True})
