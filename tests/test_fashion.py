"""The Fashion-MNIST preset's data (SPEC §10): idx files in their real format → the course layout, the split drawn
by the seed, one error line when the files are missing, and reproduce.py's plan for the preset."""
from __future__ import annotations

import argparse
import csv
import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import reproduce
from hw1 import io
from hw1.errors import UserError, run_main
from hw1.report.results import Layout
from hw1.samples import fashion, stamps

ROOT = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    """MNIST's idx format: 0, 0, dtype 0x08 (unsigned byte), rank, the sizes big-endian, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def identity_code(split: str, index: np.ndarray) -> np.ndarray:
    """The top 12 rows of 28x28 images: 3 x 7 blocks of 4 px, black or white, one bit each (the split, then the
    index's 20 bits): blocks that survive the writer's JPEG, so every written image says which source image it is."""
    bits = np.stack([np.full(len(index), split == "test")] + [(index >> b) & 1 == 1 for b in range(20)], axis=1)
    blocks = np.where(bits, 255, 0).astype(np.uint8).reshape(-1, 3, 1, 7, 1)
    return np.broadcast_to(blocks, (len(index), 3, 4, 7, 4)).reshape(-1, 12, 28)


def identity(path: Path) -> tuple[str, int]:
    """The split and index of the source image a written JPEG holds (`identity_code`)."""
    pixels = np.asarray(Image.open(path).convert("L"), np.float64)
    bits = (pixels[:12].reshape(3, 4, 7, 4).mean(axis=(1, 3)) > 127).ravel()
    return ("test" if bits[0] else "train"), int(sum(1 << b for b, on in enumerate(bits[1:]) if on))


def identities(folder: Path) -> list[tuple[str, int]]:
    return [identity(p) for p in sorted(folder.glob("*.jpg"))]


def fake_fashion(folder: Path, n_train: int = 200, n_test: int = 60, gz: bool = True) -> Path:
    """Four idx files of 28x28 images whose top rows hold the split and index (`identity_code`), labels 0-9 in
    turn (label = index % 10)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, :12] = identity_code(split, np.arange(n))
        images[:, 14:26, 5:20] = (np.arange(n) * 7 % 200 + 40)[:, None, None]
        labels = np.arange(n) % 10
        images_stem, labels_stem = fashion.FILES[split]
        write_idx(folder / images_stem, images, gz)
        write_idx(folder / labels_stem, labels, gz)
    return folder


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_layout_split_and_seed(tmp_path, monkeypatch):
    source = fake_fashion(tmp_path / "raw")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(source))
    root = fashion.write_fashion(tmp_path / "a", seed=0, pretrain=100, train_per_class=3, val_per_class=2)
    mini = sorted((root / "p1_data" / "mini" / "train").glob("*.jpg"))
    assert len(mini) == 100
    assert all(p.stem.split("_")[0].isdigit() and int(p.stem.split("_")[0]) < 10 for p in mini)  # <class>_<n>.jpg
    office = root / "p1_data" / "office"
    train, val = csv_rows(office / "train.csv"), csv_rows(office / "val.csv")
    assert list(train[0]) == ["id", "filename", "label"]
    assert sorted(int(r["label"]) for r in train) == sorted(list(range(10)) * 3)
    assert sorted(int(r["label"]) for r in val) == sorted(list(range(10)) * 2)
    img = Image.open(office / "train" / train[0]["filename"])
    assert img.size == (28, 28)
    again = fashion.write_fashion(tmp_path / "b", seed=0, pretrain=100, train_per_class=3, val_per_class=2)
    other = fashion.write_fashion(tmp_path / "c", seed=1, pretrain=100, train_per_class=3, val_per_class=2)

    def labels(r: Path) -> list[str]:
        return [x["label"] for x in csv_rows(r / "p1_data" / "office" / "train.csv")]

    assert labels(again) == labels(root) and labels(other) != labels(root)
    same = [np.asarray(Image.open(p)) for p in sorted((again / "p1_data/mini/train").glob("*.jpg"))]
    assert all(np.array_equal(np.asarray(Image.open(p)), q) for p, q in zip(mini, same))


