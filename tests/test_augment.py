"""Both pipelines apply the seed's augmentation per image, at its stated rates and magnitudes.

Every batch here holds copies of one image, so whatever differs between outputs is the
augmentation's own random draw for that image.
"""
import math

import numpy as np
import pytest
import torch
from torchvision import transforms

from recipe.augment import ERASE_RATIO, ERASE_SCALE
from recipe.config import CIFAR100_MEAN, CIFAR100_STD
from recipe.data import Arrays
from recipe.engine import DeviceData, LoaderData

# CIFAR-100's training-set mean and std per channel (pixels scaled to [0, 1]), as published and used widely
# (e.g. weiaicunzai/pytorch-cifar100's CIFAR100_TRAIN_MEAN and CIFAR100_TRAIN_STD).
PUBLISHED_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
PUBLISHED_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
N = 3000
PATHS = ["fast", "classic"]


def augmented(path: str, image: np.ndarray, n: int, erasing_p: float) -> torch.Tensor:
    arrays = Arrays(np.repeat(image[None], n, axis=0), np.zeros(n, dtype=np.int64))
    torch.manual_seed(0)
    if path == "fast":
        batches = DeviceData(arrays, torch.device("cpu"), channels_last=False).train_batches(500, erasing_p)
    else:
        batches = LoaderData(arrays, torch.device("cpu"), 0, True, 500, erasing_p, channels_last=False)
    return torch.cat([x for x, _ in batches])


