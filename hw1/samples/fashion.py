"""Fashion-MNIST in the course's `hw1_data/` layout: real photographs for Problem 1 on a CPU (SPEC §10).

From the four idx files: `p1_data/mini/train/<class>_<n>.jpg` from the training set (unlabelled for BYOL,
the names give the supervised baseline its labels), `p1_data/office/{train,val}` a disjoint labelled subset of
the training set and validation images from the test set, with their CSVs. `--seed` draws the split, and each
seed has its own default folder (`sample_data/fashion`, `sample_data/fashion_s<seed>`). The folder's stamp
(`data_stamp.json`, hw1/samples/stamps.py) says what it holds: the same seed and sizes are reused without the idx
files; other data there is refused in one line, or with `--replace` deleted (exactly the files written here) first.

    python -m hw1.samples.fashion --out sample_data/fashion --seed 0
"""
from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .. import io
from ..errors import UserError, run_main
from .stamps import P1_OWNED, begin_write, check_free, default_root, end_write, is_written

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
INSTALL = ("apt-get install -y dataset-fashion-mnist (Debian), or python -c \"import torchvision; "
           "torchvision.datasets.FashionMNIST('fmnist', download=True)\" and FASHION_MNIST_DIR=fmnist")
# Defaults: 10,000 unlabelled images to pre-train on, 50 labelled a class to fine-tune on, 100 a class to validate.
SIZES = {"pretrain": 10000, "train_per_class": 50, "val_per_class": 100}
OWNED = P1_OWNED  # what a write deletes (and nothing else) when it replaces another


