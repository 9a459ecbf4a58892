"""Train DeepLabV3-ResNet101 (the report's model B) on the satellite masks with focal loss.

Defaults are the reference recipe: COCO_WITH_VOC_LABELS_V1 weights with 7-class heads, focal loss
(alpha 0.25, gamma 2), identity / horizontal / vertical flip augmentation, AdamW 1e-4, weight
decay 0.05, 500 warm-up iterations then cosine, batch 8, 512 x 512; the auxiliary head adds its
loss with weight 0.4 (--aux-weight 0 drops it). Writes OUT/{last,best}.pt, OUT/log.csv and
OUT/snapshots/ like p2_train_fcn32.py. For small CPU runs: --arch deeplabv3_mobilenet_v3_large.

--epochs defaults to 30 (the report gives no count): 7,500 iterations at batch 8 on the 2,000
training images, fifteen times the warm-up; the cosine schedule needs the length fixed up front.

    python p2_train_deeplab.py --data-root hw1_data --out runs/p2_deeplab
    cp runs/p2_deeplab/best.pt checkpoints/p2_deeplab.pt      # what hw1_2.sh uses
"""
from __future__ import annotations

import argparse
import functools

from hw1.errors import run_main
from hw1.p2 import training
from hw1.p2.data import IGNORE_INDEX
from hw1.p2.losses import focal_loss
from hw1.p2.models import DEEPLAB
from hw1.train import config

EPOCHS = 30  # see the docstring


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_common_args(parser, epochs=EPOCHS, batch_size=8, image_size=512,
                                 warmup_steps=500, out="runs/p2_deeplab")
    parser.set_defaults(save_every=5)  # last.pt (and best.pt) every 5 epochs, at the end, on a signal
    training.add_args(parser)
    parser.add_argument("--arch", choices=list(DEEPLAB), default="deeplabv3_resnet101", help="default: %(default)s")
    parser.add_argument("--focal-alpha", type=float, default=0.25, help="default: %(default)s")
    parser.add_argument("--focal-gamma", type=float, default=2.0, help="default: %(default)s")
    parser.add_argument("--aux-weight", type=float, default=0.4,
                        help="auxiliary head loss weight, 0 = no aux head (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    criterion = functools.partial(focal_loss, alpha=args.focal_alpha, gamma=args.focal_gamma, ignore_index=IGNORE_INDEX)
    training.train(args, arch=args.arch, criterion=criterion, aux_weight=args.aux_weight)


if __name__ == "__main__":
    run_main(main)()