def test_split_is_disjoint_and_balanced():
    train_labels, test_labels = np.arange(1000) % 10, np.arange(300) % 10
    for seed in (0, 1):
        mini, office_train, office_val = fashion.draw_split(train_labels, test_labels, seed=seed, pretrain=900,
                                                            train_per_class=5, val_per_class=20)
        assert len(mini) == 900 and len(set(mini.tolist())) == 900
        assert not set(mini.tolist()) & set(office_train.tolist())
        assert np.bincount(train_labels[office_train]).tolist() == [5] * 10
        assert np.bincount(test_labels[office_val]).tolist() == [20] * 10
        assert set(np.bincount(train_labels[mini]).tolist()) != {0}  # every class among the unlabelled images
    with pytest.raises(fashion.UserError, match="left after the labelled subset"):
        fashion.draw_split(train_labels, test_labels, seed=0, pretrain=951, train_per_class=5, val_per_class=1)
    with pytest.raises(fashion.UserError, match="class 0 has 30 images, 31 asked"):
        fashion.draw_split(train_labels, test_labels, seed=0, pretrain=1, train_per_class=1, val_per_class=31)


def test_written_files_are_disjoint_and_exact(tmp_path):
    """Decoded from the written JPEGs: no pre-training image is a labelled or validation one, none is written twice,
    the counts are exact and every label (a file name's class, a CSV row) is its source image's."""
    source = fake_fashion(tmp_path / "raw", n_train=300)
    root = fashion.write_fashion(tmp_path / "d", seed=0, pretrain=150, train_per_class=5, val_per_class=3,
                                 source=source)
    p1 = root / "p1_data"
    mini, train, val = (identities(p1 / "mini" / "train"), identities(p1 / "office" / "train"),
                        identities(p1 / "office" / "val"))
    assert not set(mini) & set(train + val)  # pre-training and fine-tuning share no image
    assert len(mini) == len(set(mini)) == 150 and len(train) == len(set(train)) == 50
    assert len(val) == len(set(val)) == 30
    assert {s for s, _ in mini + train} == {"train"} and {s for s, _ in val} == {"test"}
    drawn = fashion.draw_split(np.arange(300) % 10, np.arange(60) % 10, seed=0, pretrain=150, train_per_class=5,
                               val_per_class=3)
    assert sorted(i for _, i in mini) == sorted(drawn[0].tolist())
    assert all(int(p.stem.split("_")[0]) == identity(p)[1] % 10 for p in (p1 / "mini" / "train").glob("*.jpg"))
    for split in ("train", "val"):
        assert all(int(r["label"]) == identity(p1 / "office" / split / r["filename"])[1] % 10
                   for r in csv_rows(p1 / "office" / f"{split}.csv"))


