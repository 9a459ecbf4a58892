"""Segment Anything's automatic mask generator on satellite images: an overlay PNG per image and a JSON.

Each mask gets its own colour over the image (OUT/<stem>_sam.png); OUT/sam_masks.json lists every
mask's area, predicted IoU, stability score and bounding box (x, y, w, h). SAM needs its weights:

    wget https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth -P checkpoints/
    python p2_sam.py --checkpoint checkpoints/sam_vit_b_01ec64.pth --model-type vit_b

With no IMAGE, it segments the report's three validation images (0013, 0062, 0104).
"""
from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from hw1 import io, viz
from hw1.compat import strip_suffix
from hw1.data import folders
from hw1.errors import UserError, run_main
from hw1.train import distributed, precision

REPORT_STEMS = ("0013", "0062", "0104")
CHECKPOINT_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", help="images to segment (default: 0013, 0062, 0104 of the validation set)")
    parser.add_argument("--checkpoint", default=None, help="SAM weights file (sam_vit_*.pth, see above)")
    parser.add_argument("--model-type", choices=sorted(CHECKPOINT_URLS), default=None,
                        help="default: read from the checkpoint's name (sam_vit_b_… → vit_b), else vit_h")
    parser.add_argument("--data-root", default="hw1_data", help="course data folder (default: %(default)s)")
    parser.add_argument("--out", default="runs/sam", help="overlays and sam_masks.json go here (default: %(default)s)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: %(default)s")
    precision.add_arg(parser, help="SAM's image encoder: auto = bf16 autocast on GPUs with native bf16 (compute "
                      "capability >= 8.0), fp16 on older GPUs, fp32 on the CPU; the mask decoder stays fp32 "
                      "(default: %(default)s)")
    parser.add_argument("--points-per-side", type=int, default=32, help="prompt grid (default: %(default)s)")
    parser.add_argument("--points-per-batch", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88, help="default: %(default)s")
    parser.add_argument("--stability-score-thresh", type=float, default=0.95, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--random-tiny", action="store_true", help=argparse.SUPPRESS)  # tests: a small untrained SAM
    return parser


def _segment_anything():
    try:
        import segment_anything
    except ImportError as err:
        raise UserError("segment-anything", "the package is not installed",
                        "pip install segment-anything==1.0 "
                        "(in requirements.txt, not in the course's environment)") from err
    return segment_anything


def build_tiny_sam(img_size: int = 128):
    """An untrained SAM with a 2-block, 64-wide ViT encoder: the full automatic-mask path, fast on CPU."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim, patch = 32, 16
    sam = Sam(
        image_encoder=ImageEncoderViT(img_size=img_size, patch_size=patch, embed_dim=64, depth=2, num_heads=2,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                                      window_size=4, global_attn_indexes=(1,), out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(img_size // patch, img_size // patch),
                                     input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2)),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def build_sam(checkpoint: str | None, model_type: str | None):
    """SAM of `model_type` with the weights in `checkpoint`; every way this can fail is one clear line."""
    sa = _segment_anything()
    if checkpoint is None:
        raise UserError("--checkpoint", "SAM needs its weights file",
                        f"download one, e.g. {CHECKPOINT_URLS['vit_b']} (vit_b; vit_h: {CHECKPOINT_URLS['vit_h']}), "
                        "and pass --checkpoint FILE --model-type vit_b")
    path = Path(checkpoint)
    model_type = model_type or next((t for t in CHECKPOINT_URLS if t in path.name), "vit_h")
    if not path.is_file():
        raise UserError(path, "SAM checkpoint not found",
                        f"download {CHECKPOINT_URLS[model_type]} (or another model type's file) and pass its path")
    sam = sa.sam_model_registry[model_type](checkpoint=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(path, f"not a readable SAM checkpoint ({type(err).__name__})",
                        f"re-download it from {CHECKPOINT_URLS[model_type]}") from err
    try:
        sam.load_state_dict(state)
    except (RuntimeError, AttributeError) as err:
        raise UserError(path, f"these weights do not fit SAM {model_type}",
                        "pass the --model-type of the file (vit_h, vit_l or vit_b)") from err
    return sam.eval()


def autocast_image_encoder(sam, prec: precision.Precision) -> None:
    """Run SAM's ViT image encoder (nearly all of its compute) under `prec`'s autocast. Only the encoder: the
    mask generator hands the decoder's tensors to NumPy, which has no bf16."""
    if prec.dtype is None:
        return
    plain_forward = sam.image_encoder.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        with prec.autocast():
            return plain_forward(x).float()

    sam.image_encoder.forward = forward


def default_images(data_root: str) -> list[Path]:
    folder = Path(data_root) / "p2_data" / "validation"
    found = [folder / f"{s}_sat.jpg" for s in REPORT_STEMS if (folder / f"{s}_sat.jpg").is_file()]
    if not found:
        raise UserError(folder, f"none of {', '.join(s + '_sat.jpg' for s in REPORT_STEMS)} found",
                        "pass the images to segment, or the right --data-root")
    return found


def mask_record(m: dict) -> dict:
    return {"area": int(m["area"]), "predicted_iou": float(m["predicted_iou"]),
            "stability_score": float(m["stability_score"]), "bbox": [int(round(v)) for v in m["bbox"]]}


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    images = [Path(p) for p in args.images] or default_images(args.data_root)
    for p in images:
        if not p.is_file():
            raise UserError(p, "image not found", "check the path")
    distributed.seed_everything(args.seed)
    if args.random_tiny:
        _segment_anything()
        sam, model_name = build_tiny_sam(), "untrained tiny SAM (test model)"
    else:
        sam, model_name = build_sam(args.checkpoint, args.model_type), args.checkpoint
    device = distributed.setup_device(args.device)
    sam.to(device)
    prec = precision.resolve(args.precision, device)
    autocast_image_encoder(sam, prec)
    print(f"SAM: {model_name} on {device}, image encoder in {prec.name}")
    from segment_anything import SamAutomaticMaskGenerator

    generator = SamAutomaticMaskGenerator(sam, points_per_side=args.points_per_side,
                                          points_per_batch=args.points_per_batch,
                                          pred_iou_thresh=args.pred_iou_thresh,
                                          stability_score_thresh=args.stability_score_thresh)
    out = Path(args.out)
    results = []
    for path in images:
        image = np.asarray(folders.load_rgb(path))
        t0 = time.time()
        with torch.inference_mode():
            masks = generator.generate(image)
        masks.sort(key=lambda m: -m["area"])
        stem = strip_suffix(path.stem, "_sat")
        png = viz.save_overlay(out / f"{stem}_sam.png", image, [m["segmentation"] for m in masks],
                               title=f"{stem}: {len(masks)} SAM masks")
        results.append({"image": str(path), "height": image.shape[0], "width": image.shape[1], "overlay": png.name,
                        "seconds": round(time.time() - t0, 2), "masks": [mask_record(m) for m in masks]})
        print(f"{path}: {len(masks)} masks in {time.time() - t0:.1f}s → {png}")
    io.write_json(out / "sam_masks.json", {"model": model_name, "precision": prec.name,
                                           "points_per_side": args.points_per_side,
                                           "pred_iou_thresh": args.pred_iou_thresh,
                                           "stability_score_thresh": args.stability_score_thresh, "images": results})
    print(f"masks: {out / 'sam_masks.json'}")


if __name__ == "__main__":
    run_main(main)()
