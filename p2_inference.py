"""Write a colour mask `xxxx_mask.png` for every `xxxx_sat.jpg` in a folder (what hw1_2.sh runs).

The checkpoint is --checkpoint, else $P2_CHECKPOINT, else checkpoints/p2_deeplab.pt beside this
script; it names its model (FCN32s or a DeepLabV3), which is rebuilt without downloading anything.
Each mask has its input's own height and width and only the map's colours; files are written
atomically, so a re-run overwrites cleanly and no partial PNG is ever left.

    python p2_inference.py hw1_data/p2_data/validation runs/p2_pred [--tta]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from hw1 import io
from hw1.errors import run_main
from hw1.p2.data import MASK_SUFFIX, SatMaskDataset, collate, find_pairs, write_mask
from hw1.p2.models import model_from_checkpoint
from hw1.p2.training import predict_classes
from hw1.train import checkpoint, distributed, loading, precision

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "p2_deeplab.pt"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image_dir", help="folder of xxxx_sat.jpg images")
    parser.add_argument("output_dir", help="folder for the xxxx_mask.png files (created)")
    parser.add_argument("--checkpoint", default=None, help=f"default: $P2_CHECKPOINT, else {DEFAULT_CHECKPOINT}")
    parser.add_argument("--batch-size", type=int, default=8, help="default: %(default)s")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="default: %(default)s")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: %(default)s")
    parser.add_argument("--tta", action="store_true", help="average the identity, horizontal and vertical flips")
    precision.add_arg(parser, grading=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    path = Path(args.checkpoint or os.environ.get("P2_CHECKPOINT") or DEFAULT_CHECKPOINT)
    pairs = find_pairs(args.image_dir, need_masks=False)
    out = io.ensure_dir(args.output_dir)  # created (or refused) before any work
    device = distributed.setup_device(args.device, exact=True)  # true fp32 (SPEC §9)
    model, meta = model_from_checkpoint(path, checkpoint.load_checkpoint(path))
    prec = precision.resolve(args.precision, device, grading=True)
    model = model.to(device, memory_format=prec.memory_format).eval()
    loader = DataLoader(SatMaskDataset(pairs, meta["image_size"]), batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=collate, pin_memory=device.type == "cuda")
    with torch.no_grad(), prec.autocast():
        for batch in tqdm(loader, desc="masks", dynamic_ncols=True):
            images = loading.to_device(batch["image"], device, prec.memory_format)
            preds = predict_classes(model, images, batch["size"].tolist(), tta=args.tta)
            for index, pred in zip(batch["index"].tolist(), preds):
                write_mask(out / f"{pairs[index].stem}{MASK_SUFFIX}", pred.cpu().numpy())
    print(f"wrote {len(pairs)} masks to {out} ({meta['arch']} from {path}, {prec.describe()})")


if __name__ == "__main__":
    run_main(main)()
