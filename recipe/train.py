"""train(config, out_dir): the fixed recipe, top to bottom; and its CLI, python -m recipe.train.

A run directory holds config.json, metrics.csv (a row per epoch), summary.json, curves.html
and checkpoints/last.pt (everything needed to resume) and checkpoints/best.pt (the model
with the best evaluation accuracy so far).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

try:  # only for the progress bar on a terminal: training needs no more than torch and torchvision
    from tqdm import tqdm
except ImportError:
    tqdm = None

from recipe import checkpoint
from recipe.checkpoint import CheckpointError, DiskFullError, unwritable_reason
from recipe.cli import Parser, add_config_flags, fail, given_settings
from recipe.config import (RESUME_MAY_DIFFER, SEARCHED, ConfigError, RecipeConfig, RecipeError, check_schedule,
                           steps_per_epoch)
from recipe.data import cifar100_present, load_splits
from recipe.engine import DeviceData, LoaderData, TrainStep, evaluate, train_epoch
from recipe.model import ResNet34

METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "eval_loss", "eval_acc", "epoch_time_s", "images_per_s")

EpochCallback = Callable[[dict[str, Any], "Path | None"], None]


class RunDirError(RecipeError):
    """The output directory cannot be used as asked."""


def resolve_device(config: RecipeConfig) -> torch.device:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' asked for, but torch sees no CUDA device (use --device cpu or auto)")
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def tune_backends(device: torch.device) -> None:
    """On CUDA, cuDNN times its algorithms once per convolution shape and keeps the fastest.

    +40% training throughput on an H100 (docs/benchmarks/h100-2026-11-27.md); a run sees few
    shapes (the batch, an epoch's last smaller batch, evaluation's), so the timing is paid once.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def amp_dtype(config: RecipeConfig, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on a GPU that does it natively (Ampere and later), fp16 on older ones, off on a CPU."""
    mode = config.amp
    if mode == "auto":
        if device.type != "cuda":
            mode = "off"
        else:
            mode = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[mode]


def use_channels_last(config: RecipeConfig, device: torch.device) -> bool:
    """auto: on, on CUDA and on a CPU alike.

    On a CPU, oneDNN's convolutions are faster on NHWC too: a training step of width 8 at batch 32 on one thread
    took 26% less time with AVX-512 kernels and 36% less with AVX2 ones (an Intel Xeon, torch 2.14).
    """
    return config.channels_last in ("on", "auto")


def make_optimizer(model: nn.Module, config: RecipeConfig, device: torch.device | None = None) -> torch.optim.SGD:
    """SGD, with fused kernels on CUDA (one launch for all parameters; elsewhere torch's default).

    Not fused under fp16: fused SGD takes a step the GradScaler skips (an overflow, common in the first
    steps) as a step, and on the first one leaves its momentum buffers as torch.empty_like made them,
    so training goes on from uninitialised memory. torch's default there (foreach) skips it whole.
    """
    fused = device is not None and device.type == "cuda" and amp_dtype(config, device) != torch.float16
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
        weight_decay=config.weight_decay, fused=fused or None,
    )


def make_scheduler(optimizer: torch.optim.Optimizer, config: RecipeConfig, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycle over all `steps` of the run, stepped every batch.

    Built from the run's full length (never from a rung of a search), so two runs with the
    same epochs are at the same point of the same schedule at every epoch.
    """
    check_schedule(config, steps)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=steps, pct_start=config.pct_start,
        div_factor=config.div_factor, final_div_factor=config.final_div_factor, cycle_momentum=config.cycle_momentum,
    )


def plotly_available() -> bool:
    """Whether curves.html can be drawn: plotly is the one package training can do without."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        return False
    return True


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def make_step(model: nn.Module, config: RecipeConfig, device: torch.device, total_steps: int, *,
              state: dict[str, Any] | None = None, compile_backend: str = "inductor") -> TrainStep:
    """The training step of the recipe for `model`: SGD, OneCycle over total_steps, the loss, autocast;
    with the optimizer, schedule and scaler of a checkpoint's `state` when resuming."""
    dtype = amp_dtype(config, device)
    optimizer = make_optimizer(model, config, device)
    scheduler = make_scheduler(optimizer, config, total_steps)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    if state is not None:
        # A checkpoint's param groups carry the kernels of the device that wrote it (fused or not); a run
        # resumed on another device keeps this one's, as fused SGD with a GradScaler must match its construction.
        kernels = {k: optimizer.param_groups[0][k] for k in ("fused", "foreach")}
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            group.update(kernels)
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    return TrainStep(model, optimizer, scheduler, nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
                     device=device, amp_dtype=dtype, scaler=scaler, grad_clip=config.grad_clip, mode=config.compile,
                     backend=compile_backend)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    checkpoint.write_text(path, buf.getvalue())


def resolved(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as a run uses them: split_seed -1 is the run's seed."""
    split = settings.get("split_seed", -1)
    return {**settings, "split_seed": settings.get("seed") if split is None or split < 0 else split}


def check_resumable(state: dict[str, Any], config: RecipeConfig, path: Path) -> None:
    if state.get("kind") != "last":
        raise CheckpointError(f"{path}: holds a {state.get('kind')!r} model, not a resumable run state")
    # A setting added since the run started takes its default (what the run did); the split seed compares as used.
    saved, now = resolved({**RecipeConfig().to_dict(), **state["config"]}), resolved(config.to_dict())
    for name, value in now.items():
        if name not in RESUME_MAY_DIFFER and saved.get(name) != value:
            raise CheckpointError(
                f"{path}: the run was started with {name}={saved.get(name)!r}, not {value!r}; "
                f"resume with the same settings, or start a new run in another --out"
            )


def train(
    config: RecipeConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    callback: EpochCallback | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    curves: bool = True,
    keep_best: bool = True,
    compile_backend: str = "inductor",
) -> dict[str, Any]:
    """Train the recipe as `config` says and write the run into `out_dir`; return the summary.

    After every epoch, `callback(metrics, last_checkpoint_path)` is called with that epoch's
    metrics (plus "status") once its checkpoint is on disk; the path is None for an epoch that
    diverged, which is not checkpointed. With resume=True the run continues from
    out_dir/checkpoints/last.pt with the same random streams (data order, augmentation, dropout): on a
    CPU it ends exactly where an uninterrupted run would; on CUDA, within what cuDNN's nondeterministic
    kernels (autotuned convolutions, pooling's backward) leave between two uninterrupted runs. Bad input
    raises a RecipeError before anything is written. curves=False skips curves.html and
    keep_best=False skips checkpoints/best.pt (a search's trials need neither). compile_backend is
    torch.compile's backend where config.compile asks for compilation (tests use "aot_eager").
    A full disk raises DiskFullError with every file as it was before that write: resume=True
    continues once space is freed.
    """
    out = Path(out_dir)
    unwritable = unwritable_reason(out)
    if unwritable:
        raise RunDirError(f"{out}: cannot write there ({unwritable}); choose another --out")
    ckpt_dir = out / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    device = resolve_device(config)
    state = None
    if resume:
        if not last_path.exists():
            raise RunDirError(f"{out}: nothing to resume (no checkpoints/last.pt); start the run without --resume")
        state = checkpoint.load(last_path, map_location=device)
        check_resumable(state, config, last_path)
    elif last_path.exists():
        raise RunDirError(f"{out}: holds a run already; add --resume to continue it, or choose another --out")
    splits = load_splits(config)  # its sizes and schedule checked (check_sizes) before anything is written
    steps = steps_per_epoch(config, len(splits.train))
    try:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(out / "config.json", config.to_json() + "\n")
    except OSError as e:
        raise RunDirError(f"{out}: cannot write there ({e.strerror or e})") from None

    if log:
        log(f"run directory: {out}; {len(splits.train)} training images, {len(splits.eval)} {splits.eval_name} images, "
            f"{device_name(device)}, {config.pipeline} pipeline" + (f", resuming after epoch {state['epoch']}" if state else ""))
    torch.manual_seed(config.seed)
    tune_backends(device)
    channels_last = use_channels_last(config, device)
    dtype = amp_dtype(config, device)
    model = ResNet34(width=config.width, dropout=config.dropout).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    if config.pipeline == "fast":
        train_data, eval_data = DeviceData(splits.train, device, channels_last), DeviceData(splits.eval, device, channels_last)
        train_batches = lambda: train_data.train_batches(config.batch_size, config.erasing_p)  # noqa: E731
        eval_batches = lambda: eval_data.eval_batches(4 * config.batch_size)  # noqa: E731
    else:
        train_loader = LoaderData(splits.train, device, config.workers, True, config.batch_size, config.erasing_p, channels_last)
        eval_loader = LoaderData(splits.eval, device, config.workers, False, 4 * config.batch_size, 0.0, channels_last)
        train_batches, eval_batches = (lambda: train_loader), (lambda: eval_loader)

    history: list[dict[str, Any]] = []
    best_acc, best_epoch, wall_before = -1.0, 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
        history = list(state["history"])
        best_acc, best_epoch, wall_before = state["best_acc"], state["best_epoch"], state["wall_time_s"]
    step = make_step(model, config, device, config.epochs * steps, state=state, compile_backend=compile_backend)

    if curves and not plotly_available():
        (log or _stderr)("plotly is not installed: curves.html is skipped (pip install plotly to draw it)")
        curves = False
    title = f"{out.name}: ResNet34 (width {config.width}), lr {config.lr:g}, wd {config.weight_decay:g}"

    def summary(status: str, wall: float) -> dict[str, Any]:
        last = history[-1] if history else {}
        return {
            "status": status,
            "epochs": config.epochs,
            "epochs_run": len(history),
            "eval_set": splits.eval_name,
            "train_images": len(splits.train),
            "eval_images": len(splits.eval),
            "final_eval_acc": last.get("eval_acc"),
            "final_eval_loss": last.get("eval_loss"),
            "best_eval_acc": best_acc if best_epoch else None,
            "best_epoch": best_epoch or None,
            "wall_time_s": wall,
            "torch_version": torch.__version__,
            "device": device_name(device),
            "git_commit": git_commit(),
            "config": config.to_dict(),
        }

    def finish(status: str, wall: float) -> dict[str, Any]:
        result = summary(status, wall)
        checkpoint.write_json(out / "summary.json", result)
        if curves and history:
            from recipe.curves import write_run_curves

            write_run_curves(history, out / "curves.html", title, splits.eval_name)
        return result

    start = time.perf_counter()
    wall = lambda: wall_before + time.perf_counter() - start  # noqa: E731
    status = "running"
    bar = None
    try:
        for epoch in range(len(history) + 1, config.epochs + 1):
            if progress and tqdm is not None:
                bar = tqdm(total=steps, desc=f"epoch {epoch}/{config.epochs}", leave=False, unit="step")
            t0 = time.perf_counter()
            result = train_epoch(step, train_batches(), device=device, on_step=bar.update if bar else None)
            t_train = time.perf_counter() - t0
            if bar is not None:
                bar.close()
            if result.diverged:
                eval_loss = eval_acc = float("nan")
            else:
                eval_loss, eval_acc = evaluate(model, eval_batches(), device=device, amp_dtype=dtype)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the seed's cache clearing, once per epoch, outside the step loop
            row = {
                "epoch": epoch,
                "lr": step.optimizer.param_groups[0]["lr"],
                "train_loss": result.loss,
                "train_acc": result.acc,
                "eval_loss": eval_loss,
                "eval_acc": eval_acc,
                "epoch_time_s": time.perf_counter() - t0,
                "images_per_s": result.images / t_train,
            }
            history.append(row)
            if result.diverged:
                write_metrics_csv(out / "metrics.csv", history)
                status = "diverged"
                if log:
                    log(f"epoch {epoch}: the training loss is not finite; the run diverged and stops here")
                if callback:
                    callback({**row, "status": status}, None)
                break
            if eval_acc > best_acc:
                best_acc, best_epoch = eval_acc, epoch
                if keep_best:
                    checkpoint.save(best_path, {"kind": "best", "config": config.to_dict(), "epoch": epoch,
                                                "eval_acc": eval_acc, "model": model.state_dict()})
            checkpoint.save(last_path, {
                "kind": "last",
                "config": config.to_dict(),
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": step.optimizer.state_dict(),
                "scheduler": step.scheduler.state_dict(),
                "scaler": step.scaler.state_dict() if step.scaler is not None else {},
                # The training device's generator only: a resume may see another number of GPUs.
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                "history": history,
                "best_acc": best_acc,
                "best_epoch": best_epoch,
                "wall_time_s": wall(),
            })
            # After the checkpoint, which holds the history too: an interruption between the two
            # leaves metrics.csv an epoch behind, and a resume rewrites it.
            write_metrics_csv(out / "metrics.csv", history)
            status = "completed" if epoch == config.epochs else "running"
            checkpoint.write_json(out / "summary.json", summary(status, wall()))
            if log:
                log(
                    f"epoch {epoch:>3}/{config.epochs}  lr {row['lr']:.4g}  train loss {row['train_loss']:.4f} "
                    f"acc {100 * row['train_acc']:5.2f}%  {splits.eval_name} loss {eval_loss:.4f} "
                    f"acc {100 * eval_acc:5.2f}%  {row['epoch_time_s']:.1f}s  {row['images_per_s']:.0f} img/s"
                )
            if callback:
                callback({**row, "status": status}, last_path)
        else:
            status = "completed"
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        finish("interrupted", wall())
        raise
    return finish(status, wall())



def planned_trials(study_dir: Path) -> int | None:
    """The trials a study's search ends with (its spec.json's), at least as many as its trials.csv lists; None
    where spec.json does not say."""
    try:
        trials = json.loads((study_dir / "spec.json").read_text()).get("trials")
    except (OSError, ValueError, AttributeError):
        return None
    return trials if isinstance(trials, int) else None


def config_from_study(results_dir: str | Path, study: str | None, which: str) -> tuple[RecipeConfig, str, Path]:
    """The final run's config of a study: its best trial's ('best'), the seed recipe's ('baseline': the study's
    baseline runs) or a given trial's settings.

    Reads results/<study>/best.json, which the search writes with the full final-run config and the seed recipe's
    settings; for a trial id, that config with the trial's sampled settings from trials.csv instead.
    Returns the config, a sentence saying what was taken, and the study's directory.
    """
    root = Path(results_dir)
    if study is None:
        found = sorted(root.glob("*/best.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise RecipeError(f"{root}/: no finished study (no */best.json); run python -m search.run first")
        study_dir = found[-1].parent
    else:
        study_dir = root / study
    best_path = study_dir / "best.json"
    if not best_path.is_file():
        raise RecipeError(f"{best_path}: no such file; has study {study_dir.name!r} finished its search?")
    try:
        best = json.loads(best_path.read_text())
        base = RecipeConfig.from_dict(best["final_config"])
        taken = f"study {study_dir.name!r}, best trial {best['trial_id']} (value {float(best['value']):.4f})"
    except (ValueError, KeyError, TypeError) as e:
        raise RecipeError(f"{best_path}: not a best.json written by search.run ({e})") from None
    if which == "best":
        return base, taken, study_dir
    if which == "baseline":
        if not isinstance(best.get("baseline_params"), dict):  # a study from before baseline runs: trial 0 is the seed
            config, _, _ = config_from_study(results_dir, study_dir.name, "0")
        else:
            try:
                config = base.replace(**{name: float(best["baseline_params"][name]) for name in SEARCHED})
            except (KeyError, TypeError, ValueError) as e:
                raise RecipeError(f"{best_path}: not a best.json written by search.run ({e})") from None
        return config, f"study {study_dir.name!r}, the seed recipe (the baseline, trial 0's settings)", study_dir
    trials_path = study_dir / "trials.csv"
    if not trials_path.is_file():
        raise RecipeError(f"{trials_path}: no such file; --from-study TRIAL_ID reads the trials of a finished search")
    try:
        with open(trials_path, newline="", encoding="utf-8") as f:
            listed = list(csv.DictReader(f))
        if any(None in row or None in row.values() for row in listed):
            raise ValueError("a row is cut short")
        rows = {row["trial_id"]: row for row in listed}
        if which not in rows:
            planned = planned_trials(study_dir)
            if planned is not None and len(listed) < planned:  # cut at a line's end: every row left reads
                raise ValueError(f"{len(listed)} rows, of the {planned} trials a search ends with")
            known = ", ".join(sorted(rows)) or "none"
            raise RecipeError(f"--from-study: no trial {which!r} in {trials_path} (trials: {known})")
        row = rows[which]
        settings = {name: float(row[name]) for name in SEARCHED}
    except (KeyError, TypeError, ValueError, csv.Error) as e:  # cut short: a row or a column missing
        raise RecipeError(f"{trials_path}: damaged ({type(e).__name__}: {e}); python -m search.report --study "
                          f"{shlex.quote(study_dir.name)} --results-dir {shlex.quote(str(root))} rebuilds it from the "
                          f"study's optuna.db") from None
    config = base.replace(**settings)
    return config, f"study {study_dir.name!r}, trial {which} ({row['state']}, value {row['value'] or 'none'})", study_dir


def resume_command(out: Path) -> str:
    """The command that continues the run in `out`, as it can be pasted into a shell (a path with spaces quoted)."""
    return f"python -m recipe.train --out {shlex.quote(str(out))} --resume"


def stop_as_ctrl_c(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """python -m recipe.train; SIGTERM (a scheduler's stop) stops the run as Ctrl-C does: exit 130 and the hint."""
    before = signal.signal(signal.SIGTERM, stop_as_ctrl_c)
    try:
        return run_main(argv)
    finally:
        signal.signal(signal.SIGTERM, before)


def run_main(argv: list[str] | None) -> int:
    parser = Parser(
        prog="python -m recipe.train",
        description="Train the fixed ResNet34 recipe on CIFAR-100 (or a .npz of arrays, or synthetic data). "
        "Every setting defaults to the seed recipe.",
    )
    add_config_flags(parser)
    run = parser.add_argument_group("run")
    run.add_argument("--out", help="run directory (default: results/runs/<date-time>; with --from-study: "
                                   "results/<study>/<best|baseline|TRIAL_ID>-<date-time>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last checkpoint, with the settings in its config.json")
    run.add_argument("--from-study", metavar="best|baseline|TRIAL_ID",
                     help="take the settings of a study's final run: its best trial, the seed recipe (its baseline "
                          "runs), or the trial with this id; any other flag given overrides that one setting")
    run.add_argument("--study", help="with --from-study: the study's name (default: the newest finished study)")
    run.add_argument("--results-dir", default="results", help="with --from-study: where studies live (default: results)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a progress bar per epoch (default: when stderr is a terminal)")
    args = parser.parse_args(argv)
    if args.study and not args.from_study:
        parser.error("--study goes with --from-study")
    if args.resume and not args.out:
        parser.error("--resume needs --out, the run directory to continue")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: Path | None = None  # a Ctrl-C may come before the run directory is known
    try:
        given = given_settings(args)
        if args.from_study:
            base, taken, study_dir = config_from_study(args.results_dir, args.study, args.from_study)
            config = base.replace(**given)
            out = Path(args.out or study_dir / f"{args.from_study}-{stamp}")
            print(f"from {taken}: {', '.join(f'{k}={getattr(config, k):g}' for k in SEARCHED)}"
                  + (f"; overridden: {', '.join(sorted(given))}" if given else ""))
        elif args.resume and (Path(args.out) / "config.json").is_file():
            # The run's own settings; any flag given must agree with them (train() checks).
            config = RecipeConfig.load(Path(args.out) / "config.json").replace(**given)
            out = Path(args.out)
        else:
            config = RecipeConfig.from_dict(given)
            out = Path(args.out or Path("results") / "runs" / stamp)
        if config.data == "cifar100" and not config.download and not cifar100_present(config.data_dir) and sys.stdin.isatty():
            answer = input(f"CIFAR-100 is not in {config.data_dir}/. Download it now (about 170 MB)? [y/N] ")
            if answer.strip().lower() in ("y", "yes"):
                config = config.replace(download=True)
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        summary = train(config, out, resume=args.resume, log=print, progress=progress)
    except RecipeError as e:
        fail(str(e))
    except DiskFullError as e:
        then = (f"continue with: {resume_command(out)}" if (out / "checkpoints" / "last.pt").exists()
                else "run the same command again")
        print(f"error: {e}; free space, then {then}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if out is not None and (out / "checkpoints" / "last.pt").exists():
            print(f"\ninterrupted; continue with: {resume_command(out)}", file=sys.stderr)
        else:
            print("\ninterrupted; no epoch had ended, so there is nothing to resume: run the same command again",
                  file=sys.stderr)
        return 130
    best = summary["best_eval_acc"]
    print(
        f"{summary['status']}: {summary['epochs_run']}/{summary['epochs']} epochs, final {summary['eval_set']} accuracy "
        f"{100 * (summary['final_eval_acc'] or 0):.2f}%, best {100 * (best or 0):.2f}% (epoch {summary['best_epoch']}), "
        f"{summary['wall_time_s']:.0f}s" + (f"; curves: {out / 'curves.html'}" if (out / "curves.html").exists() else "")
    )
    return 0 if summary["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
