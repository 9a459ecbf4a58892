"""Every relative link in README.md, BENCHMARKS.md and docs/ names a file that exists, and its `#anchor`, when it
has one, a heading of that file (GitHub's slugs). Web and mail links are not followed."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title"), ![alt](img)
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")  # [name]: target
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def markdown_files(root: Path) -> list[Path]:
    return [root / "README.md", root / "BENCHMARKS.md", *sorted((root / "docs").rglob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        marker = re.match(r"^\s{0,3}(`{3,}|~{3,})", line)
        if marker:
            if fence is None:
                fence = marker.group(1)[0]
            elif marker.group(1)[0] == fence:
                fence = None
            continue
        if fence is None:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text lower-cased, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a link into `path` may name: its headings' slugs (a repeated one numbered -1, -2, ...) and
    the names of its HTML anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    text = path.read_text(encoding="utf-8")
    for _, line in prose_lines(text):
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(1))
            found.add(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    found.update(HTML_ANCHOR.findall(text))
    return found


def broken_links(files: list[Path], root: Path) -> list[str]:
    """One line `file:line: target — why` per relative link whose file or anchor does not exist."""
    problems, cache = [], {}
    for path in files:
        for number, line in prose_lines(path.read_text(encoding="utf-8")):
            line = re.sub(r"`[^`]*`", "", line)  # a link in inline code is not a link
            targets = INLINE.findall(line) + REFERENCE.findall(line)
            for target in targets:
                if SCHEME.match(target):
                    continue
                file_part, _, anchor = target.partition("#")
                dest = (path.parent / file_part).resolve() if file_part else path
                where = f"{path.relative_to(root)}:{number}: {target}"
                if not dest.exists():
                    problems.append(f"{where} — no such file")
                elif anchor and dest.suffix == ".md":
                    if dest not in cache:
                        cache[dest] = anchors(dest)
                    if anchor.lower() not in cache[dest]:
                        problems.append(f"{where} — no heading with that anchor in {dest.name}")
    return problems


def test_every_relative_link_in_readme_benchmarks_and_docs_resolves() -> None:
    problems = broken_links(markdown_files(ROOT), ROOT)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_check_finds_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Precision (`--precision`)\n\n## Notes\n\n## Notes\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/page.md) [ok](docs/page.md#precision---precision) [ok](docs/page.md#notes-1) [web](https://x.org/a)\n"
        "[mail](mailto:a@b.c) [here](#a-readme) `[code](missing.md)`\n\n# A README\n\n```\n[fenced](missing.md)\n```\n"
        "[gone](docs/gone.md) ![img](docs/fig.png) [anchor](docs/page.md#nowhere)\n[ref]: docs/also_gone.md\n")
    (tmp_path / "BENCHMARKS.md").write_text("[ok](README.md#a-readme) [ok](docs/page.md)\n[gone](bench/none.md)\n")
    problems = broken_links(markdown_files(tmp_path), tmp_path)
    assert [p.split(" — ")[0] for p in problems] == [
        "README.md:9: docs/gone.md", "README.md:9: docs/fig.png", "README.md:9: docs/page.md#nowhere",
        "README.md:10: docs/also_gone.md", "BENCHMARKS.md:2: bench/none.md"], problems
