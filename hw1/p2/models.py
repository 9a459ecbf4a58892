"""Problem 2 models: VGG16-FCN32s and torchvision DeepLabV3 with 7-class heads; checkpoint → model."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import segmentation as tv_seg

from ..compat import strip_prefix
from ..errors import UserError
from .data import NUM_CLASSES

# arch → (torchvision builder, its pretrained weights). resnet101 is the report's model B;
# resnet50 and mobilenet_v3_large are lighter stand-ins for small runs and tests.
DEEPLAB = {
    "deeplabv3_resnet101": (tv_seg.deeplabv3_resnet101, tv_seg.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1),
    "deeplabv3_resnet50": (tv_seg.deeplabv3_resnet50, tv_seg.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1),
    "deeplabv3_mobilenet_v3_large": (tv_seg.deeplabv3_mobilenet_v3_large,
                                     tv_seg.DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1),
}
SEG_ARCHS = ("fcn32s", *DEEPLAB)
# FCN32s's encoder → (torchvision builder, its ImageNet weights). vgg16 is the reference; vgg16_bn (batch norm
# after every conv) trains from random weights at the high learning rates a short run needs.
VGGS = {
    "vgg16": (torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1),
    "vgg16_bn": (torchvision.models.vgg16_bn, torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1),
}
FC_WIDTH = 4096  # VGG16's fc6/fc7 width, FCN32s's default
WEIGHTS = ("default", "none")


def bilinear_kernel(channels: int, size: int) -> torch.Tensor:
    """Weights of a transposed conv that upsamples each channel bilinearly (channels x channels x size x size)."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float32) - centre).abs() / factor
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = ramp[:, None] * ramp[None, :]
    return weight


class FCN32s(nn.Module):
    """VGG16(-BN) `features`, fc6 (7x7 conv) and fc7 (1x1) with ReLU + dropout, a 1x1 score, 32x upsampling.

    fc6 is padded so inputs smaller than 224 px still work; the input is padded to a multiple of 32,
    upsampled by a bilinear-initialised transposed conv and cropped back to exactly H x W.
    `fc_width` is VGG's 4096; narrower fc6/fc7 are for CPU-sized runs from random weights. `vgg` is a
    pretrained VGG16 or VGG16-BN; without one, `vgg_arch` (a `VGGS` key) names the random encoder.
    """

    stride = 32

    def __init__(self, num_classes: int = NUM_CLASSES, vgg: torchvision.models.VGG | None = None,
                 fc_width: int = FC_WIDTH, vgg_arch: str = "vgg16") -> None:
        super().__init__()
        pretrained = vgg is not None
        vgg = vgg if pretrained else VGGS[vgg_arch][0](weights=None)
        self.features = vgg.features
        self.fc6 = nn.Conv2d(512, fc_width, 7, padding=3)
        self.fc7 = nn.Conv2d(fc_width, fc_width, 1)
        self.dropout = nn.Dropout(0.5)
        self.score = nn.Conv2d(fc_width, num_classes, 1)
        if not pretrained:
            # He init in fan-in mode keeps the forward signal near unit scale through the 15 ReLU layers;
            # torchvision's VGG init (fan-out, and PyTorch's default for narrow fc6/fc7) leaves fc7's output
            # at std ~0.03 for unit-std input, so without batch norm the score layer starts nearly blind.
            for conv in [m for m in self.features if isinstance(m, nn.Conv2d)] + [self.fc6, self.fc7]:
                nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.score.weight)  # as in the FCN paper: start from uniform class scores
        nn.init.zeros_(self.score.bias)
        self.upscore = nn.ConvTranspose2d(num_classes, num_classes, 2 * self.stride, stride=self.stride,
                                          padding=self.stride // 2, bias=False)
        with torch.no_grad():
            self.upscore.weight.copy_(bilinear_kernel(num_classes, 2 * self.stride))
            if not pretrained:
                return
            # VGG's fully connected fc6/fc7 are exactly these convolutions, reshaped ("convolutionalised").
            fc6, fc7 = vgg.classifier[0], vgg.classifier[3]
            self.fc6.weight.copy_(fc6.weight.view(4096, 512, 7, 7))
            self.fc6.bias.copy_(fc6.bias)
            self.fc7.weight.copy_(fc7.weight.view(4096, 4096, 1, 1))
            self.fc7.bias.copy_(fc7.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % self.stride, 0, -h % self.stride))
        x = self.dropout(F.relu(self.fc6(self.features(x)), inplace=True))
        x = self.dropout(F.relu(self.fc7(x), inplace=True))
        scores = self.upscore(self.score(x))
        return {"out": scores[..., :h, :w]}


