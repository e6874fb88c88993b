"""RecipeConfig: every setting of the seed recipe in one flat, validated, JSON-serialisable place.

The defaults are the seed recipe: ResNet34 (width 64), 250 epochs, batch 128, SGD with
Nesterov momentum 0.9, OneCycle peaking at lr 0.1 (10% warm-up, from max_lr/10 down to
max_lr/100), weight decay 5e-4, label smoothing 0.1, dropout 0.2, gradient clipping at 1.0,
random crop (padding 4), horizontal flip and random erasing (p=0.5).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# CIFAR-100 training-set channel statistics (the published figures; ../shared/data checks them).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
NUM_CLASSES = 100
# The settings a study searches; every other setting is fixed by the recipe or the study.
SEARCHED = ("lr", "weight_decay", "dropout", "label_smoothing")
# The largest seed a run takes: torch.manual_seed and numpy's int64 arrays hold no more (a larger one crashed a
# run after its config.json was written).
MAX_SEED = 2**63 - 1

PIPELINES = ("fast", "classic")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "bf16", "fp16", "off")
SWITCHES = ("auto", "on", "off")
# torch.compile's modes for the training step; "off" trains eagerly. reduce-overhead replays the
# step as CUDA graphs (on CUDA; elsewhere it compiles like default).
COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs", "reduce-overhead")


class RecipeError(Exception):
    """Bad input from a user: the message is one line saying what is wrong and what would be right."""


class ConfigError(RecipeError, ValueError):
    """A setting is invalid; the message names the field and what would be valid."""


def _f(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class RecipeConfig:
    # Schedule and optimiser.
    epochs: int = _f(250, "training epochs; the OneCycle schedule spans exactly these")
    batch_size: int = _f(128, "images per optimiser step")
    lr: float = _f(0.1, "peak learning rate of the OneCycle schedule (max_lr)")
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(True, "use Nesterov momentum")
    weight_decay: float = _f(5e-4, "L2 weight decay of SGD")
    label_smoothing: float = _f(0.1, "label smoothing of the training loss, in [0, 1)")
    pct_start: float = _f(0.1, "fraction of the steps spent warming up to the peak lr")
    div_factor: float = _f(10.0, "the schedule starts at lr / div_factor")
    final_div_factor: float = _f(
        10.0, "the schedule ends at lr / div_factor / final_div_factor (max_lr/100 by default)"
    )
    cycle_momentum: bool = _f(False, "cycle momentum inversely to the lr (PyTorch's default; off in the seed)")
    grad_clip: float = _f(1.0, "clip the gradient's global norm to this value (0 turns clipping off)")
    # Model.
    width: int = _f(64, "channels of the first stage (64 is ResNet34; tests use fewer)")
    dropout: float = _f(0.2, "dropout probability before the classifier, in [0, 1)")
    # Augmentation.
    erasing_p: float = _f(0.5, "probability of random erasing per image")
    # Data.
    data: str = _f("cifar100", "'cifar100' (torchvision, from data_dir), a path to a .npz of arrays, or 'synthetic'")
    data_dir: str = _f("data", "where torchvision's CIFAR-100 lives (or is downloaded to)")
    download: bool = _f(False, "download CIFAR-100 into data_dir if it is missing")
    subset: int = _f(0, "use only this many training images, stratified (0: all)")
    eval_subset: int = _f(0, "use only this many test images, stratified (0: all)")
    val_size: int = _f(
        0, "hold out this many training images (stratified, seeded) as the evaluation set; 0 evaluates on the test set"
    )
    seed: int = _f(0, "seed of every random choice: split, init, order, augmentation, dropout")
    split_seed: int = _f(
        -1, "seed of the validation split and the test subset alone (-1: seed); runs that differ only in seed "
        "then score on the same images"
    )
    # Execution.
    device: str = _f("auto", "'auto' (cuda if available), 'cpu' or 'cuda'")
    pipeline: str = _f("fast", "'fast' (dataset on the device, batched augmentation) or 'classic' (DataLoader)")
    workers: int = _f(4, "DataLoader worker processes of the classic pipeline")
    amp: str = _f("auto", "autocast: 'auto' (bf16 on CUDA, off on CPU), 'bf16', 'fp16' (with a grad scaler) or 'off'")
    channels_last: str = _f("auto", "channels_last memory format: 'auto' (on: faster on CUDA and on a CPU), 'on' or 'off'")
    compile: str = _f(
        "off", "torch.compile the training step: 'off', 'default', 'max-autotune-no-cudagraphs' or 'reduce-overhead' "
        "(CUDA graphs); --compile alone is 'default'"
    )

    def __post_init__(self) -> None:
        if isinstance(self.compile, bool):  # config.json and checkpoints from before compile had modes
            object.__setattr__(self, "compile", "default" if self.compile else "off")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "bool": bool, "str": str}[f.type]
            ok = isinstance(value, expected) and not (f.type in ("int", "float") and isinstance(value, bool))
            if not ok:
                raise ConfigError(f"{f.name}: expected {f.type}, got {value!r}")
            if f.type == "float":
                if not math.isfinite(value):
                    raise ConfigError(f"{f.name}: must be a finite number, got {value!r}")
                object.__setattr__(self, f.name, float(value))
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("nesterov", not (self.nesterov and self.momentum == 0), "Nesterov needs momentum > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "must be in [0, 1)"),
            ("pct_start", 0 < self.pct_start < 1, "must be in (0, 1)"),
            ("div_factor", self.div_factor > 0, "must be > 0"),
            ("final_div_factor", self.final_div_factor > 0, "must be > 0"),
            ("grad_clip", self.grad_clip >= 0, "must be >= 0 (0 turns clipping off)"),
            ("width", self.width >= 1, "must be >= 1"),
            ("dropout", 0 <= self.dropout < 1, "must be in [0, 1)"),
            ("erasing_p", 0 <= self.erasing_p <= 1, "must be in [0, 1]"),
            ("data", self.data != "", "must be 'cifar100', 'synthetic' or a path to a .npz file"),
            ("subset", self.subset >= 0, "must be >= 0 (0: all training images)"),
            ("eval_subset", self.eval_subset >= 0, "must be >= 0 (0: all test images)"),
            ("val_size", self.val_size >= 0, "must be >= 0"),
            ("seed", 0 <= self.seed <= MAX_SEED, f"must be in [0, {MAX_SEED}]"),
            ("split_seed", -1 <= self.split_seed <= MAX_SEED, f"must be in [0, {MAX_SEED}], or -1 for the run's seed"),
            ("device", self.device in DEVICES, f"must be one of {', '.join(DEVICES)}"),
            ("pipeline", self.pipeline in PIPELINES, f"must be one of {', '.join(PIPELINES)}"),
            ("workers", self.workers >= 0, "must be >= 0"),
            ("amp", self.amp in AMP_MODES, f"must be one of {', '.join(AMP_MODES)}"),
            ("channels_last", self.channels_last in SWITCHES, f"must be one of {', '.join(SWITCHES)}"),
            ("compile", self.compile in COMPILE_MODES, f"must be one of {', '.join(COMPILE_MODES)}"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"{name}: {rule}, got {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> "RecipeConfig":
        """A copy with some settings changed (validated; unknown names are an error)."""
        return RecipeConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RecipeConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: not a recipe setting (known: {', '.join(sorted(known))})")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RecipeConfig":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config: not valid JSON ({e})") from None
        if not isinstance(values, dict):
            raise ConfigError("config: expected a JSON object of settings")
        return cls.from_dict(values)

    @classmethod
    def load(cls, path: str | Path) -> "RecipeConfig":
        return cls.from_json(Path(path).read_text())


def steps_per_epoch(config: RecipeConfig, train_images: int) -> int:
    return math.ceil(train_images / config.batch_size)


def check_schedule(config: RecipeConfig, steps: int) -> None:
    # torch's OneCycleLR divides by (warm-up steps - 1): a warm-up of exactly one step is a crash.
    if float(config.pct_start * steps) - 1 == 0:
        raise ConfigError(
            f"epochs: OneCycle cannot warm up over exactly 1 step (pct_start {config.pct_start:g} x {steps} steps); "
            f"change the epochs, the training images or the batch size"
        )


# Settings that may differ between a run and its resumption: they change where or how fast
# the run goes, not what it computes; but amp and channels_last "auto" follow the device, so a
# run resumed on another kind of device (CPU to CUDA) goes on in that device's precision.
RESUME_MAY_DIFFER = frozenset({"device", "data_dir", "download", "workers", "compile"})

