"""Pre-training as one task: BYOL (byol-pytorch with our views and target EMA) or supervised, its kNN monitor
and view gap, and the backbone files it exports. p1_pretrain.py builds it from its flags and runs `engine.fit`."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn
from torch.utils.data import DataLoader

from ..data import cache, folders, gpu_aug
from ..data.recipes import byol_views, normalize_uint8
from ..errors import UserError
from ..train import checkpoint, engine, loading, precision
from ..train.distributed import World
from ..train.metrics import knn_accuracy, view_gap
from .byol import TargetEMA, TwoViews, build_byol
from .models import backbone_state, build_resnet, pooled_features

MONITOR_VIEWS = 256  # val images whose two fixed views `view_gap` compares at every evaluation


@dataclass(frozen=True)
class PretrainConfig:
    """p1_pretrain.py's own flags (beside the common ones `TrainConfig` reads)."""

    method: str                 # "byol" or "supervised"
    arch: str
    image_size: int
    data_root: Path
    out: Path
    batch_size: int
    workers: int
    epochs: int
    seed: int
    precision: str
    ema_start: float
    projection_size: int
    projection_hidden_size: int
    simplicial: bool
    knn_k: int
    gpu_aug: bool | None        # None: on with CUDA
    save_best: bool
    crop_min_scale: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PretrainConfig:
        if not 0 < args.crop_min_scale <= 1:
            raise UserError("--crop-min-scale", f"must be in (0, 1], not {args.crop_min_scale}",
                            "pass a fraction of the image's area, e.g. 0.08")
        return cls(args.method, args.arch, args.image_size, Path(args.data_root), Path(args.out), args.batch_size,
                   args.workers, args.epochs, args.seed, args.precision, args.ema_start, args.projection_size,
                   args.projection_hidden_size, args.simplicial, args.knn_k, args.gpu_aug, args.save_best,
                   args.crop_min_scale)


