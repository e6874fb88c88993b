"""CIFAR-100 from torchvision, from a .npz of arrays, or synthetic; stratified seeded splits.

Every source ends as uint8 arrays of shape (N, 32, 32, 3) (HWC, RGB) and int64 labels, so
both pipelines and every test read the same thing.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recipe.checkpoint import unwritable_reason
from recipe.config import NUM_CLASSES, RecipeConfig, RecipeError, check_schedule, steps_per_epoch

SYNTHETIC_TRAIN = 10_000
SYNTHETIC_TEST = 2_000
# The synthetic dataset is one fixed dataset, whatever the run's seed, like a real one.
SYNTHETIC_SEED = 20_240_611


class DataError(RecipeError):
    """The dataset is missing or malformed; the message says how to get a good one."""


@dataclass(frozen=True)
class Arrays:
    x: np.ndarray  # uint8 (N, 32, 32, 3)
    y: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> "Arrays":
        return Arrays(self.x[index], self.y[index])


@dataclass(frozen=True)
class Splits:
    train: Arrays
    eval: Arrays
    eval_name: str  # "val" (held out of the training set) or "test"


@functools.lru_cache(maxsize=2)
def synthetic(n_train: int = SYNTHETIC_TRAIN, n_test: int = SYNTHETIC_TEST) -> tuple[Arrays, Arrays]:
    """A learnable stand-in for CIFAR-100: one smooth colour template per class plus noise.

    Templates are 4x4 colour grids upsampled to 32x32, so a random crop (a shift of at most 4
    pixels) keeps most of a template; per-image noise, contrast and brightness make it a task
    a small network learns in a few epochs rather than at once.
    """
    rng = np.random.default_rng(SYNTHETIC_SEED)
    grids = rng.uniform(0, 1, size=(NUM_CLASSES, 4, 4, 3))
    templates = grids.astype(np.float32).repeat(8, axis=1).repeat(8, axis=2)  # (100, 32, 32, 3)
    # Soften the 8x8 blocks so that edges are not a free give-away of the crop offset.
    k = np.array([1, 2, 3, 2, 1], dtype=np.float32)
    k /= k.sum()
    for axis in (1, 2):
        padded = np.pad(templates, [(2, 2) if a == axis else (0, 0) for a in range(4)], mode="edge")
        templates = sum(w * np.take(padded, np.arange(i, i + 32), axis=axis) for i, w in enumerate(k))

    def make(n: int) -> Arrays:
        y = np.arange(n) % NUM_CLASSES
        rng.shuffle(y)
        contrast = rng.uniform(0.5, 1.0, size=(n, 1, 1, 1)).astype(np.float32)
        brightness = rng.uniform(-0.15, 0.15, size=(n, 1, 1, 1)).astype(np.float32)
        noise = rng.standard_normal(size=(n, 32, 32, 3), dtype=np.float32)
        noise *= 0.1
        # noise + 0.5 + brightness + contrast * (template - 0.5), as 0..255, a few hundred images at a time: the same
        # figures as whole arrays at once, in a third of the time (no temporaries of every image).
        x = np.empty((n, 32, 32, 3), dtype=np.uint8)
        for lo in range(0, n, 256):
            part = slice(lo, lo + 256)
            img = templates[y[part]]
            img -= 0.5
            img *= contrast[part]
            img += 0.5 + brightness[part]
            img += noise[part]
            img *= 255
            x[part] = np.clip(np.rint(img, out=img), 0, 255, out=img)
        y = y.astype(np.int64)
        x.flags.writeable = y.flags.writeable = False  # cached: shared by every caller
        return Arrays(x, y)

    return make(n_train), make(n_test)


def _check(name: str, x: np.ndarray, y: np.ndarray, where: str) -> Arrays:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise DataError(f"{where}: x_{name} must be uint8 of shape (N, 32, 32, 3), got {x.dtype} {x.shape}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: y_{name} must be integer labels of shape ({len(x)},), got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise DataError(f"{where}: y_{name} must hold labels 0-{NUM_CLASSES - 1}")
    return Arrays(np.ascontiguousarray(x), y.astype(np.int64))


def load_npz(path: str | Path) -> tuple[Arrays, Arrays]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a .npz with x_train, y_train, x_test, y_test)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)}; a .npz needs x_train, y_train, x_test, y_test")
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except DataError:
        raise
    except Exception as e:  # zipfile / pickle / format errors all mean the same to a user
        raise DataError(f"{path}: not a readable .npz of arrays ({e})") from None
    return (
        _check("train", arrays["x_train"], arrays["y_train"], str(path)),
        _check("test", arrays["x_test"], arrays["y_test"], str(path)),
    )


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def cifar100_present(data_dir: str | Path) -> bool:
    """Whether torchvision's CIFAR-100 files are in data_dir (present, not verified)."""
    folder = Path(data_dir) / "cifar-100-python"
    return all((folder / name).is_file() for name in ("train", "test", "meta"))