def mtimes(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def test_another_seed_in_the_same_folder_is_refused_then_replaced_exactly(tmp_path, capsys):
    source, out = fake_fashion(tmp_path / "raw"), tmp_path / "d"
    sizes = ["--pretrain", "100", "--train-per-class", "3", "--val-per-class", "2"]
    write = run_main(fashion.main)
    write(["--out", str(out), "--source", str(source), "--seed", "0", *sizes])
    seed0 = identities(out / "p1_data" / "mini" / "train")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        write(["--out", str(out), "--source", str(source), "--seed", "1", *sizes])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out}: holds other data (preset fashion, seed 0,")
    assert "--replace" in err[0] and "p1_data/mini/train" in err[0]
    assert identities(out / "p1_data" / "mini" / "train") == seed0  # refused: nothing written
    (out / "notes.txt").write_text("mine")  # not the writer's: kept
    write(["--out", str(out), "--source", str(source), "--seed", "1", "--replace", *sizes])
    mini, train = identities(out / "p1_data" / "mini" / "train"), identities(out / "p1_data" / "office" / "train")
    drawn = fashion.draw_split(np.arange(200) % 10, np.arange(60) % 10, seed=1, pretrain=100, train_per_class=3,
                               val_per_class=2)
    assert len(mini) == 100 and sorted(i for _, i in mini) == sorted(drawn[0].tolist())
    assert not set(mini) & set(train) and sorted(i for _, i in train) == sorted(drawn[1].tolist())
    assert (out / "notes.txt").read_text() == "mine" and stamps.read_stamp(out)["seed"] == 1
    before = mtimes(out)
    capsys.readouterr()
    write(["--out", str(out), "--source", str(tmp_path / "nowhere"), "--seed", "1", *sizes])  # no idx files needed
    assert capsys.readouterr().out.startswith("reused") and mtimes(out) == before


def test_a_folder_without_a_stamp_is_refused_and_a_stopped_write_is_redone(tmp_path):
    source = fake_fashion(tmp_path / "raw")
    kw = dict(seed=0, pretrain=100, train_per_class=3, val_per_class=2, source=source)
    root = fashion.write_fashion(tmp_path / "d", **kw)
    stamp = stamps.read_stamp(root)
    (root / stamps.STAMP).unlink()  # as a folder written before stamps, or by a write killed before its end
    with pytest.raises(UserError, match="holds p1_data/mini/train but no data_stamp.json"):
        fashion.write_fashion(root, **kw)
    io.write_json(root / stamps.STAMP, {**stamp, "finished": False})  # this write, stopped: redone
    stray = root / "p1_data" / "mini" / "train" / "9_999.jpg"
    shutil.copy(next((root / "p1_data" / "office" / "train").glob("*.jpg")), stray)
    fashion.write_fashion(root, **kw)
    assert not stray.exists() and len(identities(root / "p1_data" / "mini" / "train")) == 100
    assert stamps.read_stamp(root) == {**stamp, "finished": True}


def test_plain_idx_files_are_read(tmp_path):
    source = fake_fashion(tmp_path / "raw", gz=False)
    images, labels = fashion.load_split(source, "test")
    assert images.shape == (60, 28, 28) and labels.tolist() == (np.arange(60) % 10).tolist()


def test_missing_files_one_line_with_both_fixes(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "FASHION_MNIST_DIR": str(tmp_path / "nowhere")}
    proc = subprocess.run([sys.executable, "-m", "hw1.samples.fashion", "--out", str(tmp_path / "out"),
                           "--source", str(tmp_path / "nowhere")], cwd=ROOT, capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "apt-get install -y dataset-fashion-mnist" in lines[0] and "FashionMNIST(" in lines[0]
    assert not (tmp_path / "out").exists()


def test_truncated_file_is_named(tmp_path):
    source = fake_fashion(tmp_path / "raw", gz=False)
    path = source / fashion.FILES["train"][0]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(fashion.UserError, match="truncated") as err:
        fashion.load_split(source, "train")
    assert str(path) in err.value.line()


def test_search_order(tmp_path, monkeypatch):
    torchvision_layout = fake_fashion(tmp_path / "data" / "FashionMNIST" / "raw")
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "no-debian")
    assert fashion.find_dir(tmp_path / "data") == torchvision_layout
    env_dir = fake_fashion(tmp_path / "env")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(env_dir))
    assert fashion.find_dir(tmp_path / "data") == env_dir
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "data"))  # torchvision's root works too
    assert fashion.find_dir(None) == torchvision_layout


