"""reproduce.py's presets as data: per preset, what it runs and the flags each stage adds to the script's defaults."""
from __future__ import annotations

from pathlib import Path

# Per preset: the sample data to write (None: use the course data), then extra flags per stage.
# Everything not named here is the script's default, i.e. the reference recipe.
PRESETS: dict[str, dict] = {
    "full": {
        "description": "The reference recipe (SPEC §5) on the course data: ResNet50 BYOL pre-training for 1000 "
                       "epochs (batch 256, 128 px, AdamW 1e-4, wd 0.05, 4000 warm-up iterations + cosine), "
                       "fine-tuning A–E and the control E0 (batch 128, 100 warm-up iterations + cosine, 500 epochs), "
                       "VGG16-FCN32s and DeepLabV3-ResNet101 with focal loss at 512 px from torchvision's pretrained weights.",
        "sample_data": None, "workers": None,
        "byol": [], "supervised": ["--epochs", "100"], "finetune": [], "probe": [], "tsne": [],
        "fcn32s": [], "deeplabv3": [],
    },
    "sample": {
        "description": "The sample preset, scaled down to a few minutes on two CPU cores: ResNet18 at 32 px instead of "
                       "ResNet50 at 128 px (about 35 times less compute an image) on synthetic data in the course layout "
                       "whose classes are shape x fill pattern, never colour (colours, position, size and tilt are drawn "
                       "per image): 1,280 Mini-ImageNet-layout images (64 classes: 8 shapes x 8 fills), 650 Office-Home-"
                       "layout train and 260 validation images (65 classes: 13 shapes x 5 fills; 5 shapes shared with "
                       "Mini-ImageNet). Steps are in the tens to hundreds where the recipe takes hundreds of thousands: "
                       "BYOL 6 epochs (120 steps, batched views, kNN monitor every epoch), supervised pre-training 4 "
                       "epochs, full fine-tuning A–C 8 epochs, and the linear probes D, E and the control E0 (E's probe "
                       "on a random frozen backbone) 10 epochs at 1e-2, as linear probes take a higher rate than full "
                       "fine-tuning. Short runs take 10 warm-up steps and a 10-20x higher learning rate (BYOL 1e-3, "
                       "fine-tuning 2e-3) than the recipe's 1e-4 with thousands of warm-up steps. "
                       "Problem 2 trains both models from random weights on 24 synthetic 512 px satellite images "
                       "(8 validation) whose classes differ by texture (blocks, field stripes, speckle, canopy, "
                       "ripples, grain) as well as colour: FCN32s on VGG16 with batch norm (vgg16_bn; plain VGG16 from "
                       "scratch stalls at 1e-4 and diverges at higher rates) at 96 px (a 3 x 3 score map, about half "
                       "the compute of 128 px, for more steps) with fc6/fc7 narrowed from 4096 to 512 channels, batch "
                       "8, 72 steps at 2e-3 (it still learns slowly: textures from random weights take more steps than "
                       "this preset has), and DeepLabV3-MobileNetV3 at 128 px for 150 "
                       "steps at 4e-3, both with their batch-norm statistics re-estimated before each validation (a "
                       "short run's running averages trail its weights). Absolute numbers are far below the "
                       "reference; the Findings say which of the homework's comparisons this small run shows.",
        "sample_data": "sample", "workers": "1",
        # BYOL's views as batched tensor ops (--gpu-aug) cost a fifth of the per-image PIL path on the CPU too.
        "byol": ["--arch", "resnet18", "--image-size", "32", "--epochs", "6", "--batch-size", "64", "--lr", "1e-3",
                 "--warmup-steps", "10", "--projection-hidden-size", "1024", "--gpu-aug", "--eval-every", "1"],
        "supervised": ["--arch", "resnet18", "--image-size", "32", "--epochs", "4", "--batch-size", "64", "--lr", "2e-3",
                       "--warmup-steps", "10"],
        "finetune": ["--arch", "resnet18", "--image-size", "32", "--epochs", "8", "--batch-size", "64", "--lr", "2e-3",
                     "--warmup-steps", "10"],
        "probe": ["--arch", "resnet18", "--image-size", "32", "--epochs", "10", "--batch-size", "64", "--lr", "1e-2",
                  "--warmup-steps", "10"],
        "tsne": ["--perplexity", "20"],
        # vgg16_bn: batch norm lets VGG16 train from random weights at 1e-3..2e-3 (plain VGG16 does not); 96 px gives
        # a 3 x 3 score map (an ideal 3 x 3 map upsampled scores 0.80 mIoU on the sample validation masks) at about
        # half the cost of 128 px; narrow fc6/fc7 make steps cheap; last.pt only with each evaluation (a save costs ~1 s).
        "fcn32s": ["--weights", "none", "--vgg", "vgg16_bn", "--fc-width", "512", "--image-size", "96", "--epochs", "24",
                   "--batch-size", "8", "--lr", "2e-3", "--warmup-steps", "10", "--eval-every", "6", "--save-every", "6",
                   "--bn-recalibrate", "3"],
        "deeplabv3": ["--weights", "none", "--arch", "deeplabv3_mobilenet_v3_large", "--image-size", "128",
                      "--epochs", "50", "--batch-size", "8", "--aux-weight", "0", "--lr", "4e-3", "--warmup-steps", "10",
                      "--eval-every", "10", "--bn-recalibrate", "3"],
    },
    "tiny": {
        "description": "The tiny preset (tests): every stage for one or two optimiser steps on tiny synthetic data.",
        "sample_data": "tiny", "workers": "0",
        "byol": ["--arch", "resnet18", "--image-size", "32", "--epochs", "1", "--batch-size", "32",
                 "--max-steps", "1", "--projection-hidden-size", "64", "--projection-size", "32"],
        "supervised": ["--arch", "resnet18", "--image-size", "32", "--epochs", "1", "--batch-size", "32", "--max-steps", "1"],
        "finetune": ["--arch", "resnet18", "--image-size", "32", "--epochs", "2", "--batch-size", "128"],
        "probe": ["--arch", "resnet18", "--image-size", "32", "--epochs", "2", "--batch-size", "128"],
        "tsne": ["--perplexity", "5"],
        "fcn32s": ["--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--max-steps", "1"],
        "deeplabv3": ["--weights", "none", "--arch", "deeplabv3_mobilenet_v3_large", "--image-size", "32",
                      "--epochs", "2", "--batch-size", "8", "--max-steps", "2", "--aux-weight", "0"],
    },
}
GIVEN_BACKBONE = Path("p1_data") / "pretrain_model_SL.pt"  # the course's supervised ResNet50 backbone
MODEL_TREES = {"classifier": "ResNet50 classifier (settings A–E)", "fcn32s": "model A: VGG16-FCN32s",
               "deeplabv3": "model B: DeepLabV3-ResNet101"}
