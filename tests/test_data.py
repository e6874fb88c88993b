import numpy as np
import pytest

from recipe.config import RecipeConfig
from recipe.data import DataError, check_data, load_splits, synthetic

from conftest import tiny_config, write_torchvision_cifar100


def write_npz(path, n_train=300, n_test=100, **override):
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(n_train) % 100,
        x_test=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(n_test) % 100,
    )
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def test_synthetic_has_cifar_shapes_and_every_class():
    train, test = synthetic()
    assert train.x.shape == (10_000, 32, 32, 3) and train.x.dtype == np.uint8
    assert test.x.shape == (2_000, 32, 32, 3)
    assert np.bincount(train.y, minlength=100).min() == 100


def test_npz_arrays_are_loaded_as_given(tmp_path):
    arrays = write_npz(tmp_path / "d.npz")
    splits = load_splits(RecipeConfig(data=str(tmp_path / "d.npz")))
    assert splits.eval_name == "test"
    np.testing.assert_array_equal(splits.train.x, arrays["x_train"])
    np.testing.assert_array_equal(splits.eval.y, arrays["y_test"])


@pytest.mark.parametrize(
    "override, message",
    [(dict(y_test=None), "missing array"), (dict(x_train=np.zeros((300, 32, 32, 3), np.float32)), "x_train must be uint8"),
     (dict(y_train=np.full(300, 100)), "labels 0-99")],
)
def test_malformed_npz_is_a_clear_error(tmp_path, override, message):
    write_npz(tmp_path / "d.npz", **override)
    with pytest.raises(DataError, match=message):
        load_splits(RecipeConfig(data=str(tmp_path / "d.npz")))


def test_missing_npz_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_splits(RecipeConfig(data=str(tmp_path / "nope.npz")))


def test_torchvision_cifar100_files_are_read_through_torchvision(tmp_path, monkeypatch):
    images = write_torchvision_cifar100(tmp_path)
    # Our files are not the official ones, so only the md5 check of torchvision is bypassed.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    splits = load_splits(RecipeConfig(data="cifar100", data_dir=str(tmp_path)))
    np.testing.assert_array_equal(splits.train.x, images["train"][0])
    np.testing.assert_array_equal(splits.train.y, images["train"][1])
    np.testing.assert_array_equal(splits.eval.x, images["test"][0])


def test_missing_cifar100_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="--download"):
        load_splits(RecipeConfig(data="cifar100", data_dir=str(tmp_path)))


def test_validation_split_is_stratified_seeded_and_disjoint_from_training():
    a = load_splits(tiny_config(subset=0, val_size=1000, seed=3))
    b = load_splits(tiny_config(subset=0, val_size=1000, seed=3))
    c = load_splits(tiny_config(subset=0, val_size=1000, seed=4))
    assert a.eval_name == "val" and len(a.eval) == 1000 and len(a.train) == 9000
    assert np.all(np.bincount(a.eval.y, minlength=100) == 10)
    np.testing.assert_array_equal(a.eval.x, b.eval.x)
    assert not np.array_equal(a.eval.x, c.eval.x)
    train_rows = {row.tobytes() for row in a.train.x}
    assert not any(row.tobytes() in train_rows for row in a.eval.x)


def test_validation_split_does_not_depend_on_the_subset():
    small = load_splits(tiny_config(subset=500, val_size=300))
    large = load_splits(tiny_config(subset=2000, val_size=300))
    np.testing.assert_array_equal(small.eval.x, large.eval.x)
    assert len(small.train) == 500 and len(large.train) == 2000


def test_subsets_are_stratified():
    splits = load_splits(tiny_config(subset=250, eval_subset=300))
    counts = np.bincount(splits.train.y, minlength=100)
    assert counts.min() == 2 and counts.max() == 3
    assert np.all(np.bincount(splits.eval.y, minlength=100) == 3)


@pytest.mark.parametrize("changes, says", [
    ({"subset": 9500, "val_size": 1000}, r"val_size \(1000\) \+ subset \(9500\) exceed the 10000 training images"),
    ({"subset": 0, "val_size": 10_000}, r"val_size \(10000\) leaves no training images of the 10000"),
    ({"val_size": 0, "eval_subset": 2001}, r"eval_subset \(2001\) exceeds the 2000 test images"),
], ids=["subset and split", "split alone", "test subset"])
def test_splits_larger_than_the_data_are_an_error_and_checking_synthetic_data_does_not_make_it(changes, says):
    with pytest.raises(DataError, match=says):
        load_splits(tiny_config(**changes))
    synthetic.cache_clear()
    with pytest.raises(DataError, match=says):  # what a study's driver checks before it starts anything
        check_data(tiny_config(**changes))
    check_data(tiny_config())
    assert synthetic.cache_info().currsize == 0


def test_the_split_seed_alone_draws_the_validation_split_and_the_test_subset():
    def sets(**changes):
        splits = load_splits(RecipeConfig(data="synthetic", val_size=300, subset=500, **changes))
        return splits.eval.x.tobytes(), splits.train.x.tobytes()

    base = sets(seed=1, split_seed=7)
    assert sets(seed=2, split_seed=7) == base  # another run seed: the same images
    assert sets(seed=1, split_seed=8)[0] != base[0]
    assert sets(seed=7) == base  # -1 (the default): the run's seed draws them, as before split_seed existed
    tests = [load_splits(RecipeConfig(data="synthetic", eval_subset=200, **c)).eval.y.tobytes()
             for c in ({"seed": 1, "split_seed": 7}, {"seed": 2, "split_seed": 7}, {"seed": 1, "split_seed": 8})]
    assert tests[0] == tests[1] != tests[2]
