"""benchmarks/recipe_bench.py: a failed run is tried once more, and one whose every try failed shows in the table."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import recipe_bench
from hw1 import io


def test_table_counts_the_seeds_whose_every_try_failed() -> None:
    rows = [{"variant": "seed", "setting": "A", "seed": k, "val_acc": a, "rc": rc}
            for k, a, rc in (("0", "0.5", "0"), ("1", "0.7", "0"), ("2", "", "1"),  # seed 2 failed
                             ("0", "", "1"))]  # seed 0 failed once, then succeeded (above): not a failure
    rows += [{"variant": "strong", "setting": "A", "seed": k, "val_acc": "", "rc": "-9"} for k in ("0", "1")]
    text = recipe_bench.table(rows, ["seed", "strong"], ["A"])
    assert "| seed | 0.600 n=2, 1 failed (seed 2) |" in text and "| strong | 2 failed (seed 0, 1) |" in text
    assert "| seed | 0.600, 1 failed (seed 2) |" in recipe_bench.table(rows, ["seed"], ["A"], expected=2)


def test_a_failed_run_is_tried_once_more_and_one_that_keeps_failing_is_in_the_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    tries: dict[str, int] = {}

    def fake_run(cmd: list[str], run_dir: Path, log: Path, mode: str) -> int:
        seed = cmd[cmd.index("--seed") + 1]
        tries[seed] = tries.get(seed, 0) + 1
        if seed == "2" or (seed == "1" and tries[seed] == 1):  # seed 1 fails once, seed 2 always
            return 1
        io.append_csv_row(run_dir / "log.csv", {"epoch": 1, "val_acc": 0.5})
        return 0

    monkeypatch.setattr(recipe_bench, "run_once", fake_run)
    argv = ["--seeds", "0", "1", "2", "--variants", "seed", "--settings", "A", "--jobs", "1",
            "--out", str(tmp_path / "bench"), "--runs", str(tmp_path / "runs{seed}"), "--data-root", str(tmp_path)]
    recipe_bench.main(argv)
    assert tries == {"0": 1, "1": 2, "2": 2}
    assert "| seed | 0.500 n=2, 1 failed (seed 2) |" in (tmp_path / "bench" / "table.md").read_text()
    rows = io.read_csv_rows(tmp_path / "bench" / "runs.csv")
    assert [(r["seed"], r["rc"], r["try"]) for r in rows if r["seed"] != "0"] == [
        ("1", "1", "1"), ("1", "0", "2"), ("2", "1", "1"), ("2", "1", "2")]
    assert "seed 2: failed (exit 1" in capsys.readouterr().out
    recipe_bench.main(argv)  # what succeeded is done; the failed run is tried again
    assert tries == {"0": 1, "1": 2, "2": 4}
