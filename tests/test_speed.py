"""The speed work of issue 8: batched BYOL views, the decoded-image cache, --gpu-aug training, bench.py --quick."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from conftest import V2_PARAMS_METHOD
from PIL import Image

from hw1.data import cache
from hw1.data.folders import classify_train_transform, load_rgb
from hw1.data.gpu_aug import BatchView, ViewParams, apply_view, batch_views, sample_view
from hw1.data.recipes import BYOL_VIEWS, FINETUNE_VIEW, IMAGENET_MEAN, IMAGENET_STD
from hw1.p1.byol import TwoViews

ROOT = Path(__file__).resolve().parents[1]
MEAN = torch.tensor(IMAGENET_MEAN).view(-1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(-1, 3, 1, 1)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    """One torch thread: these tests run many tiny ops, where a second thread (on a busy 2-core CI
    machine) costs up to 10x in spin-waiting and gains nothing."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def to_255(x: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: back to 0..255 floats."""
    return (x * STD.view(3, 1, 1) + MEAN.view(3, 1, 1)) * 255 if x.dim() == 3 else (x * STD + MEAN) * 255


def plain(p: ViewParams) -> ViewParams:
    """Only the crop: no flip, jitter, grayscale, blur or solarize."""
    for name in ("flip", "jitter", "gray", "blur", "solarize"):
        getattr(p, name).zero_()
    return p


def test_each_image_of_a_batch_gets_its_own_crop() -> None:
    n, side = 16, 64
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    coords = torch.stack([xx * 4, yy * 4, torch.zeros_like(xx)]).to(torch.uint8)  # R = 4x, G = 4y
    images = coords.expand(n, -1, -1, -1).contiguous()
    p = plain(sample_view(n, side, side, BYOL_VIEWS[0], torch.Generator().manual_seed(0)))
    out = to_255(apply_view(images, p, 32))
    assert len({tuple(b.tolist()) for b in p.boxes}) == n, "every image draws its own box"
    for i, (x1, y1, x2, y2) in enumerate(p.boxes.tolist()):
        # The output's middle pixel sits at the middle of image i's own box (R, G encode x, y).
        assert out[i, 0, 16, 16].item() / 4 == pytest.approx((x1 + x2) / 2 - 0.5 + (x2 - x1) / 64, abs=0.6)
        assert out[i, 1, 16, 16].item() / 4 == pytest.approx((y1 + y2) / 2 - 0.5 + (y2 - y1) / 64, abs=0.6)
    # Through the module too: identical inputs come out all different.
    views = BatchView(32, BYOL_VIEWS[0], torch.Generator().manual_seed(1))(images)
    flat = views.flatten(1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(n) for j in range(i))


def reference_view(img: torch.Tensor, p: ViewParams, i: int, size: int) -> torch.Tensor:
    """Image i through torchvision's per-image functionals with the drawn parameters (the CPU path's ops)."""
    left, top, right, bottom = p.boxes[i].int().tolist()
    x = TF.resized_crop(img.float() / 255, top, left, bottom - top, right - left, [size, size], antialias=True)
    if p.flip[i]:
        x = TF.hflip(x)
    if p.jitter[i]:
        steps = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for s in p.order[i].tolist():
            x = steps[s](x, p.factors[i, s].item())
    if p.gray[i]:
        x = TF.rgb_to_grayscale(x, 3)
    if p.blur[i]:
        x = TF.gaussian_blur(x, [p.recipe.blur_kernel(size)] * 2, [p.sigma[i].item()] * 2)
    if p.solarize[i]:
        x = TF.solarize(x, 128 / 255)
    return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)


def test_batched_view_equals_torchvision_per_image_with_the_same_parameters() -> None:
    """Inside the crop the batched ops are torchvision's; at the crop's 1-px border the bilinear
    crop reads the real neighbouring pixel where torchvision repeats the edge (a small difference)."""
    torch.manual_seed(0)
    n, side = 24, 48
    images = (torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8), size=(side, side), mode="bilinear")
              * 255).to(torch.uint8)
    gen = torch.Generator().manual_seed(0)
    for recipe in [*BYOL_VIEWS, dataclasses.replace(BYOL_VIEWS[0], blur_p=0.5, solarize_p=0.5), FINETUNE_VIEW]:
        p = sample_view(n, side, side, recipe, gen)
        out = apply_view(images, p, side)
        for i in range(n):
            diff = (out[i] - reference_view(images[i], p, i, side)).abs()[:, 3:-3, 3:-3]
            assert diff.max() < 0.02, f"image {i}: max |diff| {diff.max():.4f} (1/255 after normalising is ~0.017)"