def load_torchvision(data_dir: str | Path, download: bool) -> tuple[Arrays, Arrays]:
    from filelock import FileLock  # a dependency of torch
    from torchvision.datasets import CIFAR100

    folder = Path(data_dir)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"--data-dir {data_dir}: it is a file, not a directory; give the directory that holds "
                        f"(or is to hold) cifar-100-python/")
    unwritable = unwritable_reason(data_dir) if download else None
    if unwritable and not cifar100_present(data_dir):
        raise DataError(f"--data-dir {data_dir}: cannot download CIFAR-100 there ({unwritable}); choose another "
                        f"--data-dir, or put cifar-100-python/ there first")
    if unwritable:  # the data is there: only read, and a read-only data directory is fine for that
        download = False
    out = []
    for train in (True, False):
        try:
            if download:  # runs of a study may start together: one downloads, the others wait
                Path(data_dir).mkdir(parents=True, exist_ok=True)
                with FileLock(str(Path(data_dir) / ".cifar100.lock")):
                    ds = CIFAR100(root=str(data_dir), train=train, download=True)
            else:
                ds = CIFAR100(root=str(data_dir), train=train, download=False)
        except (RuntimeError, OSError) as e:  # OSError: no network, an HTTP error, an unwritable directory
            if download:
                raise DataError(
                    f"CIFAR-100 could not be downloaded into {data_dir}/ ({one_line(e)}): fetch {CIFAR100.url} "
                    f"and unpack it there, or pass --data PATH.npz"
                ) from None
            raise DataError(
                f"CIFAR-100 not found in {data_dir}/ (cifar-100-python/): add --download to fetch it "
                f"(about 170 MB), or pass --data PATH.npz or --data synthetic"
            ) from None
        out.append(_check("train" if train else "test", ds.data, np.asarray(ds.targets), str(data_dir)))
    return out[0], out[1]


def stratified_order(y: np.ndarray, seed: int) -> np.ndarray:
    """All indices, ordered so that every prefix is as class-balanced as possible.

    Within each class the order is a seeded permutation; classes then take turns (in a
    seeded order), so the first n indices hold n // C or n // C + 1 of every class.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    classes, inverse = np.unique(y[perm], return_inverse=True)
    rank = np.empty(len(y), dtype=np.int64)
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        rank[members] = np.arange(len(members))
    class_turn = rng.permutation(len(classes))[inverse]
    return perm[np.lexsort((class_turn, rank))]


def check_data(config: RecipeConfig) -> tuple[int, int]:
    """Raise the error that load_splits(config) (or the schedule built on it) would, now: missing, malformed or too
    small data; return the numbers of training and test images, for check_sizes of other configs on the same data.

    Synthetic data cannot be missing or malformed: only its sizes are checked, without making it (seconds of
    CPU that a study's driver, which trains nothing, would spend on every start).
    """
    if config.data == "synthetic":
        sizes = SYNTHETIC_TRAIN, SYNTHETIC_TEST
    else:
        train, test = load_source(config)
        sizes = len(train), len(test)
    check_sizes(config, *sizes)
    return sizes


def check_sizes(config: RecipeConfig, n_train: int, n_test: int) -> None:
    """The config's split sizes against the data's numbers of training and test images, and its schedule's
    number of steps (torch's OneCycle cannot warm up over exactly one)."""
    if config.val_size + config.subset > n_train:
        raise DataError(f"val_size ({config.val_size}) + subset ({config.subset}) exceed the {n_train} training images")
    if not config.val_size and config.eval_subset > n_test:
        raise DataError(f"eval_subset ({config.eval_subset}) exceeds the {n_test} test images")
    if config.val_size >= n_train:
        raise DataError(f"val_size ({config.val_size}) leaves no training images of the {n_train}")
    images = n_train - config.val_size
    check_schedule(config, config.epochs * steps_per_epoch(config, min(config.subset, images) if config.subset else images))


def load_source(config: RecipeConfig) -> tuple[Arrays, Arrays]:
    """The whole training and test sets of the config's data source."""
    if config.data == "synthetic":
        return synthetic()
    if config.data == "cifar100":
        return load_torchvision(config.data_dir, config.download)
    if config.data.endswith(".npz"):
        return load_npz(config.data)
    raise DataError(f"data: expected 'cifar100', 'synthetic' or a path to a .npz file, got {config.data!r}")


def load_splits(config: RecipeConfig) -> Splits:
    """The training set and the evaluation set the config asks for.

    With val_size > 0 the evaluation set is a stratified, seeded split of the training set
    (the same for every run with the same split seed and data) and the test set is not touched.
    The subset is then taken from what remains, so the validation split does not depend on it.
    """
    train, test = load_source(config)
    check_sizes(config, len(train), len(test))

    split_seed = config.seed if config.split_seed < 0 else config.split_seed
    order = stratified_order(train.y, split_seed)
    if config.val_size:
        evaluation = train.take(np.sort(order[: config.val_size]))
        rest = order[config.val_size :]
        eval_name = "val"
    else:
        evaluation, rest, eval_name = test, order, "test"
        if config.eval_subset:
            evaluation = test.take(np.sort(stratified_order(test.y, split_seed)[: config.eval_subset]))
    if config.subset:
        rest = rest[: config.subset]
    return Splits(train=train.take(np.sort(rest)), eval=evaluation, eval_name=eval_name)
