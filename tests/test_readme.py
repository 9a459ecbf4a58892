"""The README is one page (at most 150 lines) with the quick start within its first 40, and no doc speaks of a GPU
being lent: a figure not measured on a GPU says "not measured on a GPU yet" (issue 35)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 150
QUICK_START = "reproduce.py --preset sample"
QUICK_START_WITHIN = 40
LENDING = re.compile(r"\blen(t|d|ding)\b", re.IGNORECASE)


def doc_files(root: Path) -> list[Path]:
    return [root / "README.md", root / "BENCHMARKS.md", *sorted((root / "docs").glob("*.md"))]


def too_long(text: str) -> bool:
    return len(text.splitlines()) > MAX_LINES


def quick_start_near_top(text: str) -> bool:
    return any(QUICK_START in line for line in text.splitlines()[:QUICK_START_WITHIN])


def lending_lines(files: list[Path], root: Path) -> list[str]:
    """`file:line: text` for each line that speaks of lending."""
    return [f"{path.relative_to(root)}:{number}: {line.strip()}"
            for path in files
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if LENDING.search(line)]


def test_readme_is_one_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert not too_long(text), f"README.md has {len(text.splitlines())} lines, at most {MAX_LINES}: details go to docs/"


def test_quick_start_is_within_the_first_lines() -> None:
    assert quick_start_near_top(README.read_text(encoding="utf-8")), (
        f"`{QUICK_START}` is not within README.md's first {QUICK_START_WITHIN} lines")


def test_no_doc_speaks_of_lending() -> None:
    hits = lending_lines(doc_files(ROOT), ROOT)
    assert not hits, "a figure not measured on a GPU says 'not measured on a GPU yet':\n" + "\n".join(hits)


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """Each check fails on what the README and BENCHMARKS.md once held: 197 lines, the quick start pushed down, a
    GPU row "not measured (no GPU lent to this task)"."""
    assert too_long("line\n" * 197) and not too_long("line\n" * MAX_LINES)
    command = f".venv/bin/python {QUICK_START}\n"
    assert not quick_start_near_top("prose\n" * QUICK_START_WITHIN + command)
    assert quick_start_near_top("prose\n" * (QUICK_START_WITHIN - 1) + command)
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("a lengthy, splendid, lentil-free page\n")
    (tmp_path / "BENCHMARKS.md").write_text("| c | not measured (no GPU lent to this task) |\n")
    (tmp_path / "docs" / "a.md").write_text("fine\nno GPU has been Lent\nwhen a GPU is lending\nto lend one\n")
    assert lending_lines(doc_files(tmp_path), tmp_path) == [
        "BENCHMARKS.md:1: | c | not measured (no GPU lent to this task) |", "docs/a.md:2: no GPU has been Lent",
        "docs/a.md:3: when a GPU is lending", "docs/a.md:4: to lend one"]
