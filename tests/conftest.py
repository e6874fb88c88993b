"""Shared helpers: tiny recipe configs that train in seconds on a CPU."""
from __future__ import annotations

import os

import pytest
import torch

from recipe.config import RecipeConfig

# Two cores: several threads per test process only fight each other.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_config(**changes) -> RecipeConfig:
    """A seed-recipe config shrunk to seconds: synthetic data, width 4, a few hundred images."""
    base = dict(data="synthetic", width=4, subset=256, eval_subset=200, batch_size=32, epochs=2, device="cpu",
                workers=0)
    return RecipeConfig(**{**base, **changes})


@pytest.fixture
def tiny():
    return tiny_config