def pretrained_state(weights: torchvision.models.WeightsEnum) -> dict[str, torch.Tensor]:
    """torchvision's pretrained state_dict from the torch hub cache, downloaded once; a missing cache
    plus a failed download is one clear error (raised before any model is built)."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as err:  # URLError/HTTPError are OSErrors; a broken file is a RuntimeError
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}" if str(err) else type(err).__name__
        if cached.is_file():
            raise UserError(cached, f"cached pretrained weights are unreadable ({reason})",
                            "delete the file and run again with internet, or pass --weights none") from err
        raise UserError(f"--weights default ({weights})",
                        f"pretrained weights are not in the local cache ({cached}) "
                        f"and could not be downloaded ({reason})",
                        f"download {weights.url} on a machine with internet into {cached.parent} "
                        "(set $TORCH_HOME to choose the cache), or pass --weights none") from err


def build_seg_model(arch: str, weights: str = "none", *, aux: bool = False, num_classes: int = NUM_CLASSES,
                    fc_width: int = FC_WIDTH, vgg: str = "vgg16") -> nn.Module:
    """FCN32s or a DeepLabV3 with `num_classes` outputs; forward returns `{"out": N x C x H x W, ["aux"]}`.

    `weights="default"`: VGG16(-BN) IMAGENET1K_V1 for FCN32s, COCO_WITH_VOC_LABELS_V1 for DeepLabV3
    (downloaded once into the torch hub cache); `"none"`: random initialisation, no download.
    `fc_width`: FCN32s's fc6/fc7 width (VGG16's weights need the full 4096); `vgg`: its encoder, a `VGGS` key.
    """
    if arch not in SEG_ARCHS:
        raise UserError("--arch", f"unknown segmentation architecture {arch!r}", f"use one of {', '.join(SEG_ARCHS)}")
    if weights not in WEIGHTS:
        raise UserError("--weights", f"unknown choice {weights!r}", "use default or none")
    if arch == "fcn32s":
        if vgg not in VGGS:
            raise UserError("--vgg", f"unknown FCN32s encoder {vgg!r}", f"use one of {', '.join(VGGS)}")
        if fc_width < 1 or (weights == "default" and fc_width != FC_WIDTH):
            raise UserError("--fc-width", f"{fc_width} does not fit {'VGG16' if fc_width > 0 else 'a layer'}",
                            f"use --fc-width {FC_WIDTH} with --weights default, "
                            "or a positive width with --weights none")
        if weights == "none":
            return FCN32s(num_classes, fc_width=fc_width, vgg_arch=vgg)
        builder, imagenet = VGGS[vgg]
        state = pretrained_state(imagenet)
        encoder = builder(weights=None)
        encoder.load_state_dict(state)
        return FCN32s(num_classes, encoder)
    builder, coco = DEEPLAB[arch]
    if weights == "none":  # weights_backbone=None too: torchvision's default would download ImageNet weights
        return builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux)
    state = pretrained_state(coco)
    model = builder(weights=None, weights_backbone=None, num_classes=len(coco.meta["categories"]), aux_loss=True)
    model.load_state_dict(state)
    # DeepLabHead and FCNHead both end in a 1x1 conv at index 4: re-make it for our classes.
    model.classifier[4] = nn.Conv2d(model.classifier[4].in_channels, num_classes, 1)
    if aux:
        model.aux_classifier[4] = nn.Conv2d(model.aux_classifier[4].in_channels, num_classes, 1)
    else:
        model.aux_classifier = None
    return model


def model_from_checkpoint(path: str | os.PathLike, state: dict) -> tuple[nn.Module, dict]:
    """Rebuild the segmentation model a checkpoint's `meta` names (no download, no aux head) and load it."""
    meta = state.get("meta", {})
    if meta.get("task") != "segment":
        what = f"a {meta['task']} model ({meta.get('arch', '?')})" if meta.get("task") else "no segmentation model"
        raise UserError(path, f"holds {what}, not a Problem 2 segmentation model",
                        "pass a checkpoint written by p2_train_fcn32.py or p2_train_deeplab.py")
    if meta.get("arch") not in SEG_ARCHS or meta.get("num_classes") != NUM_CLASSES:
        raise UserError(path, f"names arch={meta.get('arch')!r} with {meta.get('num_classes')} classes; "
                        f"this code builds {', '.join(SEG_ARCHS)} with {NUM_CLASSES}",
                        "retrain with this project's scripts")
    model = build_seg_model(meta["arch"], "none", aux=False, fc_width=meta.get("fc_width", FC_WIDTH),
                           vgg=meta.get("vgg", "vgg16"))
    weights = {strip_prefix(k, "module."): v for k, v in state["model"].items() if not k.startswith("aux_classifier.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        detail = (str(err).splitlines() or [""])[-1].strip()[:150]
        raise UserError(path, f"weights do not fit {meta['arch']} ({detail})",
                        "the checkpoint is damaged or was written by other code") from err
    return model, meta