# ---------------------------------------------------------------- statistics against the CPU path

N_DRAWS = 600  # per probe and path; tolerance: 4 standard errors of the difference of two estimates
SIDE = 32


def probes() -> tuple[np.ndarray, np.ndarray]:
    """A: a bright, slightly pink flat image: every channel stays >= 128 under any jitter, so solarize
    turns it dark. B: a dark, reddish left→right ramp (channels <= 65, so never solarized even at
    1.4 x 1.4; always coloured, so grayscale is visible; the jitter keeps its brightness increasing,
    so the slope's sign shows a flip)."""
    bright = np.zeros((SIDE, SIDE, 3), np.uint8) + np.array([255, 235, 235], np.uint8)
    t = np.linspace(0, 1, SIDE)[None, :, None]
    ramp = np.broadcast_to(np.array([10, 5, 5]) + t * np.array([55, 30, 30]), (SIDE, SIDE, 3)).round().astype(np.uint8)
    return bright, ramp


def output_stats(bright_out: torch.Tensor, ramp_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image flags read from the outputs (0..255 scale) of the two probes."""
    spread = ramp_out.amax(1) - ramp_out.amin(1)
    columns = ramp_out.mean((1, 2))
    slope = (columns * (torch.arange(SIDE) - (SIDE - 1) / 2)).sum(1)
    return {"gray": (spread.amax((-2, -1)) < 1).float(), "solarize": (bright_out.mean((1, 2, 3)) < 128).float(),
            "flip": (slope < 0).float()}


def cpu_path_stats() -> list[dict[str, torch.Tensor]]:
    """TwoViews (PIL, per image) on the probes; crop area and blur from the transforms' own draws."""
    torch.manual_seed(0)
    two = TwoViews(SIDE)
    drawn: list[dict[str, list]] = [{"area": [], "sigma": []} for _ in BYOL_VIEWS]
    for v, view in enumerate(two.views):
        crop, blur = view.transforms[1], view.transforms[5].transforms[0]
        crop_params, blur_params = getattr(crop, V2_PARAMS_METHOD), getattr(blur, V2_PARAMS_METHOD)

        def record_crop(inputs, v=v, f=crop_params):  # type: ignore[no-untyped-def]
            params = f(inputs)
            drawn[v]["area"].append(params["height"] * params["width"] / SIDE**2)
            return params

        def record_blur(inputs, v=v, f=blur_params):  # type: ignore[no-untyped-def]
            params = f(inputs)
            drawn[v]["sigma"].append(params["sigma"][0])
            return params

        setattr(crop, V2_PARAMS_METHOD, record_crop)
        setattr(blur, V2_PARAMS_METHOD, record_blur)
    bright, ramp = (Image.fromarray(a) for a in probes())
    outs = [torch.stack([two(img) for _ in range(N_DRAWS)]) for img in (bright, ramp)]  # (N, 2, 3, H, W) each
    stats = []
    for v in range(2):
        s = output_stats(to_255(outs[0][:, v]), to_255(outs[1][:, v]))
        s["area"] = torch.tensor(drawn[v]["area"])
        s["blur"] = torch.tensor([len(drawn[v]["sigma"]) / (2 * N_DRAWS)])
        s["sigma"] = torch.tensor(drawn[v]["sigma"])
        stats.append(s)
    return stats


def gpu_path_stats() -> tuple[list[dict[str, torch.Tensor]], list[dict[str, float]]]:
    """The batched views on the same probes; also how often the outputs agree with the drawn parameters."""
    views = batch_views(SIDE, seed=0)
    bright, ramp = (torch.from_numpy(a).permute(2, 0, 1).expand(N_DRAWS, -1, -1, -1).contiguous() for a in probes())
    stats, agreement = [], []
    for view in views:
        bright_out = to_255(view(bright))
        p_bright = view.last
        ramp_out = to_255(view(ramp))
        p_ramp = view.last
        s = output_stats(bright_out, ramp_out)
        agreement.append({"gray": (s["gray"] == p_ramp.gray.float()).float().mean().item(),
                          "solarize": (s["solarize"] == p_bright.solarize.float()).float().mean().item(),
                          "flip": (s["flip"] == p_ramp.flip.float()).float().mean().item()})
        s["area"] = torch.cat([p_bright.crop_area(SIDE, SIDE), p_ramp.crop_area(SIDE, SIDE)])
        s["blur"] = torch.cat([p_bright.blur, p_ramp.blur]).float()
        s["sigma"] = torch.cat([p_bright.sigma[p_bright.blur], p_ramp.sigma[p_ramp.blur]])
        stats.append(s)
    return stats, agreement


def test_batched_views_match_the_cpu_path_in_distribution() -> None:
    cpu = cpu_path_stats()
    gpu, agreement = gpu_path_stats()
    for v, expect in enumerate(BYOL_VIEWS):
        # The outputs show exactly the drawn parameters (the batch's sorting and restoring keep images apart).
        assert min(agreement[v].values()) >= 0.99, agreement[v]
        nominal = {"flip": 0.5, "gray": expect.gray_p, "solarize": expect.solarize_p, "blur": expect.blur_p}
        for name in ("flip", "gray", "solarize", "area", "sigma"):
            a, b = cpu[v][name].float(), gpu[v][name].float()
            se = math.sqrt(a.var(unbiased=True).nan_to_num().item() / len(a)
                           + b.var(unbiased=True).nan_to_num().item() / len(b))
            tol = 4 * max(se, 1e-3)
            assert abs(a.mean() - b.mean()) <= tol, (f"view {v + 1} {name}: CPU path {a.mean():.3f}, "
                                                     f"batched {b.mean():.3f}, tolerance {tol:.3f}")
            if name in nominal:
                p = nominal[name]
                assert abs(b.mean() - p) <= 4 * math.sqrt(max(p * (1 - p), 1e-4) / len(b)) + 1e-6, (
                    f"view {v + 1} {name}: {b.mean():.3f} vs p={p}")
        cpu_blur, gpu_blur = cpu[v]["blur"].item(), gpu[v]["blur"].mean().item()
        p = nominal["blur"]
        tol = 4 * math.sqrt(max(p * (1 - p), 1e-4) * (1 / (2 * N_DRAWS) + 1 / len(gpu[v]["blur"])))
        assert abs(cpu_blur - gpu_blur) <= tol + 1e-6, (f"view {v + 1} blur rate: CPU path {cpu_blur:.3f}, "
                                                        f"batched {gpu_blur:.3f}")


def test_fine_tuning_view_draws_what_the_per_image_transform_draws() -> None:
    """p1_finetune --gpu-aug: crops of half to all of the image with the same areas as torchvision's
    `classify_train_transform` draws, half the images flipped, every image's brightness, contrast and saturation
    jittered by up to 20% and its hue never, and no grayscale, blur or solarize."""
    n, side = 4000, 64
    p = sample_view(n, side, side, FINETUNE_VIEW, torch.Generator().manual_seed(0))
    transform = classify_train_transform(side)
    crop = transform.transforms[1]
    cpu_area = []
    for _ in range(n):
        params = getattr(crop, V2_PARAMS_METHOD)([torch.zeros(3, side, side, dtype=torch.uint8)])
        cpu_area.append(params["height"] * params["width"] / side**2)
    gpu_area, cpu_area = p.crop_area(side, side).double(), torch.tensor(cpu_area, dtype=torch.float64)
    assert gpu_area.min() >= 0.47 and gpu_area.max() <= 1.0  # 0.5 of the area, less the rounding of a side
    se = math.sqrt(gpu_area.var().item() / n + cpu_area.var().item() / n)
    assert abs(gpu_area.mean() - cpu_area.mean()) < 4 * se, (gpu_area.mean(), cpu_area.mean())
    assert abs(p.flip.float().mean() - 0.5) < 0.03
    assert p.jitter.all() and not (p.gray.any() or p.blur.any() or p.solarize.any())
    assert p.factors[:, :3].min() >= 0.8 and p.factors[:, :3].max() <= 1.2 and (p.factors[:, 3] == 0).all()
    assert p.factors[:, :3].std() > 0.1  # spread over the range, not stuck at 1


# ---------------------------------------------------------------- the cache


def write_jpegs(folder: Path, n: int, side: int = 24) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i}_0.jpg"
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def test_cache_is_reused_until_a_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_jpegs(tmp_path / "images", 6)
    builds = []
    real_build = cache.build
    monkeypatch.setattr(cache, "build", lambda *a, **k: (builds.append(a[2]), real_build(*a, **k)))
    first = cache.ensure(paths, tmp_path / "cache", "demo")
    data = cache.CachedImages(first)
    assert [tuple(data[i][0].shape) for i in range(6)] == [(3, 24, 24)] * 6
    # A cached image is exactly what the uncached path feeds the transforms (PILToTensor of the decoded file).
    assert torch.equal(data[3][0], TF.pil_to_tensor(load_rgb(paths[3])))
    assert json.loads(first.with_suffix(".json").read_text())["shape"] == [6, 24, 24, 3]

    assert cache.ensure(paths, tmp_path / "cache", "demo") == first and len(builds) == 1, "unchanged files: reused"

    Image.fromarray(np.full((24, 24, 3), 7, np.uint8)).save(paths[3], quality=90)
    os.utime(paths[3], ns=(paths[3].stat().st_atime_ns, paths[3].stat().st_mtime_ns + 10**9))
    second = cache.ensure(paths, tmp_path / "cache", "demo")
    assert second != first and len(builds) == 2, "a changed file: rebuilt under a new key"
    assert not first.exists(), "the stale cache is removed"
    assert torch.equal(cache.CachedImages(second)[3][0], TF.pil_to_tensor(load_rgb(paths[3])))
    assert not list((tmp_path / "cache").glob(".*")), "no temp files left"


