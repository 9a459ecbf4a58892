"""Mean IoU of predicted masks against label masks, by the course's rule (SPEC §4).

Files pair by stem (`xxxx_mask.png` in both folders); both are read with the course's colour rule.
All images are pooled; classes 0..5 are scored (Unknown-labelled pixels predicted as a class count
against that class). Prints `class #i : IoU` per class, then `mean_iou: mIoU`.

    python mean_iou.py --pred runs/p2_pred --labels hw1_data/p2_data/validation
    python mean_iou.py -g hw1_data/p2_data/validation -p runs/p2_pred     # the course evaluator's flags
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from hw1.errors import WARNINGS, UserError, run_main
from hw1.p2.data import EVAL_CLASSES, MASK_SUFFIX, NUM_CLASSES, read_mask
from hw1.train.metrics import confusion_matrix, iou_from_confusion


def mask_files(folder: str) -> dict[str, Path]:
    """stem → path of every `xxxx_mask.png` in `folder`."""
    path = Path(folder)
    if not path.is_dir():
        raise UserError(path, "folder not found", "check the path")
    files = {p.name[:-len(MASK_SUFFIX)]: p for p in sorted(path.iterdir())
             if p.name.endswith(MASK_SUFFIX) and not p.name.startswith(".")}
    if not files:
        raise UserError(path, f"no xxxx{MASK_SUFFIX} files in this folder", "check the path")
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-p", "--pred", required=True, help="folder of predicted xxxx_mask.png")
    parser.add_argument("-g", "--labels", required=True, help="folder of ground-truth xxxx_mask.png")
    args = parser.parse_args(argv)
    preds, labels = mask_files(args.pred), mask_files(args.labels)
    if missing := sorted(labels.keys() - preds.keys()):
        raise UserError(args.pred, f"no prediction for {len(missing)} label mask(s), e.g. {missing[0]}{MASK_SUFFIX}",
                        "predict every image of the set")
    if unmatched := sorted(preds.keys() - labels.keys()):
        raise UserError(args.labels,
                        f"no label for {len(unmatched)} predicted mask(s), e.g. {unmatched[0]}{MASK_SUFFIX}",
                        "point --labels at the set the predictions were made for")
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    for stem, label_path in labels.items():
        pred, label = read_mask(preds[stem]), read_mask(label_path)
        if pred.shape != label.shape:
            raise UserError(preds[stem], f"prediction is {pred.shape[1]}x{pred.shape[0]} but its label is "
                            f"{label.shape[1]}x{label.shape[0]}", "write each mask at its image's size")
        cm += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(label), NUM_CLASSES)
    ious, miou = iou_from_confusion(cm, EVAL_CLASSES)
    for i, iou in enumerate(ious):
        if math.isnan(iou):
            WARNINGS.add("class in neither predictions nor labels (IoU 0/0 = nan, as the course's evaluator gives)",
                         f"class #{i}")
        print(f"class #{i} : {iou:1.5f}")
    print(f"mean_iou: {miou:f}")


if __name__ == "__main__":
    run_main(main)()
