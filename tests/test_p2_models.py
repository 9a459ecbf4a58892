"""P2 models: output N x 7 x H x W at 512 and at odd sizes; a failed weight download is one clear error;
the VGG16-BN variant of FCN32s rebuilds from its checkpoint."""
from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torchvision.models._api as tv_api
from PIL import Image

from hw1.errors import UserError
from hw1.p2.models import FCN32s, bilinear_kernel, build_seg_model


@torch.no_grad()
def test_fcn32s_predicts_every_pixel_at_any_size():
    model = build_seg_model("fcn32s", "none").eval()
    assert isinstance(model, FCN32s) and model.fc6.kernel_size == (7, 7) and model.fc7.kernel_size == (1, 1)
    for h, w in ((100, 130), (37, 29), (512, 512)):
        assert model(torch.randn(1, 3, h, w))["out"].shape == (1, 7, h, w)


def test_fcn32s_upsampling_starts_bilinear():
    k = bilinear_kernel(7, 64)
    assert torch.equal(k[0, 1], torch.zeros(64, 64)) and k[3, 3].max() <= 1
    # stride-32 taps of a bilinear kernel sum to 1 per output pixel: a constant map stays constant inside
    up = torch.nn.functional.conv_transpose2d(torch.ones(1, 7, 4, 4), k, stride=32, padding=16)
    assert torch.allclose(up[..., 16:-16, 16:-16], torch.ones(()), atol=1e-6)


@torch.no_grad()
def test_deeplabv3_predicts_every_pixel_at_any_size():
    # The report's ResNet101 at an odd size; 512 x 512 on the light backbone (same torchvision head and resize).
    model = build_seg_model("deeplabv3_resnet101", "none", aux=True).eval()
    out = model(torch.randn(1, 3, 100, 130))
    assert out["out"].shape == (1, 7, 100, 130) and out["aux"].shape == (1, 7, 100, 130)
    light = build_seg_model("deeplabv3_mobilenet_v3_large", "none").eval()
    assert light.aux_classifier is None and light(torch.randn(1, 3, 512, 512))["out"].shape == (1, 7, 512, 512)