def test_plan_runs_problem_1_only(tmp_path):
    args = argparse.Namespace(preset="fashion", data_root=str(tmp_path / "data"), device="cpu", seed=2,
                              sam_checkpoint="sam.pth", sam_model_type=None)
    stages = reproduce.plan(args, Layout(tmp_path / "runs"))
    names = [s.name for s in stages]
    assert names[:3] == ["Fashion-MNIST data", "pre-train BYOL", "pre-train supervised"]
    assert "--seed" in stages[0].argv and stages[0].argv[stages[0].argv.index("--seed") + 1] == "2"
    assert [n for n in names if n.startswith("fine-tune")] == [f"fine-tune {s}" for s in ("A", "B", "C", "D", "E",
                                                                                           "E0")]
    assert "t-SNE" in names and "print model classifier" in names
    assert not [n for n in names if "FCN32s" in n or "DeepLab" in n or "fcn32s" in n or "deeplabv3" in n
                or n == "Segment Anything"]


def test_reproduce_without_the_files_says_so_before_any_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(SystemExit) as exit_:
        run_main(reproduce.main)(["--preset", "fashion", "--data-root", str(tmp_path / "data"),
                                  "--runs", str(tmp_path / "r")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset-fashion-mnist" in err[0]
    assert not (tmp_path / "r").exists()


def data_stage_only(monkeypatch) -> None:
    """reproduce.main runs its first stage (the data) only, and writes no report."""
    plan = reproduce.plan
    monkeypatch.setattr(reproduce, "plan", lambda args, layout: plan(args, layout)[:1])
    monkeypatch.setattr(reproduce, "write_report", lambda layout, report, info: Path(report) / "REPORT.md")


def test_reproduce_reuses_a_written_folder_without_the_idx_files(tmp_path, monkeypatch, capsys):
    source, data = fake_fashion(tmp_path / "raw", n_train=10600, n_test=1000), tmp_path / "data"
    fashion.main(["--out", str(data), "--seed", "2", "--source", str(source)])  # the data stage's command
    shutil.rmtree(source)  # a copied data folder, on a machine without the idx files
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "no-debian")
    data_stage_only(monkeypatch)
    before = mtimes(data)
    reproduce.main(["--preset", "fashion", "--seed", "2", "--data-root", str(data), "--runs", str(tmp_path / "r"),
                    "--in-process"])
    assert "[1/1] Fashion-MNIST data: done" in capsys.readouterr().out and mtimes(data) == before


def test_reproduce_refuses_another_seeds_folder_and_force_replaces_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(fake_fashion(tmp_path / "raw", n_train=10600, n_test=1000)))
    data = tmp_path / "data"
    fashion.main(["--out", str(data), "--seed", "0"])
    data_stage_only(monkeypatch)
    argv = ["--preset", "fashion", "--seed", "1", "--data-root", str(data), "--runs", str(tmp_path / "r"),
            "--in-process"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_main(reproduce.main)(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {data}: holds other data (preset fashion, seed 0,")
    assert "--force" in err[0] and f"--out {data} --seed 1 --replace`" in err[0]
    assert not (tmp_path / "r").exists() and stamps.read_stamp(data)["seed"] == 0
    reproduce.main(argv + ["--force"])
    assert stamps.read_stamp(data) == {**fashion.data_stamp(1), "finished": True}
    assert len(list((data / "p1_data" / "mini" / "train").glob("*.jpg"))) == fashion.SIZES["pretrain"]


def test_each_seed_has_its_own_default_data_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source = fake_fashion(tmp_path / "raw")
    fashion.main(["--seed", "3", "--source", str(source), "--pretrain", "100", "--train-per-class", "3",
                  "--val-per-class", "2"])
    assert stamps.read_stamp(tmp_path / "sample_data" / "fashion_s3")["seed"] == 3
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(SystemExit):
        run_main(reproduce.main)(["--preset", "fashion", "--seed", "4", "--runs", "r"])
    assert "sample_data/fashion_s4/FashionMNIST/raw" in capsys.readouterr().err
    assert stamps.default_root("fashion", 0) == Path("sample_data/fashion")
