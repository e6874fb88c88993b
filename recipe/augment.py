"""The seed's augmentation, two ways: batched tensor ops on the device, and torchvision transforms.

Both apply, per image and independently: a random 32x32 crop of the image zero-padded by 4
(each of the 9x9 offsets equally likely), a horizontal flip with p=0.5, normalisation with the
CIFAR-100 mean and std, then random erasing with torchvision's semantics (with probability p,
up to 10 tries of an area of 2-33% of the image and an aspect ratio in 0.3-3.3 drawn
log-uniformly, the first that fits is filled with 0; none fitting means no erasing).
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch

from recipe.config import CIFAR100_MEAN, CIFAR100_STD

PAD = 4
SIZE = 32
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
ERASE_TRIES = 10  # torchvision's RandomErasing.get_params tries 10 times

if TYPE_CHECKING:
    from torchvision import transforms


def normalize(x_uint8_nhwc: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) -> normalised float (B, C, H, W).

    The result is a permuted view of an NHWC tensor, i.e. already channels_last in memory.
    """
    x = x_uint8_nhwc.permute(0, 3, 1, 2).float()
    mean, std = mean_std(x.device)
    return (x / 255 - mean) / std


@functools.cache
def mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-100's mean and std, (1, 3, 1, 1) on the device, made once per device: a tensor made from Python
    values is a copy from the host, which on CUDA waits for the device, once per batch it would be made."""
    return (torch.tensor(CIFAR100_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(CIFAR100_STD, device=device).view(1, 3, 1, 1))


def crop_flip(x: torch.Tensor) -> torch.Tensor:
    """Random padded crop and horizontal flip of uint8 (B, H, W, C) images, one gather for both."""
    b = x.shape[0]
    padded = torch.nn.functional.pad(x, (0, 0, PAD, PAD, PAD, PAD))
    offsets = torch.randint(0, 2 * PAD + 1, (2, b, 1), device=x.device)
    flip = torch.rand(b, 1, device=x.device) < 0.5
    ar = torch.arange(SIZE, device=x.device)
    rows = offsets[0] + ar
    # A flip after the crop reads the crop's columns right to left.
    cols = offsets[1] + torch.where(flip, SIZE - 1 - ar, ar)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded[batch, rows.view(b, SIZE, 1), cols.view(b, 1, SIZE)]


def erase(x: torch.Tensor, p: float) -> torch.Tensor:
    """Random erasing of float (B, C, H, W) images with torchvision's semantics, filled with 0.

    In place (which also keeps x's memory format, channels_last from normalize()); returns x.
    """
    b, _, h_img, w_img = x.shape
    dev = x.device
    area = h_img * w_img * torch.empty(b, ERASE_TRIES, device=dev).uniform_(*ERASE_SCALE)
    log_ratio = torch.empty(b, ERASE_TRIES, device=dev).uniform_(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]))
    ratio = torch.exp(log_ratio)
    h = torch.round(torch.sqrt(area * ratio)).long()
    w = torch.round(torch.sqrt(area / ratio)).long()
    fits = (h < h_img) & (w < w_img)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first try that fits, as torchvision takes it
    h, w = h.gather(1, first), w.gather(1, first)
    apply = (torch.rand(b, 1, device=dev) < p) & fits.any(dim=1, keepdim=True)
    top = (torch.rand(b, 1, device=dev) * (h_img - h + 1)).long()
    left = (torch.rand(b, 1, device=dev) * (w_img - w + 1)).long()
    r = torch.arange(h_img, device=dev).view(1, h_img)
    c = torch.arange(w_img, device=dev).view(1, w_img)
    in_rows = (r >= top) & (r < top + h)  # (B, H)
    in_cols = (c >= left) & (c < left + w)  # (B, W)
    mask = (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)) & apply.view(b, 1, 1)
    return x.masked_fill_(mask.unsqueeze(1), 0.0)


def train_batch(x_uint8_nhwc: torch.Tensor, erasing_p: float) -> torch.Tensor:
    """The fast path: uint8 (B, H, W, C) on the device -> augmented, normalised (B, C, H, W)."""
    return erase(normalize(crop_flip(x_uint8_nhwc)), erasing_p)


# torchvision is imported where the classic pipeline needs it: it takes about as long to import as torch
# (it loads torch._dynamo), in every process that trains, Ray's trial workers included.

def classic_train_transform(erasing_p: float) -> "transforms.Compose":
    """The seed's transform, for PIL images in a DataLoader."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomCrop(SIZE, padding=PAD),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD),
            transforms.RandomErasing(p=erasing_p, scale=ERASE_SCALE, ratio=ERASE_RATIO, value=0),
        ]
    )


def classic_eval_transform() -> "transforms.Compose":
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)])