class KnnMonitor:
    """Cosine kNN accuracy, Office-Home train → val, of a backbone's pooled features, and `metrics.view_gap` (BYOL's
    own aim) on the backbone. The images are decoded once and kept on the device as uint8: an evaluation only runs
    the backbone, in fp32 whatever the training's autocast."""

    def __init__(self, sets: list[tuple[torch.Tensor, torch.Tensor]], view_pair: list[torch.Tensor], image_size: int,
                 k: int, memory_format: torch.memory_format) -> None:
        self.sets, self.view_pair, self.image_size = sets, view_pair, image_size
        self.k, self.memory_format = k, memory_format

    @classmethod
    def build(cls, cfg: PretrainConfig, caching: cache.CacheConfig, world: World, device: torch.device,
              memory_format: torch.memory_format) -> KnnMonitor | None:
        """The monitor on DATA_ROOT's Office-Home sets, or None (with a note) without them."""
        office = cfg.data_root / "p1_data" / "office"
        if not (office / "train.csv").is_file():
            print(f"note: {office} not found; the kNN monitor is off")
            return None
        sets = []
        for split in ("train", "val"):
            listed = folders.office_dataset(cfg.data_root, split, None)
            images = cache.decoded_images(caching, listed.paths, f"office_{split}", world)
            sets.append((images.to(device), torch.tensor(listed.labels, device=device)))
        # The same two views at every evaluation (a fixed seed): the curve moves with the network only.
        views = gpu_aug.batch_views(cfg.image_size, seed=cfg.seed, memory_format=memory_format)
        view_pair = [view(sets[1][0][:MONITOR_VIEWS]) for view in views]
        return cls(sets, view_pair, cfg.image_size, cfg.knn_k, memory_format)

    def batches(self, images: torch.Tensor, labels: torch.Tensor,
                batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) batches as `folders.classify_eval_transform` makes them: resize, scale, normalise."""
        for x, y in zip(images.split(batch_size), labels.split(batch_size)):
            if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
                x = TF.resize(x, [self.image_size, self.image_size], antialias=True)
            yield normalize_uint8(x), y

    def __call__(self, backbone: nn.Module) -> dict:
        def pooled(x: torch.Tensor) -> torch.Tensor:  # not the supervised net's class logits
            return pooled_features(backbone, x)

        with torch.autocast(self.view_pair[0].device.type, enabled=False):
            (train_f, train_y), (val_f, val_y) = (self.features(pooled, images, labels) for images, labels in self.sets)
        return {"knn_acc": knn_accuracy(train_f, train_y, val_f, val_y, k=self.k),
                "view_gap": view_gap(pooled, *self.view_pair)}

    def features(self, fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return loading.extract_features(fn, self.batches(images, labels), images.device, desc=None,
                                        memory_format=self.memory_format)


class Pretraining:
    """One pre-training run: the model and its loader, the loss, the step hooks (BYOL: the views' seeds before a
    step, the target EMA after it), the evaluation and the backbone files."""

    def __init__(self, cfg: PretrainConfig, caching: cache.CacheConfig, world: World, device: torch.device) -> None:
        self.cfg, self.rank = cfg, world.rank
        paths = folders.mini_paths(cfg.data_root)
        memory_format = precision.resolve(cfg.precision, device).memory_format
        self.monitor = KnnMonitor.build(cfg, caching, world, device, memory_format)
        self.views: tuple[gpu_aug.BatchView, gpu_aug.BatchView] | None = None
        if cfg.method == "byol":
            view_recipes = byol_views(cfg.crop_min_scale)
            if gpu_aug.wanted(cfg.gpu_aug, device):  # uint8 batches; the model's augment hooks make the two views
                dataset = cache.uint8_images(caching, paths, "mini_train", world)
                self.views = gpu_aug.batch_views(cfg.image_size, memory_format=memory_format, recipes=view_recipes)
            else:
                dataset = folders.ImageListDataset(paths, transform=TwoViews(cfg.image_size, view_recipes),
                                                skip_unreadable=True)
                dataset = cache.maybe_cached(caching, dataset, "mini_train", world)
            self.model: nn.Module = build_byol(
                cfg.arch, cfg.image_size, device, augment_fns=self.views, projection_size=cfg.projection_size,
                projection_hidden_size=cfg.projection_hidden_size, simplicial=cfg.simplicial,
                memory_format=memory_format)
            self.backbone = self.model.net
        else:
            labels = [folders.mini_label(p) for p in paths]
            transform = folders.classify_train_transform(cfg.image_size)
            dataset = folders.ImageListDataset(paths, labels, transform, skip_unreadable=True)
            dataset = cache.maybe_cached(caching, dataset, "mini_train", world)
            self.model = build_resnet(cfg.arch, num_classes=max(labels) + 1).to(device, memory_format=memory_format)
            self.backbone = self.model
        self.loader: DataLoader = loading.make_loader(dataset, cfg.batch_size, train=True, workers=cfg.workers,
                                                      seed=cfg.seed, world=world, device=device)
        total_steps = self.loader.sampler.batches_per_epoch() * cfg.epochs  # type: ignore[attr-defined]
        self.ema = TargetEMA(self.model, total_steps, cfg.ema_start) if cfg.method == "byol" else None

    def loss(self, model: nn.Module, batch: tuple) -> torch.Tensor:
        """BYOL returns its symmetric loss over the two views; supervised is cross-entropy on the labels."""
        if self.cfg.method == "byol":
            return model(batch[0])
        return F.cross_entropy(model(batch[0]), batch[1])

    def before_step(self, step: int) -> None:
        """--gpu-aug: the two views share one generator."""
        self.views[0].reseed(self.cfg.seed, self.rank, step)  # type: ignore[index]

    def evaluate(self, model: nn.Module, epoch: int) -> dict:
        return self.monitor(self.backbone)  # type: ignore[misc]

    def export_backbone(self, epoch: int) -> None:
        """The backbone as a plain torchvision state_dict, with each epoch-end last.pt (and the first)."""
        state = backbone_state(self.backbone)
        if epoch == 0:
            checkpoint.save_checkpoint(self.cfg.out / "backbone_first.pt", state)
        checkpoint.save_checkpoint(self.cfg.out / "backbone_last.pt", state)

    def task(self) -> engine.Task:
        cfg = self.cfg
        return engine.Task(
            model=self.model, loss_fn=self.loss,
            meta={"task": f"pretrain-{cfg.method}", "arch": cfg.arch, "image_size": cfg.image_size},
            evaluate=self.evaluate if self.monitor else None, monitor="knn_acc" if self.monitor else None,
            evaluate_at_start=True,  # the random initialisation: the honest baseline of the monitor's curve
            before_step=self.before_step if self.views else None, after_step=self.ema, on_save=self.export_backbone,
            keep_first=True, keep_best=cfg.save_best,
        )
