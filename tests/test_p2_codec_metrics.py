"""P2 colour codec, joint augmentation, focal loss and the course's mIoU (mean_iou.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mean_iou
from hw1.errors import WARNINGS, run_main
from hw1.p2.data import (
    CLASS_COLOURS,
    Pair,
    SatMaskDataset,
    classes_to_rgb,
    joint_augment,
    read_mask,
    rgb_to_classes,
    write_mask,
)
from hw1.p2.losses import focal_loss


def test_all_seven_colours_round_trip(tmp_path):
    ids = np.arange(7, dtype=np.uint8).repeat(3).reshape(3, 7)
    assert (rgb_to_classes(classes_to_rgb(ids)) == ids).all()
    write_mask(tmp_path / "0000_mask.png", ids)
    img = Image.open(tmp_path / "0000_mask.png")
    assert img.mode == "RGB" and img.size == (7, 3)
    assert (read_mask(tmp_path / "0000_mask.png") == ids).all()
    assert {tuple(c) for c in np.asarray(img).reshape(-1, 3)} == {tuple(c) for c in CLASS_COLOURS}


@pytest.mark.parametrize("rgb, expected", [
    ((200, 30, 240), 2),    # thresholds to (1, 0, 1): Rangeland
    ((127, 128, 255), 0),   # (0, 1, 1): Urban; 127 is below the threshold, 128 is not
    ((140, 250, 10), 1),    # (1, 1, 0): Agriculture
    ((90, 200, 100), 3),    # (0, 1, 0): Forest
    ((20, 60, 130), 4),     # (0, 0, 1): Water
    ((128, 128, 128), 5),   # (1, 1, 1): Barren
    ((127, 127, 127), 6),   # (0, 0, 0): Unknown
])
def test_near_colours_read_as_the_course_reads_them(rgb, expected):
    assert rgb_to_classes(np.array([[rgb]], dtype=np.uint8))[0, 0] == expected


def test_pure_red_is_unknown_and_counted():
    WARNINGS.counts.clear()
    ids = rgb_to_classes(np.array([[(255, 0, 0), (200, 100, 20), (0, 255, 255)]], dtype=np.uint8), where="m.png")
    assert ids.tolist() == [[6, 6, 0]]
    assert sum(WARNINGS.counts.values()) == 2
    WARNINGS.counts.clear()


def _class_coloured_pair(folder, ids):
    """An image whose pixels are their class's map colour (PNG bytes, so lossless) and its mask."""
    Image.fromarray(classes_to_rgb(ids)).save(folder / "0000_sat.jpg", format="PNG")
    write_mask(folder / "0000_mask.png", ids)
    return Pair("0000", folder / "0000_sat.jpg", folder / "0000_mask.png")