@pytest.mark.parametrize("arch", ["fcn32s", "deeplabv3_resnet101"])
def test_missing_pretrained_weights_without_internet_is_one_clear_error(arch, tmp_path, monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(UserError) as err:
        build_seg_model(arch, "default")
    line = err.value.line()
    assert "\n" not in line and "not in the local cache" in line and str(tmp_path) in line
    assert "could not be downloaded" in line and "--weights none" in line


def test_pretrained_deeplab_gets_fresh_7_class_heads(tmp_path, monkeypatch):
    """`--weights default` path, with torchvision's download replaced by a 21-class state of the same model."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    coco_like = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21,
                                             aux_loss=True).state_dict()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", lambda url, *a, **k: coco_like)
    for aux in (True, False):
        model = build_seg_model("deeplabv3_mobilenet_v3_large", "default", aux=aux)
        assert model.classifier[4].out_channels == 7 and (model.aux_classifier is not None) == aux
        assert torch.equal(model.backbone["0"][0].weight, coco_like["backbone.0.0.weight"])


@torch.no_grad()
def test_narrow_fcn32s_checkpoint_rebuilds_its_own_width(tmp_path):
    """--fc-width is recorded in the checkpoint's meta, so inference rebuilds exactly the trained model."""
    from hw1.p2.models import model_from_checkpoint
    from hw1.train import checkpoint

    torch.manual_seed(0)
    model = build_seg_model("fcn32s", "none", fc_width=16).eval()
    assert model.fc6.out_channels == 16 and model.fc6.kernel_size == (7, 7) and model.score.in_channels == 16
    meta = {"task": "segment", "arch": "fcn32s", "num_classes": 7, "image_size": 64, "weights": "none", "aux": False,
            "fc_width": 16}
    checkpoint.save_checkpoint(tmp_path / "fcn.pt", {"model": model.state_dict(), "meta": meta})
    rebuilt, _ = model_from_checkpoint(tmp_path / "fcn.pt", checkpoint.load_checkpoint(tmp_path / "fcn.pt"))
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(rebuilt.eval()(x)["out"], model(x)["out"])


def test_narrow_fcn32s_cannot_take_vgg16_weights():
    with pytest.raises(UserError) as err:
        build_seg_model("fcn32s", "default", fc_width=512)
    assert "--fc-width" in err.value.line() and "4096" in err.value.line()


@torch.no_grad()
def test_vgg16_bn_fcn32s_round_trips_through_its_checkpoint_and_inference(tmp_path):
    """--vgg vgg16_bn is recorded in the meta like --fc-width: p2_inference.py rebuilds the batch-norm encoder."""
    import p2_inference
    from hw1 import io
    from hw1.p2.data import SatMaskDataset, find_pairs, read_mask
    from hw1.p2.models import model_from_checkpoint
    from hw1.train import checkpoint

    torch.manual_seed(0)
    model = build_seg_model("fcn32s", "none", fc_width=16, vgg="vgg16_bn").eval()
    norms = [m for m in model.features if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 13 and isinstance(model.features[1], torch.nn.BatchNorm2d)
    assert model(torch.randn(2, 3, 45, 70))["out"].shape == (2, 7, 45, 70)
    for m in norms:  # non-trivial statistics, so a rebuild without them (or without batch norm) differs
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
    meta = {"task": "segment", "arch": "fcn32s", "num_classes": 7, "image_size": 64, "weights": "none", "aux": False,
            "fc_width": 16, "vgg": "vgg16_bn"}
    path = tmp_path / "fcn_bn.pt"
    checkpoint.save_checkpoint(path, {"model": model.state_dict(), "meta": meta})
    rebuilt, _ = model_from_checkpoint(path, checkpoint.load_checkpoint(path))
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(rebuilt.eval()(x)["out"], model(x)["out"])

    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    io.ensure_dir(images)
    for stem, (h, w) in (("0000", (40, 56)), ("0001", (64, 64))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"{stem}_sat.jpg")
    p2_inference.main([str(images), str(tmp_path / "pred"), "--checkpoint", str(path), "--workers", "0",
                       "--device", "cpu"])
    pairs = find_pairs(images, need_masks=False)
    for pair, (h, w) in zip(pairs, ((40, 56), (64, 64))):
        mask = read_mask(tmp_path / "pred" / f"{pair.stem}_mask.png")
        assert mask.shape == (h, w)
        expected = model(SatMaskDataset([pair], 64)[0]["image"][None])["out"]
        expected = torch.nn.functional.interpolate(expected, size=(h, w), mode="bilinear").argmax(1)[0]
        assert np.array_equal(mask, expected.numpy())


def test_pretrained_vgg16_bn_fcn32s_loads_imagenet_features(tmp_path, monkeypatch):
    """`--weights default --vgg vgg16_bn` path, with torchvision's download replaced by a VGG16-BN state."""
    import torchvision

    imagenet_like = torchvision.models.vgg16_bn(weights=None).state_dict()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    urls = []
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", lambda url, *a, **k: urls.append(url) or imagenet_like)
    model = build_seg_model("fcn32s", "default", vgg="vgg16_bn")
    assert urls == [torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1.url]
    assert torch.equal(model.features[0].weight, imagenet_like["features.0.weight"])
    assert torch.equal(model.features[1].running_var, imagenet_like["features.1.running_var"])
    assert torch.equal(model.fc6.weight.flatten(1), imagenet_like["classifier.0.weight"])


def test_unknown_vgg_is_one_clear_error():
    with pytest.raises(UserError) as err:
        build_seg_model("fcn32s", "none", vgg="vgg19")
    assert "--vgg" in err.value.line() and "vgg16_bn" in err.value.line()
