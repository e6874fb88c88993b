"""Batches for both pipelines, one epoch of training, one pass of evaluation.

On CUDA nothing in the step loop waits for the device: losses and correct counts are summed
on the device and read once per epoch, and the divergence check reads a pinned host copy of
the last step's flag that the device writes asynchronously.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from recipe import augment
from recipe.data import Arrays

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class DeviceData:
    """A split held on the training device as uint8 NHWC, as the fast path wants it."""

    def __init__(self, arrays: Arrays, device: torch.device, channels_last: bool) -> None:
        self.x = torch.tensor(arrays.x, device=device)
        self.y = torch.tensor(arrays.y, device=device)
        # normalize() yields channels_last memory for free; other layouts pay for a copy.
        self.layout = (lambda t: t) if channels_last else (lambda t: t.contiguous())

    def __len__(self) -> int:
        return len(self.y)

    def train_batches(self, batch_size: int, erasing_p: float) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(self), device=self.x.device)
        for idx in perm.split(batch_size):
            yield self.layout(augment.train_batch(self.x[idx], erasing_p)), self.y[idx]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for s in range(0, len(self), batch_size):
            yield self.layout(augment.normalize(self.x[s : s + batch_size])), self.y[s : s + batch_size]


class ArrayDataset(Dataset):
    """uint8 HWC arrays as PIL images through a torchvision transform, like torchvision's CIFAR100."""

    def __init__(self, arrays: Arrays, transform: Callable) -> None:
        self.arrays, self.transform = arrays, transform

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.arrays.x[i])), int(self.arrays.y[i])


class LoaderData:
    """The classic path: a DataLoader with worker processes and pinned memory."""

    def __init__(self, arrays: Arrays, device: torch.device, workers: int, train: bool, batch_size: int,
                 erasing_p: float, channels_last: bool) -> None:
        transform = augment.classic_train_transform(erasing_p) if train else augment.classic_eval_transform()
        self.loader = DataLoader(
            ArrayDataset(arrays, transform),
            batch_size=batch_size,
            shuffle=train,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            # New workers each epoch, seeded from the (checkpointed) global RNG: a resumed run
            # draws the same augmentations as an uninterrupted one.
            persistent_workers=False,
        )
        self.device, self.channels_last = device, channels_last

    def __len__(self) -> int:
        return len(self.loader.dataset)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True, memory_format=fmt), y.to(self.device, non_blocking=True)


@dataclass
class EpochResult:
    loss: float
    acc: float
    images: int
    diverged: bool


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class TrainStep:
    """One optimisation step on a batch: forward, loss, backward, clipping, SGD, OneCycle.

    Eager (mode "off"), or with the forward and its loss through torch.compile in one of its modes,
    which compiles the backward with it. The graph is compiled once per batch shape (dynamic=False:
    an epoch's last, smaller batch compiles once, in the first epoch, and is never dropped) and holds
    no value that changes during a run: clipping, SGD and the schedule stay outside it, as fused or
    foreach kernels, so a new lr every step changes no graph and a CUDA graph replay
    (reduce-overhead) can capture nothing stale. A step returns the loss and the count of right
    predictions as device tensors: nothing waits for the device.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loss_fn: nn.Module,
        *,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        scaler: torch.amp.GradScaler | None,
        grad_clip: float,
        mode: str = "off",
        backend: str = "inductor",
    ) -> None:
        self.model, self.optimizer, self.scheduler, self.loss_fn = model, optimizer, scheduler, loss_fn
        self.device, self.amp_dtype, self.scaler, self.grad_clip = device, amp_dtype, scaler, grad_clip
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._forward = self._forward_loss
        if mode != "off":
            # One training at a time per process: drop what earlier ones compiled, or a process that trains
            # run after run (a Ray worker reused for trial after trial) reaches Dynamo's recompile limit
            # and silently falls back to eager.
            torch._dynamo.reset()
            # torch.compile takes a mode only with its default backend (tests compile with others).
            options = {"mode": None if mode == "default" else mode} if backend == "inductor" else {}
            self._forward = torch.compile(self._forward_loss, dynamic=False, backend=backend, **options)
        self._new_graph_step = mode == "reduce-overhead" and device.type == "cuda"

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.amp_dtype):
            logits = self.model(x)
            loss = self.loss_fn(logits.float(), y)
        return loss, (logits.detach().argmax(1) == y).sum()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._new_graph_step:  # the last step's CUDA graph outputs may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        loss, correct = self._forward(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:  # fp16 on GPUs without native bf16
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), correct


def train_epoch(step: TrainStep, batches: Batches, *, device: torch.device,
                on_step: Callable[[], None] | None = None) -> EpochResult:
    """One pass over the batches; stops early, with diverged=True, at a non-finite loss."""
    step.model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    bad = torch.zeros((), device=device, dtype=torch.bool)
    # Where the device is not the host, the step reads a host copy the device fills without a wait.
    bad_host = torch.zeros((), dtype=torch.bool, pin_memory=True) if device.type == "cuda" else None
    for x, y in batches:
        loss, right = step(x, y)
        n = y.shape[0]
        seen += n
        loss_sum += loss.double() * n
        correct += right
        step_bad = ~torch.isfinite(loss)
        bad |= step_bad
        if on_step is not None:
            on_step()
        if bad_host is None:
            if step_bad:
                break
        else:
            bad_host.copy_(step_bad, non_blocking=True)
            if bad_host.item():  # a host read of pinned memory: no device synchronisation
                break
    diverged = bool(bad)  # the one read of the epoch (it also catches the last steps' flags)
    return EpochResult(
        loss=float("nan") if diverged else float(loss_sum) / max(seen, 1),
        acc=float(correct) / max(seen, 1),
        images=seen,
        diverged=diverged,
    )


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, *, device: torch.device, amp_dtype: torch.dtype | None) -> tuple[float, float]:
    """Mean plain cross-entropy (no label smoothing, so comparable across runs) and accuracy."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for x, y in batches:
        with autocast(device, amp_dtype):
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
    return float(loss_sum) / max(seen, 1), float(correct) / max(seen, 1)
