"""Problem 1 models: torchvision ResNet backbones, backbone files, and the Office-Home classifier (linear or BN-MLP
head, rebuilt from a checkpoint's meta)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..compat import strip_prefix
from ..errors import UserError
from ..train.checkpoint import load_weights

ARCHS = ("resnet50", "resnet18")
FEATURE_DIM = {"resnet50": 2048, "resnet18": 512}


def build_resnet(arch: str, num_classes: int = 1000) -> torchvision.models.ResNet:
    """A randomly initialised torchvision ResNet (`weights=None`: no download)."""
    if arch not in ARCHS:
        raise UserError("--arch", f"unknown architecture {arch!r}", f"use one of {', '.join(ARCHS)}")
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)


def backbone_state(model: torchvision.models.ResNet) -> dict[str, torch.Tensor]:
    """The plain torchvision `state_dict` without `fc`: what a backbone file holds."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}


def guess_arch(state: dict[str, torch.Tensor]) -> str:
    """resnet50 has bottleneck blocks (conv3) and 2048-d layer4; resnet18 does not."""
    if "layer1.0.conv3.weight" in state:
        return "resnet50"
    if "layer1.0.conv1.weight" in state:
        return "resnet18"
    return "unknown (not a torchvision ResNet state_dict)"


def load_backbone_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a backbone file: a plain `state_dict`, or one of our checkpoints holding `backbone`/`model`
    (a BYOL pre-training's last.pt / best.pt gives its online network)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(path, "backbone file not found", "pass --backbone FILE (see README: pre-training)")
    state = load_weights(path)
    if isinstance(state, dict) and "backbone" in state:
        state = state["backbone"]
    elif isinstance(state, dict) and isinstance(state.get("model"), dict):
        model, online = state["model"], "online_encoder.net."
        if any(k.startswith(online) for k in model):  # BYOL: leave the target network and the heads
            state = {strip_prefix(k, online): v for k, v in model.items() if k.startswith(online)}
        else:  # a supervised pre-training (a bare ResNet) or a classifier (`net.` inside Classifier)
            state = {strip_prefix(k, "net."): v for k, v in model.items()}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(path, "does not hold a state_dict", "a backbone file is torchvision resnet50's state_dict")
    return {strip_prefix(k, "module."): v for k, v in state.items()}


def load_backbone_into(model: torchvision.models.ResNet, path: str | os.PathLike, arch: str) -> None:
    """Load a backbone file into `model`, ignoring `fc`; another architecture is an error naming both."""
    state = load_backbone_file(path)
    found = guess_arch(state)
    if found != arch:
        raise UserError(path, f"backbone is {found} but --arch is {arch}",
                        f"pass --arch {found} or another backbone file")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise UserError(path, f"backbone keys do not match {arch} (missing {missing[:3]}, unexpected {unexpected[:3]})",
                        "export the backbone with p1_pretrain.py")


def pooled_features(net: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    """A ResNet's pooled feature, whatever its `fc` holds (512-d for resnet18, 2048-d for resnet50)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


HEADS = ("linear", "mlp")
MLP_HIDDEN = 4096  # the BN-MLP head's width (the best published E, SPEC §5)


def mlp_head(in_features: int, num_classes: int, hidden: int = MLP_HIDDEN) -> nn.Sequential:
    """Linear → BatchNorm1d → ReLU → Linear: the deeper classifier of `--head mlp`."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, num_classes))


class Classifier(nn.Module):
    """A ResNet whose `fc` predicts `num_classes` (one Linear, or `head="mlp"`: `mlp_head`); `frozen` keeps the
    backbone fixed and in eval mode."""

    def __init__(self, arch: str, num_classes: int, frozen: bool = False, head: str = "linear",
                 hidden: int = MLP_HIDDEN) -> None:
        super().__init__()
        self.arch, self.frozen, self.head = arch, frozen, head
        self.net = build_resnet(arch, num_classes)
        if head == "mlp":
            self.net.fc = mlp_head(FEATURE_DIM[arch], num_classes, hidden)
        elif head not in HEADS:
            raise UserError("--head", f"unknown classifier head {head!r}", f"use one of {', '.join(HEADS)}")
        self.hidden = hidden
        if frozen:
            for name, p in self.net.named_parameters():
                p.requires_grad = name.startswith("fc.")

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.frozen:  # BN running statistics of a frozen backbone must not move
            for name, module in self.net.named_children():
                if name != "fc":
                    module.eval()
        return self

    def head_meta(self) -> dict:
        """What a checkpoint's meta records of the head, for `classifier_from_meta` to rebuild it."""
        return {"head": self.head, **({"head_hidden": self.hidden} if self.head == "mlp" else {})}

    @staticmethod
    def is_head(name: str) -> bool:
        """Whether a parameter (named as in `named_parameters()`) belongs to the classifier, not the backbone."""
        return name.startswith("net.fc.")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The second-last layer: the pooled feature before `fc` (2048-d for resnet50)."""
        return pooled_features(self.net, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def classifier_from_meta(meta: dict, path: str | os.PathLike) -> Classifier:
    """The classifier a p1_finetune.py checkpoint's meta names, its head included (`Classifier.head_meta`; a
    checkpoint from before `--head` has a linear one)."""
    head, hidden = meta.get("head", "linear"), meta.get("head_hidden", MLP_HIDDEN)
    if head not in HEADS or not isinstance(hidden, int):
        raise UserError(path, f"classifier meta names head={head!r}, head_hidden={hidden!r}",
                        f"expected a head of {', '.join(HEADS)} and an integer width; re-export the checkpoint")
    return Classifier(meta["arch"], meta["num_classes"], head=head, hidden=hidden)