def _decode(image: torch.Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation and read the colours back as classes."""
    image = (image * torch.tensor([0.229, 0.224, 0.225])[:, None, None]
             + torch.tensor([0.485, 0.456, 0.406])[:, None, None])
    return rgb_to_classes((image.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("augment, size", [("flip", 24), ("flip+scale", 24), ("none", 16)])
def test_augmentation_and_resizing_move_image_and_mask_together(tmp_path, augment, size):
    ids = np.random.default_rng(0).integers(0, 7, (6, 6)).repeat(4, 0).repeat(4, 1).astype(np.uint8)  # 24 x 24
    pair = _class_coloured_pair(tmp_path, ids)
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        item = SatMaskDataset([pair], size, augment=augment)[0]
        mask = item["mask"].numpy()
        assert (item["image"].shape == (3, size, size) and mask.shape == (size, size)
                and set(np.unique(mask)) <= set(range(7)))
        decoded = _decode(item["image"])
        agree = (decoded == mask).mean()
        if augment == "flip":  # no resampling: exact
            assert agree == 1.0
        else:  # bilinear resampling blends colours at block edges only; a mismatched geometry scores far lower
            others = max((decoded == np.flip(mask, axis)).mean() for axis in (0, 1))
            assert agree > 0.7 and agree > others + 0.3, (agree, others)
        seen.add(mask.tobytes())
    assert len(seen) == 1 if augment == "none" else len(seen) >= 3


def test_joint_flip_is_one_of_identity_horizontal_vertical():
    image, mask = torch.arange(12.).view(1, 3, 4), torch.arange(12).view(3, 4)
    for seed in range(10):
        torch.manual_seed(seed)
        im, m = joint_augment(image, mask, "flip")
        assert torch.equal(im[0].long(), m)
        assert any(torch.equal(m, c) for c in (mask, mask.flip(-1), mask.flip(-2)))


def test_focal_equals_cross_entropy_at_gamma0_alpha1():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 7, 5, 6), torch.randint(0, 7, (2, 5, 6))
    target[0, 0, :3] = 255
    ce = F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(focal_loss(logits, target, alpha=1.0, gamma=0.0), ce, atol=1e-6)
    per_class = focal_loss(logits, target, alpha=torch.ones(7), gamma=0.0)
    assert torch.allclose(per_class, ce, atol=1e-6)
    assert focal_loss(logits, target, alpha=0.25, gamma=2.0) < 0.25 * ce


def test_focal_gradient_finite_on_confident_wrong_predictions():
    logits = torch.full((1, 7, 2, 2), -1e4)
    logits[:, 0] = 1e4                      # certain of class 0 everywhere
    logits.requires_grad_(True)
    target = torch.tensor([[[3, 3], [0, 5]]])  # three pixels certainly wrong, one certainly right
    loss = focal_loss(logits, target, alpha=0.25, gamma=2.0)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def _write(folder, stem, ids):
    write_mask(folder / f"{stem}_mask.png", np.asarray(ids, dtype=np.uint8))


def test_mean_iou_matches_hand_computation(tmp_path, capsys):
    labels, pred = tmp_path / "labels", tmp_path / "pred"
    # image a: 2 x 4; image b: 1 x 4. Unknown (6) labels predicted as 0 and 4 count as false positives.
    _write(labels, "a", [[0, 0, 1, 1], [6, 6, 4, 5]])
    _write(pred, "a", [[0, 1, 1, 1], [0, 4, 4, 5]])
    _write(labels, "b", [[2, 3, 3, 0]])
    _write(pred, "b", [[2, 3, 2, 6]])
    (tmp_path / "labels" / "a_sat.jpg").write_bytes(b"")  # images beside labels are ignored
    run_main(mean_iou.main)(["--pred", str(pred), "--labels", str(labels)])
    out = capsys.readouterr().out.strip().splitlines()
    # class: tp, tp_fp (#pred), tp_fn (#label) → iou
    # 0: 1, 2, 3 → 1/4;   1: 2, 3, 2 → 2/3;   2: 1, 2, 1 → 1/2
    # 3: 1, 1, 2 → 1/2;   4: 1, 2, 1 → 1/2;   5: 1, 1, 1 → 1
    expected = [1 / 4, 2 / 3, 1 / 2, 1 / 2, 1 / 2, 1.0]
    assert out[:6] == [f"class #{i} : {v:1.5f}" for i, v in enumerate(expected)]
    assert out[-1] == f"mean_iou: {sum(expected) / 6:f}"
    assert len(out) == 7


@pytest.mark.parametrize("case", ["missing", "unmatched", "size", "empty"])
def test_mean_iou_bad_input_is_one_error_line(tmp_path, capsys, case):
    labels, pred = tmp_path / "labels", tmp_path / "pred"
    _write(labels, "a", [[0, 1]])
    _write(pred, "a", [[0, 1]] if case != "size" else [[0, 1, 1]])
    if case == "missing":
        _write(labels, "b", [[0, 1]])
    if case == "unmatched":
        _write(pred, "c", [[0, 1]])
    if case == "empty":
        pred = tmp_path / "nothing"
        pred.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run_main(mean_iou.main)(["--pred", str(pred), "--labels", str(labels)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error:"), err