def candidate_dirs(data_root: Path | None = None, source: Path | None = None) -> list[Path]:
    """Where the idx files may be, in order: `source` alone when given; else $FASHION_MNIST_DIR (itself or
    torchvision's layout under it), Debian's package, torchvision's layout under the data root."""
    if source is not None:
        return [source, source / "FashionMNIST" / "raw"]
    dirs = []
    env = os.environ.get("FASHION_MNIST_DIR")
    if env:
        dirs += [Path(env), Path(env) / "FashionMNIST" / "raw"]
    dirs.append(DEBIAN_DIR)
    if data_root is not None:
        dirs.append(Path(data_root) / "FashionMNIST" / "raw")
    return dirs


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_dir(data_root: Path | None = None, source: Path | None = None) -> Path:
    """The first folder that holds all four idx files (plain or .gz), or one error naming both ways to get them."""
    dirs = candidate_dirs(data_root, source)
    for folder in dirs:
        if all(_idx_file(folder, stem) for pair in FILES.values() for stem in pair):
            return folder
    raise UserError(", ".join(str(d) for d in dirs), "Fashion-MNIST's four idx files not found", INSTALL)


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST's format: big-endian magic with the dtype and rank, the sizes, then the data)."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(path, "not an idx file of unsigned bytes", "use the original Fashion-MNIST files")
    rank = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(shape)):
        raise UserError(path, f"holds {body.size} bytes of data for a shape of {shape}", "the file is truncated; "
                        "download it again")
    return body.reshape(shape)


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_stem, labels_stem = FILES[split]
    images, labels = read_idx(_idx_file(folder, images_stem)), read_idx(_idx_file(folder, labels_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(folder, f"{split}: {images.shape} images against {labels.shape} labels",
                        "use the original Fashion-MNIST files")
    return images, labels


def _per_class(labels: np.ndarray, candidates: np.ndarray, per_class: int, what: str) -> np.ndarray:
    """`per_class` indices of each class, taken in `candidates`' (shuffled) order."""
    picked = []
    for c in range(int(labels.max()) + 1):
        of_class = candidates[labels[candidates] == c][:per_class]
        if len(of_class) < per_class:
            raise UserError(what, f"class {c} has {len(of_class)} images, {per_class} asked", "ask for fewer")
        picked.append(of_class)
    return np.concatenate(picked)


def draw_split(train_labels: np.ndarray, test_labels: np.ndarray, *, seed: int, pretrain: int, train_per_class: int,
               val_per_class: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the pre-training images and the labelled subset (the training set, disjoint) and of the
    validation images (the test set), drawn by `seed`."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_labels))
    office_train = _per_class(train_labels, order, train_per_class, "--train-per-class")
    rest = order[~np.isin(order, office_train)]  # the shuffled order, without the labelled subset
    if pretrain > len(rest):
        raise UserError("--pretrain", f"{pretrain} asked, {len(rest)} left after the labelled subset", "ask for fewer")
    office_val = _per_class(test_labels, rng.permutation(len(test_labels)), val_per_class, "--val-per-class")
    return rest[:pretrain], rng.permutation(office_train), office_val


def data_stamp(seed: int, pretrain: int = SIZES["pretrain"], train_per_class: int = SIZES["train_per_class"],
               val_per_class: int = SIZES["val_per_class"]) -> dict:
    """What `write_fashion` writes, as its folder's stamp says it."""
    # "writer": the module's name when stamps began, kept so that folders written before the move still match
    return {"writer": "hw1.fashion", "preset": "fashion", "seed": seed,
            "counts": {"pretrain": pretrain, "train_per_class": train_per_class, "val_per_class": val_per_class}}


def write_fashion(root: str | Path, *, seed: int = 0, pretrain: int = SIZES["pretrain"],
                  train_per_class: int = SIZES["train_per_class"], val_per_class: int = SIZES["val_per_class"],
                  source: Path | None = None, replace: bool = False) -> Path:
    """Write the course layout under `root` from the idx files in `source` (default: searched, `find_dir`), or
    reuse it when `root` already holds it; other data there is refused unless `replace`."""
    root = Path(root)
    stamp = data_stamp(seed, pretrain, train_per_class, val_per_class)
    if is_written(root, stamp):
        return root
    check_free(root, stamp, OWNED, replace=replace)
    source = find_dir(root, source)
    train_x, train_y = load_split(source, "train")
    test_x, test_y = load_split(source, "test")
    mini_idx, office_train, office_val = draw_split(train_y, test_y, seed=seed, pretrain=pretrain,
                                                    train_per_class=train_per_class, val_per_class=val_per_class)
    begin_write(root, stamp, OWNED)
    mini = io.ensure_dir(root / "p1_data" / "mini" / "train")
    counts: dict[int, int] = {}
    for i in mini_idx:
        c = int(train_y[i])
        _save(train_x[i], mini / f"{c}_{counts.get(c, 0)}.jpg")
        counts[c] = counts.get(c, 0) + 1
    office = root / "p1_data" / "office"
    for split, xs, ys, idx in (("train", train_x, train_y, office_train), ("val", test_x, test_y, office_val)):
        folder = io.ensure_dir(office / split)
        rows = []
        for n, i in enumerate(idx):
            name = f"{split}_{n:05d}.jpg"
            _save(xs[i], folder / name)
            rows.append([n, name, int(ys[i])])
        io.write_csv(office / f"{split}.csv", ["id", "filename", "label"], rows)
    end_write(root, stamp)
    return root


def _save(pixels: np.ndarray, path: Path) -> None:
    # Grayscale JPEG at the native 28 px: the loaders convert to RGB and resize, as for any course image.
    Image.fromarray(pixels, mode="L").save(path, quality=95)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="folder to write (default: sample_data/fashion for seed 0, "
                                                    "sample_data/fashion_s<seed> otherwise)")
    parser.add_argument("--seed", type=int, default=0, help="draws the split (default: %(default)s)")
    parser.add_argument("--pretrain", type=int, default=SIZES["pretrain"],
                        help="unlabelled pre-training images (default: %(default)s)")
    parser.add_argument("--train-per-class", type=int, default=SIZES["train_per_class"],
                        help="labelled fine-tuning images per class (default: %(default)s)")
    parser.add_argument("--val-per-class", type=int, default=SIZES["val_per_class"],
                        help="validation images per class, from the test set (default: %(default)s)")
    parser.add_argument("--source", default=None, help="folder of the four idx files (default: searched, SPEC §10)")
    parser.add_argument("--replace", action="store_true",
                        help="delete another seed's or size's data (or unstamped data) in --out, then write")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else default_root("fashion", args.seed)
    sizes = dict(pretrain=args.pretrain, train_per_class=args.train_per_class, val_per_class=args.val_per_class)
    done = "reused" if is_written(out, data_stamp(args.seed, **sizes)) else "wrote"
    root = write_fashion(out, seed=args.seed, source=Path(args.source) if args.source else None,
                         replace=args.replace, **sizes)
    print(f"{done} {root}")


if __name__ == "__main__":
    run_main(main)()