def unnormalize(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    return torch.round((x * std + mean) * 255).to(torch.int64).numpy()


def position_coded_image() -> np.ndarray:
    """Red encodes the column and green the row of every pixel, none of them 0 (the padding)."""
    r, c = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([8 * c + 4, 8 * r + 4, np.full_like(r, 128)], axis=-1).astype(np.uint8)


def crop_offsets_and_flips(x: torch.Tensor):
    px = unnormalize(x)
    in_col = (px[:, 0, 16, 16] - 4) // 8
    in_row = (px[:, 1, 16, 16] - 4) // 8
    flipped = px[:, 0, 16, 17] < px[:, 0, 16, 15]
    dy = in_row - 16 + 4
    # Flip after crop: output column 16 shows crop column 15.
    dx = np.where(flipped, in_col - 15 + 4, in_col - 16 + 4)
    return dy, dx, flipped


@pytest.mark.parametrize("path", PATHS)
def test_flip_rate_is_one_half(path):
    _, _, flipped = crop_offsets_and_flips(augmented(path, position_coded_image(), N, 0.0))
    assert abs(flipped.mean() - 0.5) < 0.035  # 3.8 standard deviations


@pytest.mark.parametrize("path", PATHS)
def test_crop_offsets_are_uniform_over_the_9x9_padded_positions(path):
    dy, dx, flipped = crop_offsets_and_flips(augmented(path, position_coded_image(), N, 0.0))
    for offsets in (dy, dx):
        assert offsets.min() == 0 and offsets.max() == 8
        freq = np.bincount(offsets, minlength=9) / N
        assert np.all(np.abs(freq - 1 / 9) < 0.025)
    # Independent draws: each of the 81 offset pairs appears, and flips do not depend on them.
    assert len(set(zip(dy, dx))) == 81
    assert abs(flipped[dx < 4].mean() - flipped[dx > 4].mean()) < 0.08


@pytest.mark.parametrize("path", PATHS)
def test_padding_is_zero_before_normalisation(path):
    x = augmented(path, position_coded_image(), 500, 0.0)
    px = unnormalize(x)
    dy, _, _ = crop_offsets_and_flips(x)
    shifted_down = dy == 0  # the crop starts 4 rows above the image: rows 0-3 are padding
    assert np.all(px[shifted_down][:, :, :4, :] == 0)
    assert np.all(px[dy == 8][:, :, 28:, :] == 0)


def erased_rectangles(x: torch.Tensor):
    """Per image: None, or (top, left, height, width) of the all-channel-zero rectangle."""
    out = []
    for mask in (x == 0).all(dim=1).numpy():
        if not mask.any():
            out.append(None)
            continue
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert mask.sum() == h * w, "the erased region is one filled rectangle"
        out.append((rows[0], cols[0], h, w))
    return out


def reference_rectangles(n: int):
    """torchvision's own RandomErasing.get_params, the definition of the semantics."""
    torch.manual_seed(1)
    img = torch.zeros(3, 32, 32)
    rects = []
    for _ in range(n):
        i, j, h, w, _ = transforms.RandomErasing.get_params(img, scale=ERASE_SCALE, ratio=ERASE_RATIO, value=[0])
        rects.append((i, j, h, w) if (h, w) != (32, 32) else None)
    return rects


def ks_distance(a, b) -> float:
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda s: np.searchsorted(np.sort(s), grid, side="right") / len(s)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


@pytest.mark.parametrize("path", PATHS)
def test_random_erasing_matches_torchvision_in_rate_area_shape_and_place(path):
    gray = np.full((32, 32, 3), 200, dtype=np.uint8)
    rects = erased_rectangles(augmented(path, gray, N, 0.5))
    erased = [r for r in rects if r is not None]
    assert abs(len(erased) / N - 0.5) < 0.035
    ref = [r for r in reference_rectangles(N) if r is not None]
    area = np.array([h * w for _, _, h, w in erased]) / 1024
    assert area.min() >= 0.015 and area.max() <= 0.36  # 2-33% of the image, up to the rounding of each side
    ref_area = np.array([h * w for _, _, h, w in ref]) / 1024
    aspect = np.log([h / w for _, _, h, w in erased])
    ref_aspect = np.log([h / w for _, _, h, w in ref])
    assert aspect.min() >= math.log(0.3) - 0.3 and aspect.max() <= math.log(3.3) + 0.3
    # Two-sample Kolmogorov-Smirnov at about the 0.1% level for samples of this size.
    limit = 1.95 * math.sqrt(2 / min(len(erased), len(ref)))
    assert ks_distance(area, ref_area) < limit
    assert ks_distance(aspect, ref_aspect) < limit
    # The top-left corner is uniform over the places where the rectangle fits.
    rel_top = np.array([i / (32 - h) for i, _, h, _ in erased])
    rel_left = np.array([j / (32 - w) for _, j, _, w in erased])
    ref_top = np.array([i / (32 - h) for i, _, h, _ in ref])
    ref_left = np.array([j / (32 - w) for _, j, _, w in ref])
    assert ks_distance(rel_top, ref_top) < limit
    assert ks_distance(rel_left, ref_left) < limit


@pytest.mark.parametrize("path", PATHS)
def test_normalisation_uses_the_cifar100_mean_and_std(path):
    # A plain colour: every pixel a crop can bring to the centre has it.
    image = np.empty((32, 32, 3), dtype=np.uint8)
    image[:] = (200, 100, 50)
    x = augmented(path, image, 50, 0.0)
    # The published figures, not the code's own constants (which round them to 4 digits: 2e-4 at most here).
    expected = (np.array([200, 100, 50]) / 255 - np.array(PUBLISHED_MEAN)) / np.array(PUBLISHED_STD)
    np.testing.assert_allclose(x[:, :, 16, 16].numpy(), np.broadcast_to(expected, (50, 3)), atol=1e-3)


def test_the_fast_path_hands_the_model_channels_last_batches_when_asked():
    arrays = Arrays(np.zeros((64, 32, 32, 3), dtype=np.uint8), np.zeros(64, np.int64))
    for channels_last in (True, False):
        data = DeviceData(arrays, torch.device("cpu"), channels_last)
        for x, _ in (*data.train_batches(32, 0.5), *data.eval_batches(32)):
            assert x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_the_fast_path_makes_its_batches_from_nothing_on_the_host(monkeypatch):
    """A tensor made from Python or NumPy values is a copy from the host: on CUDA one that waits for the device,
    so one per batch would stall the step loop. The fast path's batches are made on the device from device data."""
    arrays = Arrays(np.random.default_rng(0).integers(0, 256, (80, 32, 32, 3), dtype=np.uint8), np.zeros(80, np.int64))
    data = DeviceData(arrays, torch.device("cpu"), True)
    next(data.train_batches(32, 0.5))  # what is made once per device (the mean and std) is made by now

    def from_host(*args, **kwargs):
        raise AssertionError("a tensor made from host values while batches are made")
    for name in ("tensor", "as_tensor", "from_numpy"):
        monkeypatch.setattr(torch, name, from_host)
    assert sum(len(y) for _, y in data.train_batches(32, 0.5)) == 80
    assert sum(len(y) for _, y in data.eval_batches(32)) == 80


def test_both_paths_evaluate_on_identical_normalised_images():
    arrays = Arrays(np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), np.zeros(64, np.int64))
    fast = torch.cat([x for x, _ in DeviceData(arrays, torch.device("cpu"), False).eval_batches(32)])
    classic = torch.cat([x for x, _ in LoaderData(arrays, torch.device("cpu"), 0, False, 32, 0.0, False)])
    torch.testing.assert_close(fast, classic, atol=1e-6, rtol=0)
