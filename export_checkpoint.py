"""Turn a training checkpoint into the slim file the grading scripts load: weights and the meta that rebuilds the
model, no optimiser state, schedule or RNG (a ResNet50 classifier: ~95 MB instead of ~280 MB).

    python export_checkpoint.py runs/finetune_C/best.pt checkpoints/p1_classifier.pt   # hw1_1.sh
    python export_checkpoint.py runs/p2_deeplab/best.pt checkpoints/p2_deeplab.pt      # hw1_2.sh

The output loads with `torch.load(weights_only=True)` on both stacks (SPEC §9). `--trust` reads a checkpoint
written by an older version of this project, which held objects beyond tensors: only for a file you made.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hw1.errors import run_main
from hw1.train import checkpoint


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a p1_finetune.py or p2_train_*.py checkpoint (best.pt, last.pt, first.pt)")
    parser.add_argument("out", help="the grading file to write, e.g. checkpoints/p1_classifier.pt")
    parser.add_argument("--trust", action="store_true",
                        help="read CHECKPOINT with weights_only=False (it may run code): an old file of your own")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    src = Path(args.checkpoint)
    if args.trust and src.is_file():
        state = torch.load(src, map_location="cpu", weights_only=False)
    else:
        state = checkpoint.load_checkpoint(src)
    slim = checkpoint.grading_state(src, state)
    checkpoint.save_checkpoint(args.out, slim)
    size = Path(args.out).stat().st_size / 2**20
    print(f"wrote {args.out} ({slim['meta']['task']} {slim['meta']['arch']}, {size:.0f} MB) from {src}")


if __name__ == "__main__":
    run_main(main)()
