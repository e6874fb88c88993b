"""What a study's driver decided before Ray starts (search.run.plan), read by search.run and search.tuning."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from recipe.config import RecipeError
from search.study import STUDY_FILE, StudyPaths, StudySpec


@dataclass(frozen=True)
class Plan:
    spec: StudySpec
    paths: StudyPaths
    resume: bool
    storage: str  # where Ray Tune keeps its experiments: <storage>/<study>/tune and .../final-tune
    address: str | None
    final: bool
    state: str = "new"  # study_state() when planned; the driver checks it again once it holds the study's lock
    study_file: dict[str, Any] | None = None  # the study file's own settings, before the command line's changes

    def spec_record(self) -> dict[str, Any]:
        """What spec.json holds: the study as it runs, and its study file as it was then (STUDY_FILE), which a
        --resume compares the file with to say what was edited since."""
        return {**self.spec.to_dict(), STUDY_FILE: self.study_file}

    @property
    def on_loopback(self) -> bool:
        """A private Ray, or a cluster whose head is on this machine's loopback: one machine."""
        return self.address is None or is_loopback(self.address)


def is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# Device files one of which is there wherever torch.cuda can see a GPU: NVIDIA's driver (also in a container
# given GPUs), WSL2's GPU bridge, AMD's ROCm.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg", "/dev/kfd")


def local_gpus() -> int:
    """The GPUs this machine shows (CUDA_VISIBLE_DEVICES respected): the ones a study's own Ray is given.

    Without a GPU driver, 0 without importing torch: a study's driver trains nothing itself, and torch
    costs it seconds of CPU to import.
    """
    if not any(os.path.exists(f) for f in GPU_DEVICE_FILES):
        return 0
    import torch

    return torch.cuda.device_count()


def check_gpus(asked: int | None, seen: int, where: str) -> None:
    if asked is not None and asked > seen:
        raise RecipeError(f"--gpus {asked}: {where} has {seen} GPU{'s' * (seen != 1)} for Ray; "
                          f"ask for at most {seen} (0 runs on CPU)")
