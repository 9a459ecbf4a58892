"""The Fashion-MNIST preset's data (SPEC §10): idx files in their real format → the course layout, the split drawn
by the seed, one error line when the files are missing, and reproduce.py's plan for the preset."""
from __future__ import annotations

import argparse
import csv
import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import reproduce
from hw1 import fashion
from hw1.errors import run_main
from hw1.report_data import Layout

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


def fake_fashion(folder: Path, n_train: int = 200, n_test: int = 60, gz: bool = True) -> Path:
    """Four idx files of 28x28 images whose pixel (0, 0) and (0, 1) hold the split and index, labels 0-9 in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 5:20, 5:20] = (np.arange(n) * 7 % 200 + 40)[:, None, None]
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


def test_plain_idx_files_are_read(tmp_path):
    source = fake_fashion(tmp_path / "raw", gz=False)
    images, labels = fashion.load_split(source, "test")
    assert images.shape == (60, 28, 28) and labels.tolist() == (np.arange(60) % 10).tolist()


def test_missing_files_one_line_with_both_fixes(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "FASHION_MNIST_DIR": str(tmp_path / "nowhere")}
    proc = subprocess.run([sys.executable, "-m", "hw1.fashion", "--out", str(tmp_path / "out"),
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


def test_ssl_side_by_side_says_where_a_curve_crosses(tmp_path):
    """benchmarks/ssl_bench.py's verdict and table: the first evaluation above the random start, or none."""
    from benchmarks import ssl_bench as ssl

    below = [{"step": 0, "knn_acc": 0.70}, {"step": 25, "knn_acc": 0.60}, {"step": 50, "knn_acc": 0.70}]
    above = below[:2] + [{"step": 50, "knn_acc": 0.71, "images_per_s": 20.0}, {"step": 75, "knn_acc": 0.72}]
    assert ssl.crossing(below) is None and ssl.crossing(above) == 50
    args = argparse.Namespace(steps=75)
    table = ssl.markdown([{"pipeline": "ours", "curve": above, "crosses_at": 50},
                          {"pipeline": "ref", "curve": below + [{"step": 75, "knn_acc": 0.6}], "crosses_at": None}],
                         args)
    assert "| ours | 0.700 | 0.600 | 0.710 | 0.720 | 20.0 | step 50 |" in table
    assert "| ref |" in table and "no, within 75 steps" in table
