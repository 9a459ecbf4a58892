"""The sample data's folder (hw1/samples/stamps.py): another preset's or seed's data is refused in one line or, asked,
replaced by exactly what the writer owns; the same data is reused as it is."""
from __future__ import annotations

from pathlib import Path

import pytest

from hw1 import io
from hw1.errors import UserError, run_main
from hw1.samples import stamps, synthetic

# The tiny preset's files: 64 x 3 Mini-ImageNet, 65 x 3 and 65 x 1 Office-Home, 32 and 6 satellite images with masks.
TINY = {"p1_data/mini/train": 192, "p1_data/office/train": 195, "p1_data/office/val": 65, "p2_data/train": 64,
        "p2_data/validation": 12}


def counts(root: Path) -> dict:
    return {rel: len(list((root / rel).iterdir())) for rel in TINY}


def test_another_seed_is_refused_in_one_line_then_replaced_exactly(tmp_path, capsys):
    out, write = tmp_path / "d", run_main(synthetic.main)
    write(["--out", str(out), "--preset", "tiny", "--seed", "0"])
    seed0 = (out / "p1_data" / "mini" / "train" / "0_0.jpg").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        write(["--out", str(out), "--preset", "tiny", "--seed", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out}: holds other data (preset tiny, seed 0,")
    assert "--replace" in err[0] and "p2_data/validation" in err[0]
    (out / "p1_data" / "pretrain_model_SL.pt").write_bytes(b"given")  # not the writer's: kept
    (out / "p2_data" / "train" / "0099_sat.jpg").write_bytes(b"")  # as a larger preset's leaves it
    write(["--out", str(out), "--preset", "tiny", "--seed", "1", "--replace"])
    assert counts(out) == TINY and (out / "p1_data" / "pretrain_model_SL.pt").read_bytes() == b"given"
    assert (out / "p1_data" / "mini" / "train" / "0_0.jpg").read_bytes() != seed0
    assert stamps.read_stamp(out) == {**synthetic.data_stamp("tiny", 1), "finished": True}
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    capsys.readouterr()
    write(["--out", str(out), "--preset", "tiny", "--seed", "1"])
    assert capsys.readouterr().out.startswith("reused") and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_unstamped_or_another_presets_folder_is_refused(tmp_path):
    root = synthetic.write_sample_data(tmp_path / "d", preset="tiny")
    (root / stamps.STAMP).unlink()  # as a folder written before stamps, or by a write killed before its end
    with pytest.raises(UserError, match="holds p1_data/mini/train but no data_stamp.json"):
        synthetic.write_sample_data(root, preset="tiny")
    io.write_json(root / stamps.STAMP, {**synthetic.data_stamp("sample", 0), "finished": True})
    with pytest.raises(UserError, match=r"holds other data \(preset sample, seed 0, mini_per_class 20"):
        synthetic.write_sample_data(root, preset="tiny")
    assert counts(root) == TINY


def test_a_runs_folder_from_before_the_move_skips_its_stamped_data_and_every_stage_after(tmp_path, monkeypatch,
                                                                                         stages_ran):
    """stages.json recorded the data stage as `python -m hw1.sample_data …` before hw1/samples/ existed: the folder's
    stamp says the same data is written, so neither it nor the stages that read it run again."""
    import json
    import shutil

    import reproduce

    ran = stages_ran
    monkeypatch.setattr(reproduce, "write_report", lambda layout, report, info: Path(report) / "REPORT.md")
    runs, data = tmp_path / "runs", tmp_path / "data"
    argv = ["--preset", "tiny", "--runs", str(runs), "--data-root", str(data)]
    synthetic.write_sample_data(data, preset="tiny")
    reproduce.main(argv)
    assert ran and "sample data" not in ran  # the stamp says the data is there: it is not written again
    records = json.loads((runs / "stages.json").read_text())
    for rec in records.values():
        rec["status"] = "done"
    records["sample data"] = {"command": f"python -m hw1.sample_data --out {data} --preset tiny --seed 0",
                              "status": "done"}
    io.write_json(runs / "stages.json", records)
    ran.clear()
    reproduce.main(argv)
    assert ran == []
    shutil.rmtree(data)  # no data: the data stage runs, and every stage reading it after it
    reproduce.main(argv)
    assert ran[0] == "sample data" and len(ran) == len(records)
