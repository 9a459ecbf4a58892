"""Throughput of BYOL pre-training and segmentation, every row in ONE run on one device.

Rows (images/s: median over timed steps after warm-up, the device synchronised around each;
peak memory: CUDA's allocator peak, on CPU the growth of the process's resident memory):
  aug       the two BYOL views of a batch: our batched ops vs kornia vs torchvision v2
  data-b    the CPU path's loader alone (decode + TwoViews per sample in the workers)
  data-c    the cache loader alone, and with the batched views on the device (no model)
  loader-ft, loader-seg  fine-tuning's loader (cache + crop/flip) and segmentation's (512 px, joint flips), no model
  a         byol-pytorch as its README shows: PIL loader of plain images, its default batch
            augmentation (one draw for the whole batch), fp32, Adam, update_moving_average()
  b         this project's step (engine.fit, p1_pretrain.setup) with the CPU augmentation path
  c         the same step with the decoded-image cache and the batched views on the device
  c+compile (c) with --compile
  mfu       model-FLOPs utilisation of (c): FLOPs of one step counted by FlopCounterMode
  seg-*     FCN32s and DeepLabV3-ResNet101 training and inference images/s at --seg-size
  hw1_2.sh  wall time of `bash hw1_2.sh` on --hw12-images generated images, start-up included
  profile   torch.profiler of one step of (c): top ops; share of data, forward (augment), backward,
            optimiser, EMA
  overhead  what an epoch costs besides its steps, at the reference sizes: the kNN monitor's data path
            (before: decode --overhead-images JPEGs in two fresh loader pools; now: cached uint8,
            in-process), writing last.pt and backbone_last.pt of a BYOL --arch state, and the training
            loader's start-up (fresh workers, as every epoch paid before, vs kept workers)

Rows (b), (c) and c+compile also give engine.fit's own split of the run's wall time (log.csv's
columns): step_s (optimiser steps, data wait included), data_wait_s, eval_s, checkpoint_s.

    python bench.py --out runs/bench                 # full sizes (on an H100: the GPU rows)
    python bench.py --quick --out runs/bench_quick   # CPU, tiny sizes, < 60 s (tests/test_speed.py)

Writes OUT/bench.json and OUT/bench.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.run import environment, run_sections
from benchmarks.table import markdown
from hw1 import io
from hw1.train import distributed, precision

# The sections themselves live in benchmarks/, one module per thing measured; this file parses and writes.
SECTIONS = ("aug", "data", "loaders", "a", "b", "c", "c-compile", "mfu", "seg", "hw12", "profile", "overhead")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench", help="bench.json and bench.md go here (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="CPU, tiny sizes, every section, < 60 s")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    precision.add_arg(parser)
    parser.add_argument("--arch", default="resnet50", help="BYOL backbone (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="default: %(default)s")
    parser.add_argument("--image-size", type=int, default=128, help="default: %(default)s")
    parser.add_argument("--images", type=int, default=None,
                        help="generated training images (default: enough for warm-up + timed steps)")
    parser.add_argument("--data-root", default=None,
                        help="time on this hw1_data's Mini-ImageNet instead of generated images")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="default: %(default)s")
    parser.add_argument("--seg-size", type=int, default=512, help="default: %(default)s")
    parser.add_argument("--seg-batch", type=int, default=16, help="default: %(default)s")
    parser.add_argument("--seg-archs", nargs="+", default=["fcn32s", "deeplabv3_resnet101"])
    parser.add_argument("--seg-train-archs", nargs="*", default=None,
                        help="which of --seg-archs also get a training row (default: all; --quick: not FCN32s, whose "
                             "CPU backward alone takes ~10 s at 64 px)")
    parser.add_argument("--seg-steps", type=int, default=5, help="timed segmentation steps (default: %(default)s)")
    parser.add_argument("--seg-warmup", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--hw12-images", type=int, default=257, help="default: %(default)s")
    parser.add_argument("--overhead-images", type=int, default=4357,
                        help="Office-Home-sized monitor set of the overhead section, 128 px (default: %(default)s, "
                             "train + val)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak for MFU (default: known for H100/H200/A100, else n/a)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the c+compile row (default: %(default)s; --quick: eager, "
                             "which traces the model with dynamo but skips inductor's minutes of C++ codegen on a CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; --quick: 1)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="default: all")
    return parser


QUICK = dict(device="cpu", arch="resnet18", batch_size=8, image_size=32, steps=3, warmup=1, workers=0,
             seg_size=64, seg_batch=2, seg_archs=["fcn32s", "deeplabv3_mobilenet_v3_large"],
             seg_train_archs=["deeplabv3_mobilenet_v3_large"], seg_steps=1, seg_warmup=0, hw12_images=2,
             compile_backend="eager", threads=1, overhead_images=64)


def main(argv: list[str] | None = None) -> dict:
    parser = get_args_parser()
    cfg = parser.parse_args(argv)
    if cfg.quick:
        parser.set_defaults(**QUICK)
        cfg = parser.parse_args(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = distributed.setup_device(cfg.device)
    cfg.device_name = device.type
    cfg.prec = precision.resolve(cfg.precision, device)
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        result = run_sections(cfg, device, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["env"] = environment(cfg, device, argv, t_start)
    out = Path(cfg.out)
    io.write_json(out / "bench.json", result)
    io.write_text(out / "bench.md", markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
