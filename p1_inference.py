"""Predict the Office-Home class (0..64) of every image an `id,filename,label` CSV names.

The grading interface behind `hw1_1.sh`. The CSV's `label` column may be empty or hold
placeholders: it is ignored. Output: `id,filename,label`, one row per input row, same order.
The checkpoint is `--checkpoint`, else `$P1_CHECKPOINT`, else `checkpoints/p1_classifier.pt` beside
this script: one written by p1_finetune.py, whose `meta` names the model it holds. Never downloads.

    python p1_inference.py --csv office/val.csv --image-dir office/val --out pred.csv
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from hw1 import io
from hw1.data import folders
from hw1.errors import UserError, run_main
from hw1.p1.models import ARCHS, Classifier, classifier_from_meta, guess_arch
from hw1.train import checkpoint, distributed, loading, precision

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "p1_classifier.pt"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", required=True, help="images CSV with columns id,filename[,label]")
    parser.add_argument("--image-dir", required=True, help="folder holding the images the CSV names")
    parser.add_argument("--out", required=True, help="output CSV (its folder is created)")
    parser.add_argument("--checkpoint", default=None,
                        help="classifier checkpoint (default: $P1_CHECKPOINT, else checkpoints/p1_classifier.pt "
                             "beside this script)")
    parser.add_argument("--batch-size", type=int, default=256, help="default: %(default)s")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="data-loader processes (default: %(default)s)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: %(default)s")
    precision.add_arg(parser, grading=True)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser


def checkpoint_path(arg: str | None) -> Path:
    """`--checkpoint`, else `$P1_CHECKPOINT`, else the default in `checkpoints/`."""
    path = Path(arg or os.environ.get("P1_CHECKPOINT") or DEFAULT_CHECKPOINT)
    if not path.is_file():
        raise UserError(path, "classifier checkpoint not found",
                        "download it (bash hw1_download_ckpt.sh), train one with p1_finetune.py, "
                        "or set P1_CHECKPOINT / --checkpoint")
    return path


def describe(state: dict) -> str:
    """What a checkpoint that is not a classifier holds, for the error message."""
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return f"a plain state_dict ({guess_arch(state)} weights, e.g. a backbone file)"
    meta = state.get("meta")
    if isinstance(meta, dict) and meta.get("task"):
        return f"a {meta['task']!r} checkpoint" + (f" of {meta['arch']}" if meta.get("arch") else "")
    return f"a dict with keys {', '.join(sorted(map(str, state))[:5])}"


def load_classifier(path: Path, device: torch.device,
                    memory_format: torch.memory_format = torch.contiguous_format) -> tuple[Classifier, dict]:
    """Build exactly the model the checkpoint's `meta` names and load its weights."""
    state = checkpoint.load_checkpoint(path)
    meta = state.get("meta")
    if not isinstance(meta, dict) or meta.get("task") != "classify" or not isinstance(state.get("model"), dict):
        raise UserError(path, f"holds {describe(state)}, not a Problem 1 classifier",
                        "pass a checkpoint written by p1_finetune.py (its OUT/best.pt)")
    arch, num_classes, size = meta.get("arch"), meta.get("num_classes"), meta.get("image_size")
    if arch not in ARCHS or not isinstance(size, int):
        raise UserError(path, f"classifier meta names arch={arch!r}, image_size={size!r}",
                        f"expected one of {', '.join(ARCHS)} and an integer size")
    if num_classes != folders.NUM_OFFICE_CLASSES:
        raise UserError(path, f"classifier predicts {num_classes} classes, Office-Home has "
                              f"{folders.NUM_OFFICE_CLASSES}",
                        "pass an Office-Home classifier")
    model = classifier_from_meta(meta, path)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise UserError(path, f"weights do not match the {arch} its meta names ({str(err).splitlines()[0][:120]})",
                        "the file is damaged or was edited; re-export it") from err
    return model.to(device, memory_format=memory_format).eval(), meta


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError("--batch-size", f"{args.batch_size} is not a positive number", "use e.g. 256")
    path = checkpoint_path(args.checkpoint)  # input mistakes first, before any device notes
    rows = folders.read_image_csv(args.csv, args.image_dir, need_labels=False)
    io.ensure_dir(Path(args.out).parent)  # an unwritable output fails now, not after the predictions
    device = distributed.setup_device(args.device, exact=True)  # true fp32 (SPEC §9)
    prec = precision.resolve(args.precision, device, grading=True)
    model, meta = load_classifier(path, device, prec.memory_format)

    t0 = time.time()
    image_dir = Path(args.image_dir)
    dataset = folders.ImageListDataset([image_dir / r.filename for r in rows],
                                    transform=folders.classify_eval_transform(meta["image_size"]))
    batches = loading.in_order(dataset, args.batch_size, args.workers, device)
    logits, _ = loading.extract_features(model, batches, device, prec=prec, desc="inference")
    preds = logits.argmax(1).tolist()
    io.write_csv(args.out, folders.CSV_COLUMNS, [[r.id, r.filename, p] for r, p in zip(rows, preds)])
    print(f"predicted {len(rows)} images with {meta['arch']} ({path}, {meta['image_size']} px) on {device}, "
          f"{prec.describe()}, in {time.time() - t0:.1f}s → {args.out}")


if __name__ == "__main__":
    run_main(main)()
