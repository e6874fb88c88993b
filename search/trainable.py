"""The Ray Tune function trainable: one recipe run, reporting every epoch with its checkpoint.

A trial's run directory lives in its Tune working directory; the final run's in the
directory it is given. Every epoch the recipe's last.pt goes to Tune as that epoch's
checkpoint, so a trial Tune retries (a crash, a lost node) continues from it wherever it lands,
and so does a run a resumed study continues: the driver records each checkpoint as Tune reports
it (search.resume) and hands the run its recorded one. Tune's copy is a trial's only one: the
trial deletes its own once reported (Tune keeps the latest per trial in its experiment directory).

A checkpoint that cannot be loaded (truncated by a full disk or a killed copy, say) restarts the
run from epoch 0, and the first epoch it reports says so (result key "restarted"). The run is
seeded, so on the same device it reproduces the epochs ASHA and Optuna already hold, and both keep
the value they saw first for an epoch: their records stay those of one run. Failing the trial
instead would have Tune retry it from the same damaged file until its retries ran out.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from recipe.checkpoint import CheckpointError, DiskFullError, atomic_write, is_disk_full
from recipe.config import RecipeConfig
from recipe.data import one_line

CHECKPOINT_FILE = "last.pt"
RESTARTED = "restarted"  # result key of the first epoch after a restart from epoch 0: why
RUN_DIR = "run"  # a trial's run directory, inside its Tune working directory
DISK_FULL = "disk_full"  # the status of a trial's last result when it could not write for want of space
FULL_PATH = "full_path"  # ... and the file it could not write, where the error named one


def run_key(config: dict[str, Any]) -> str:
    """A run's name in the study's record of checkpoints: its Optuna trial's number (a search trial, a re-run), or
    its directory under final/ (a final run: seed-<s>, or baseline/seed-<s> for the seed recipe's)."""
    if "trial_id" in config:
        return str(config["trial_id"])
    return str(config["run"]) if "run" in config else f"seed-{config.get('seed')}"


def run_recipe(params: dict[str, Any], *, base: dict[str, Any], threads: int, out_dir: str | None = None,
               final: bool = False, settings: dict[int, dict[str, float]] | None = None,
               runs: dict[str, dict[str, Any]] | None = None, checkpoints: dict[str, str] | None = None) -> None:
    """Train `base` with the sampled `params`, reporting each epoch's metrics and checkpoint.

    A search trial's params are its settings and its Optuna number ("trial_id"). A re-validation run's are
    {"trial_id": n, "seed": s}: trial n's settings (from `settings`) with seed s. A final run's are {"run": name}:
    that run's settings and seed (from `runs`); with `out_dir` its run directory is out_dir/<name> (seed-<s>, or
    baseline/seed-<s>). A run continues from Tune's checkpoint of it (a retry), else from the one `checkpoints`
    names for it (run_key: a run a resumed study continues).
    """
    import torch  # here: the driver imports this module to hand Tune the trainable, and trains nothing itself

    from recipe.train import train

    torch.set_num_threads(threads)
    recorded = (checkpoints or {}).get(run_key(params))
    name = params.get("run")
    if settings is not None:
        params = {**settings[int(params["trial_id"])], "seed": params["seed"]}
    if runs is not None:
        params = runs[name]
    params = {k: v for k, v in params.items() if k not in ("trial_id", "run")}
    config = RecipeConfig.from_dict({**base, **params})
    run_dir = Path(out_dir) / (name or f"seed-{config.seed}") if out_dir else Path.cwd() / RUN_DIR
    last = run_dir / "checkpoints" / CHECKPOINT_FILE
    checkpoint = tune.get_checkpoint() or (tune.Checkpoint(recorded) if recorded else None)
    source, missing = str(last), ""
    if final and last.is_file():
        resume = True  # the final run's own directory on this machine: at least as new as Tune's copy
    elif checkpoint is not None:
        source = f"{checkpoint.path}/{CHECKPOINT_FILE}"
        # A trial resumes from what Tune (and so Optuna) has seen, never from a later local file.
        try:  # straight from Tune's storage (a local disk, a cluster's shared one, s3://...) into the run directory
            with checkpoint.filesystem.open_input_stream(source) as src:
                atomic_write(last, lambda dst: shutil.copyfileobj(src, dst, 1 << 20))
            resume = True
        except FileNotFoundError:
            missing = "not there"
            resume = False
    else:
        resume = False
    if not resume:
        last.unlink(missing_ok=True)  # left by an attempt that crashed before its first report

    restarted: list[str] = []  # the reason, until the first report after a restart carries it

    def restart(why: str) -> None:
        restarted.append(f"its checkpoint {source} could not be used ({why}); restarted from epoch 0")
        print(restarted[0], file=sys.stderr, flush=True)  # the trial's worker log

    last_metrics: dict[str, Any] = {}

    def report(metrics: dict[str, Any], path: Path | None) -> None:
        if restarted:
            metrics = {**metrics, RESTARTED: restarted.pop()}
        last_metrics.clear()
        last_metrics.update(metrics)
        if path is None:  # a diverged epoch: nothing worth resuming from
            tune.report(metrics)
            return
        try:
            with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
                # A hard link hands Tune the file without copying 170 MB; Tune persists its own copy.
                os.link(path, Path(tmp) / CHECKPOINT_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        finally:
            # Also when ASHA stops the trial: tune.report then ends the training thread.
            if not final:
                path.unlink(missing_ok=True)

    if missing:
        restart(missing)
    try:
        try:
            train(config, run_dir, resume=resume, callback=report, curves=final, keep_best=final)
        except CheckpointError as e:  # raised before the first epoch, by the load of last.pt
            if not resume:
                raise
            why = str(e).removeprefix(f"{last}: ").split(". ")[0][:200]  # torch's reason runs on for lines
            restart(why + ")" * (why.count("(") - why.count(")")))
            last.unlink(missing_ok=True)
            train(config, run_dir, resume=False, callback=report, curves=final, keep_best=final)
    except Exception as e:
        if final or not is_disk_full(e):
            raise  # the final run is retried, and then resumed with the study
        # A retry would meet the same full disk: the trial ends here, and the searcher tells Optuna it
        # failed, with this reason. The last epoch's figures again (Tune wants the metric in every
        # result; ASHA and Optuna have them already), or none if no epoch ended.
        tune.report({**(last_metrics or {"epoch": 0, "eval_acc": float("nan"), "eval_loss": float("nan")}),
                     "status": DISK_FULL, "reason": f"disk full: {one_line(e)}", FULL_PATH: unwritten(e)})


def unwritten(error: BaseException | None) -> str | None:
    """The file a disk-full error could not write, from whichever layer names it (None where none does)."""
    while error is not None:
        if isinstance(error, DiskFullError):
            return str(error.path)
        if isinstance(error, OSError) and error.filename:
            return str(error.filename)
        error = error.__cause__ or error.__context__
    return None

