"""Train VGG16-FCN32s (the report's model A) on the satellite masks with cross-entropy.

Defaults are the reference recipe: ImageNet VGG16 weights, AdamW 1e-4, weight decay 0.05,
500 warm-up iterations then cosine, batch 16, 512 x 512, flip augmentation. Writes
OUT/{last,best}.pt, OUT/log.csv (loss, lr, validation mIoU and per-class IoU per epoch) and
OUT/snapshots/ (masks of 0013, 0062, 0104 at the first, middle and final epochs).

--epochs defaults to 40 (the report gives no count): 5,000 iterations at batch 16 on the 2,000
training images, ten times the warm-up; the cosine schedule needs the length fixed up front.

    python p2_train_fcn32.py --data-root hw1_data --out runs/p2_fcn32s
    torchrun --nproc_per_node 4 p2_train_fcn32.py --data-root hw1_data --out runs/p2_fcn32s
"""
from __future__ import annotations

import argparse
import functools

import torch.nn.functional as F

from hw1.errors import run_main
from hw1.p2 import training
from hw1.p2.data import IGNORE_INDEX
from hw1.p2.models import FC_WIDTH, VGGS
from hw1.train import config

EPOCHS = 40  # see the docstring


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_common_args(parser, epochs=EPOCHS, batch_size=16, image_size=512,
                                 warmup_steps=500, out="runs/p2_fcn32s")
    parser.set_defaults(save_every=5)  # last.pt (and best.pt) every 5 epochs, at the end, on a signal
    training.add_args(parser)
    parser.add_argument("--fc-width", type=int, default=FC_WIDTH,
                        help="channels of fc6 (7x7 conv) and fc7 (1x1 conv); VGG16's is 4096, narrower is for "
                             "CPU-sized runs with --weights none (default: %(default)s)")
    parser.add_argument("--vgg", choices=tuple(VGGS), default="vgg16",
                        help="the encoder: vgg16 (the reference) or vgg16_bn, with batch norm after every conv, "
                             "which trains from --weights none at higher learning rates (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    training.train(args, arch="fcn32s", criterion=functools.partial(F.cross_entropy, ignore_index=IGNORE_INDEX),
                       model_options={"fc_width": args.fc_width, "vgg": args.vgg})


if __name__ == "__main__":
    run_main(main)()