def test_cache_without_room_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_jpegs(tmp_path / "images", 2)
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: type("u", (), {"free": 1000})())
    with pytest.raises(cache.UserError, match="not enough free disk"):
        cache.ensure(paths, tmp_path / "cache", "demo")
    assert not cache.fits(tmp_path / "cache", 2, 24)


# ---------------------------------------------------------------- training and the benchmark


def test_pretraining_step_with_gpu_aug_runs_on_cpu(tiny_data: Path, tmp_path: Path) -> None:
    import p1_pretrain

    out = tmp_path / "run"
    p1_pretrain.main(["--data-root", str(tiny_data), "--out", str(out), "--arch", "resnet18", "--image-size", "32",
                      "--batch-size", "8", "--epochs", "1", "--max-steps", "2", "--workers", "0", "--device", "cpu",
                      "--gpu-aug", "--cache", "--cache-dir", str(tmp_path / "cache"), "--projection-hidden-size", "64"])
    assert (out / "backbone_last.pt").is_file()
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 2
    assert list((tmp_path / "cache").glob("mini_train-*px-*.npy"))


def test_bench_quick_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "bench.py"), "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    rows = {r["row"].split(":")[0]: r for r in result["rows"]}
    for key in ("aug", "data-b", "data-c", "loader-ft", "loader-seg", "a", "b", "c", "c+compile", "seg train",
                "seg inference", "hw1_2.sh"):
        assert key in rows, f"missing row {key}"
    assert not [r for r in result["rows"] if "error" in r], [r for r in result["rows"] if "error" in r]
    assert all(r["images_per_s"] > 0 for r in result["rows"])
    assert rows["hw1_2.sh"]["masks_written"] == 2 and rows["hw1_2.sh"]["exit_code"] == 0
    assert result["mfu"]["gflop_per_image"] > 0 and result["mfu"]["c"] is None  # no peak known for a CPU
    assert set(result["profile"]["phases_ms"]) >= {"data", "forward (incl. augment)", "backward", "optimiser", "ema"}
    assert all(rows[k][t] >= 0 for k in ("b", "c") for t in ("step_s", "data_wait_s", "eval_s", "checkpoint_s"))
    overhead = result["overhead"]
    assert {k.split(",")[0] for k in overhead} >= {"monitor data path", "monitor set-up",
                                                   "write last.pt (resnet18 BYOL",
                                                   "write backbone_last.pt (resnet18 BYOL)", "loader start-up"}
    assert all(v.get("seconds", 0) >= 0 for v in overhead.values())
    md = (out / "bench.md").read_text()
    assert "| row | images/s |" in md and "c+compile" in md and "top op" in md and "per-epoch overhead" in md
