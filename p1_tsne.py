"""t-SNE of the second-last layer (the pooled 2048-d feature) of fine-tuned classifiers on Office-Home train.

For each checkpoint (by default the first- and last-epoch ones of setting C): features of the whole
train set, PCA to 50 dims, scikit-learn t-SNE to 2-D, one PNG coloured by class, and one figure
with all maps side by side. How clustered each embedding is, as numbers (OUT/tsne_scores.json):
  silhouette_2d  silhouette score of the class labels in the 2-D map (-1..1, higher = tighter classes)
  knn_acc        cosine kNN accuracy (k=20) in feature space, train → val

    python p1_tsne.py --checkpoints runs/finetune_C/first.pt runs/finetune_C/last.pt --out runs/tsne
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

from hw1 import io, viz
from hw1.data import folders
from hw1.errors import UserError, run_main
from hw1.p1.models import Classifier, classifier_from_meta
from hw1.train import checkpoint, distributed, loading, precision
from hw1.train.metrics import knn_accuracy


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", default=["runs/finetune_C/first.pt", "runs/finetune_C/last.pt"],
                        help="classifier checkpoints of p1_finetune.py (default: %(default)s)")
    parser.add_argument("--data-root", default="hw1_data", help="course data folder (default: %(default)s)")
    parser.add_argument("--out", default="runs/tsne", help="PNGs and tsne_scores.json go here (default: %(default)s)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: %(default)s")
    precision.add_arg(parser)
    parser.add_argument("--seed", type=int, default=0, help="t-SNE's random state (default: %(default)s)")
    parser.add_argument("--perplexity", type=float, default=30.0, help="default: %(default)s")
    parser.add_argument("--pca-dims", type=int, default=50, help="PCA before t-SNE (default: %(default)s)")
    parser.add_argument("--knn-k", type=int, default=20, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=256, help="default: %(default)s")
    parser.add_argument("--workers", type=int, default=2, help="data-loader processes (default: %(default)s)")
    return parser


def tsne_2d(features: np.ndarray, *, seed: int = 0, perplexity: float = 30.0, pca_dims: int = 50) -> np.ndarray:
    """PCA to `pca_dims` (when the features are wider), then a 2-D t-SNE; perplexity capped for small sets."""
    x = np.asarray(features, dtype=np.float32)
    dims = min(pca_dims, *x.shape)
    if x.shape[1] > dims:
        x = PCA(n_components=dims, random_state=seed).fit_transform(x)
    perplexity = min(perplexity, max(1.0, (len(x) - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    # One OpenMP thread: t-SNE's threads spin-wait, and on a shared or busy CPU that made it 20x
    # slower (83 s instead of 4 s for 195 points); a few thousand points take seconds on one thread.
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(x)


def silhouette_2d(embedding: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette of the labels in the map; needs 2 ≤ classes < points, else NaN."""
    n_labels = len(np.unique(labels))
    if not 2 <= n_labels < len(labels):
        return float("nan")
    return float(silhouette_score(embedding, labels))


def load_classifier(path: str, device: torch.device,
                    memory_format: torch.memory_format = torch.contiguous_format) -> tuple[Classifier, dict, int]:
    """A p1_finetune.py checkpoint → (model in eval mode, meta, epochs trained)."""
    ckpt = checkpoint.load_checkpoint(path)
    meta = ckpt.get("meta", {})
    checkpoint.check_meta(path, meta, {"task": "classify"}, keys=("task",))
    if "arch" not in meta or "model" not in ckpt:
        raise UserError(path, "not a classifier checkpoint (no meta.arch / model)",
                        "pass a checkpoint of p1_finetune.py")
    model = classifier_from_meta({"num_classes": folders.NUM_OFFICE_CLASSES, **meta}, path)
    model.load_state_dict(ckpt["model"])
    return model.to(device, memory_format=memory_format).eval(), meta, int(ckpt.get("epoch", 0))


def label_for(path: Path) -> str:
    """A short unique name: `<run folder>_<stem>` (runs/finetune_C/last.pt → finetune_C_last)."""
    return f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    device = distributed.setup_device(args.device)
    prec = precision.resolve(args.precision, device)
    out = Path(args.out)
    results, embeddings, titles = [], [], []
    train_labels = None
    for ckpt_path in map(Path, args.checkpoints):
        model, meta, epoch = load_classifier(str(ckpt_path), device, prec.memory_format)
        tf = folders.classify_eval_transform(meta.get("image_size", 128))
        train_set, val_set = (folders.office_dataset(args.data_root, "train", tf),
                              folders.office_dataset(args.data_root, "val", tf))
        (train_f, train_y), (val_f, val_y) = (
            loading.extract_features(model.features, loading.in_order(split, args.batch_size, args.workers, device),
                                     device, prec=prec, desc=f"{ckpt_path.name} {name}")
            for name, split in (("train", train_set), ("val", val_set)))
        knn = knn_accuracy(train_f, train_y, val_f, val_y, k=args.knn_k)
        labels = train_y.cpu().numpy()
        emb = tsne_2d(train_f.cpu().numpy(), seed=args.seed, perplexity=args.perplexity, pca_dims=args.pca_dims)
        sil = silhouette_2d(emb, labels)
        name = label_for(ckpt_path)
        title = f"{name} (epoch {epoch}): silhouette {sil:.3f}, kNN acc {knn:.3f}"
        png = viz.save_tsne(out / f"tsne_{name}.png", emb, labels, title, num_classes=folders.NUM_OFFICE_CLASSES)
        results.append({"checkpoint": str(ckpt_path), "name": name, "setting": meta.get("setting"),
                        "arch": meta["arch"], "epoch": epoch, "feature_dim": int(train_f.shape[1]),
                        "n_train": len(train_set), "n_val": len(val_set), "silhouette_2d": sil, "knn_acc": knn,
                        "png": png.name})
        embeddings.append(emb)
        titles.append(title)
        train_labels = labels
        print(f"{ckpt_path}: epoch {epoch}, {train_f.shape[1]}-d features of {len(train_set)} images, "
              f"silhouette (2-D) {sil:.4f}, kNN acc (train→val) {knn:.4f} → {png}")
    side = viz.save_tsne_grid(out / "tsne_side_by_side.png", embeddings, train_labels, titles,
                              num_classes=folders.NUM_OFFICE_CLASSES)
    io.write_json(out / "tsne_scores.json", {"perplexity": args.perplexity, "pca_dims": args.pca_dims,
                                             "knn_k": args.knn_k, "seed": args.seed, "side_by_side": side.name,
                                             "checkpoints": results})
    print(f"side by side: {side}; scores: {out / 'tsne_scores.json'}")


if __name__ == "__main__":
    run_main(main)()
