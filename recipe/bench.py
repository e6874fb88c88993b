"""Training throughput: the model step alone, the fast path and the classic path.

python -m recipe.bench [--width 64] [--batch-size 128] [--steps N] [--device auto] [--json PATH]

Each path runs the trainer's own step (engine.train_epoch: forward, loss, backward, clipping,
SGD, OneCycle) on synthetic CIFAR-shaped data after a warm-up, timed between two device
synchronisations. "model step" feeds one batch that already sits on the device, normalised,
so it is the ceiling the two data paths are measured against.
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from recipe.checkpoint import write_json
from recipe.cli import Parser, add_config_flags, fail, given_settings
from recipe.config import RecipeConfig, RecipeError
from recipe.data import Arrays, synthetic
from recipe.engine import DeviceData, LoaderData, train_epoch
from recipe.model import ResNet34
from recipe.train import amp_dtype, device_name, make_optimizer, make_scheduler, resolve_device, tune_backends, use_channels_last


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forever(make_epoch) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from make_epoch()


def run(config: RecipeConfig, steps: int, warmup: int) -> dict:
    """Images per second of each path, with the setup `config` describes."""
    device = resolve_device(config)
    tune_backends(device)
    channels_last = use_channels_last(config, device)
    dtype = amp_dtype(config, device)
    train, _ = synthetic()
    needed = (steps + warmup) * config.batch_size
    reps = -(-needed // len(train))
    arrays = Arrays(train.x.repeat(reps, 0)[:needed], train.y.repeat(reps, 0)[:needed]) if reps > 1 else train
    torch.manual_seed(config.seed)

    fast = DeviceData(arrays, device, channels_last)
    classic = LoaderData(arrays, device, config.workers, True, config.batch_size, config.erasing_p, channels_last)
    x0, y0 = next(fast.train_batches(config.batch_size, config.erasing_p))
    paths = {
        "model step": lambda: itertools.repeat((x0, y0)),
        "fast path": lambda: _forever(lambda: fast.train_batches(config.batch_size, config.erasing_p)),
        "classic path": lambda: _forever(lambda: iter(classic)),
    }
    results = []
    for name, batches in paths.items():
        model = ResNet34(width=config.width, dropout=config.dropout).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        step_model = torch.compile(model) if config.compile else model
        optimizer = make_optimizer(model, config)
        scheduler = make_scheduler(optimizer, config, steps + warmup)
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        source = batches()

        def steps_of(n: int) -> None:
            train_epoch(step_model, itertools.islice(source, n), optimizer, scheduler, loss_fn, device=device,
                        amp_dtype=dtype, scaler=scaler, grad_clip=config.grad_clip)

        steps_of(warmup)
        _sync(device)
        t0 = time.perf_counter()
        steps_of(steps)
        _sync(device)
        seconds = time.perf_counter() - t0
        results.append({"path": name, "images_per_s": steps * config.batch_size / seconds,
                        "ms_per_step": 1000 * seconds / steps})
    for r in results:
        r["vs_model_step"] = r["images_per_s"] / results[0]["images_per_s"]
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "width": config.width,
        "batch_size": config.batch_size,
        "amp": str(dtype).replace("torch.", "") if dtype else "off",
        "channels_last": channels_last,
        "compile": config.compile,
        "workers": config.workers,
        "steps": steps,
        "warmup": warmup,
        "results": results,
    }


def writable(path: Path) -> bool:
    """Whether a file could be created at path: its nearest existing ancestor is a writable directory."""
    if path.is_dir():
        return False
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    return parent.is_dir() and os.access(parent, os.W_OK)


def table(report: dict) -> str:
    lines = [
        f"ResNet34 width {report['width']}, batch {report['batch_size']}, {report['device']}, torch {report['torch']}, "
        f"amp {report['amp']}, channels_last {report['channels_last']}, compile {report['compile']}, "
        f"{report['steps']} timed steps after {report['warmup']}",
        f"{'path':<14}{'images/s':>12}{'ms/step':>10}{'vs model step':>15}",
    ]
    for r in report["results"]:
        lines.append(f"{r['path']:<14}{r['images_per_s']:>12.0f}{r['ms_per_step']:>10.1f}{r['vs_model_step']:>15.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m recipe.bench", description=__doc__.split("\n\n")[0])
    add_config_flags(parser, ["width", "batch_size", "device", "workers", "amp", "channels_last", "compile"],
                     title="setup (the recipe's defaults unless given)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per path (default: 100 on CUDA, 10 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 20 on CUDA, 2 on CPU)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = parser.parse_args(argv)
    try:
        config = RecipeConfig.from_dict(given_settings(args))
        cuda = resolve_device(config).type == "cuda"
    except RecipeError as e:
        fail(str(e))
    if args.json and not writable(Path(args.json)):
        fail(f"--json {args.json}: cannot write there")
    steps = args.steps if args.steps is not None else (100 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 2)
    if steps < 1 or warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    report = run(config, steps, warmup)
    print(table(report))
    print(json.dumps(report))
    if args.json:
        try:
            write_json(args.json, report)
        except OSError as e:
            fail(f"--json {args.json}: cannot write there ({e.strerror or e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
