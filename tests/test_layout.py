"""docs/layout.md's tree is the package's tree, and imports run one way through it: the foundation, train/, data/,
p1/ and p2/, samples/, report/ (a module imports only from its own subpackage or one above it in that list)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The order imports go down: each concern may import from those before it (p1 and p2 not from each other).
LAYERS = {"": 0, "train": 1, "data": 2, "p1": 3, "p2": 3, "samples": 4, "report": 5}


def tree_paths(text: str) -> list[str]:
    """The .py paths of the first ```text block that starts with `hw1/`, read from its indentation."""
    block = re.search(r"```text\n(hw1/\n.*?)```", text, flags=re.S)
    assert block, "docs/layout.md has no ```text block of hw1/'s tree"
    paths, folders = [], []
    for line in block.group(1).splitlines():
        name = line.split("#")[0].strip()
        depth = (len(line) - len(line.lstrip())) // 2
        folders = folders[:depth]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        else:
            paths.append("/".join([*folders, name]))
    return sorted(paths)


def test_the_documented_tree_is_the_package() -> None:
    documented = tree_paths((ROOT / "docs" / "layout.md").read_text())
    actual = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "hw1").rglob("*.py"))
    assert documented == actual


def test_tree_paths_reads_nesting() -> None:
    text = "```text\nhw1/\n  a.py   # x\n  sub/   # y\n    b.py\n  c.py\n```"
    assert tree_paths(text) == ["hw1/a.py", "hw1/c.py", "hw1/sub/b.py"]


def concern(root: Path, module: str) -> str:
    """`hw1.train.engine` or `hw1.train` -> "train"; `hw1.io` (a module of hw1/ itself) -> ""."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (root / "hw1" / parts[1]).is_dir()) else ""


def imports_of(root: Path, path: Path) -> set[str]:
    """Every hw1 module or package `path` imports, at the top or inside a function, as an absolute name."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = (node.module or "").split(".") if not node.level else \
                package[:len(package) - node.level + 1] + ((node.module or "").split(".") if node.module else [])
            for alias in node.names:
                full = [*base, alias.name]
                found.add(".".join(full if root.joinpath(*full).with_suffix(".py").is_file() else base))
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.split(".")[0] == "hw1"}


def upward_imports(root: Path) -> list[str]:
    """Each import from a concern not above the importer's (`LAYERS`), as "FILE imports MODULE"."""
    upward = []
    for path in sorted((root / "hw1").rglob("*.py")):
        here = concern(root, ".".join(path.relative_to(root).with_suffix("").parts))
        for target in sorted(imports_of(root, path)):
            there = concern(root, target)
            if there != here and LAYERS[there] >= LAYERS[here]:
                upward.append(f"{path.relative_to(root)} imports {target}")
    return upward


def test_imports_go_one_way_between_concerns() -> None:
    assert upward_imports(ROOT) == []


def test_an_upward_or_sideways_import_is_caught(tmp_path: Path) -> None:
    """The engine once read p1's `describe_model`; p2 reading p1 would tie the problems together."""
    for rel, text in {"hw1/__init__.py": "", "hw1/io.py": "", "hw1/train/__init__.py": "",
                      "hw1/train/engine.py": "from .. import io\nfrom . import state\n"
                                             "def f():\n    from ..p1.models import describe_model\n",
                      "hw1/train/state.py": "", "hw1/p1/__init__.py": "",
                      "hw1/p1/models.py": "from ..train import engine\n",
                      "hw1/p2/__init__.py": "", "hw1/p2/training.py": "from hw1.p1 import models\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert upward_imports(tmp_path) == ["hw1/p2/training.py imports hw1.p1.models",
                                        "hw1/train/engine.py imports hw1.p1.models"]
