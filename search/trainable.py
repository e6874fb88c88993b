"""The Ray Tune function trainable: one recipe run, reporting every epoch with its checkpoint.

A trial's run directory lives in its Tune working directory; the final run's in the
directory it is given. Every epoch the recipe's last.pt goes to Tune as that epoch's
checkpoint, so a trial Tune restarts (a crash, a lost node, a resumed study) continues from
it wherever it lands. A trial keeps no checkpoint of its own: Tune's copy is the one.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from recipe.config import RecipeConfig
from recipe.train import train

CHECKPOINT_FILE = "last.pt"
RUN_DIR = "run"  # a trial's run directory, inside its Tune working directory


def run_recipe(params: dict[str, float], *, base: dict[str, Any], threads: int, out_dir: str | None = None,
               final: bool = False) -> None:
    """Train `base` with the sampled `params`, reporting each epoch's metrics and checkpoint."""
    torch.set_num_threads(threads)
    config = RecipeConfig.from_dict({**base, **params})
    run_dir = Path(out_dir) if out_dir else Path.cwd() / RUN_DIR
    last = run_dir / "checkpoints" / CHECKPOINT_FILE
    resume = last.is_file()
    if not resume:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            last.parent.mkdir(parents=True, exist_ok=True)
            with checkpoint.as_directory() as d:
                shutil.copyfile(Path(d) / CHECKPOINT_FILE, last)
            resume = True

    def report(metrics: dict[str, Any], path: Path | None) -> None:
        if path is None:  # a diverged epoch: nothing worth resuming from
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
            # A hard link hands Tune the file without copying 170 MB; Tune persists its own copy.
            os.link(path, Path(tmp) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        if not final:
            path.unlink()

    train(config, run_dir, resume=resume, callback=report, curves=final, keep_best=final)
