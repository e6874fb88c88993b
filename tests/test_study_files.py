"""A study file is checked whole before anything starts: one line on stderr, exit status 2, nothing written.

Its name stays inside --results-dir, its ranges are values the recipe takes, its seed fits every library
that takes it, its tables are whole, and every kind of run it starts (trial, re-run, final run) fits its
data; on --resume the saved spec.json wins over an edited file, and says which of the file's keys were edited; a
study saved before a rule of new study files still resumes, and a saved spec.json of the wrong types is one line.
Everything here runs in the tests' own process, before Ray would start (no_ray makes reaching it an error).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import call_main
from recipe.config import MAX_SEED, ConfigError, RecipeConfig
from recipe.train import main as train_main
from search import run as search_run
from search import study as studies
from search.study import MAX_STUDY_SEED, NAME_MAX

SMOKE = (studies.STUDIES_DIR / "smoke.toml").read_text()


def tree(root: Path) -> dict[str, object]:
    return {str(p.relative_to(root)): "dir" if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def edited(old: str, new: str) -> str:
    assert old in SMOKE, old
    return SMOKE.replace(old, new, 1)


def study_file(work: Path, text: str | bytes, name: str = "mine.toml") -> Path:
    path = work / "studies" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def assert_one_line(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2, (code, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert out == "", out
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def search_refuses(work: Path, capsys, study: Path | str, *argv: str) -> str:
    """search.run's one-line refusal of the study, with nothing written anywhere under work (results included)."""
    before = tree(work)
    code, out, err = call_main(search_run.main, ["--study", str(study), "--results-dir", str(work / "results"), *argv],
                              capsys)
    assert_one_line(code, out, err)
    assert tree(work) == before
    return err


def refused_file(work: Path, capsys, study: Path) -> str:
    """search.run's refusal of a study file, which names the file."""
    err = search_refuses(work, capsys, study)
    assert err.startswith(f"error: {study}: "), err
    return err


# ---- the results directory is a boundary ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../x", "", ".hidden", "a/b", "two words", "x" * (NAME_MAX + 1), "..", "é",
                                  "-x"])
def test_a_study_name_that_is_not_a_plain_file_name_is_refused_and_nothing_is_written(work, no_ray, capsys, name):
    study = study_file(work, f"name = {json.dumps(name)}\n{SMOKE}")
    err = refused_file(work, capsys, study)
    assert f"name must be 1 to {NAME_MAX} of the letters" in err and repr(name) in err
    assert "not starting with '.' or '-'" in err


def test_a_study_named_by_its_file_is_checked_as_well(work, no_ray, capsys):
    err = refused_file(work, capsys, study_file(work, SMOKE, name=".toml"))
    assert "name (the file's name, as the study sets no name)" in err


def test_a_plain_study_name_of_the_longest_length_is_taken(tmp_path):
    name = "a.B_c-" + "9" * (NAME_MAX - 6)
    assert studies.load(str(study_file(tmp_path, f'name = "{name}"\n{SMOKE}'))).name == name


# ---- a study file is checked whole --------------------------------------------------------------------

@pytest.mark.parametrize("old, new, says", [
    ("low = 0.0\nhigh = 0.5", "low = 0.0\nhigh = 5.0",
     "space.dropout: high = 5.0 is not a value the recipe takes (dropout: must be in [0, 1), got 5.0)"),
    ("low = 1e-5\nhigh = 5e-3\nlog = true", "low = -1.0\nhigh = 5e-3",
     "space.weight_decay: low = -1.0 is not a value the recipe takes (weight_decay: must be >= 0, got -1.0)"),
    ("[space.label_smoothing]\nlow = 0.0\nhigh = 0.3", "[space.label_smoothing]\nlow = 0.0\nhigh = 1.0",
     "space.label_smoothing: high = 1.0 is not a value the recipe takes"),
])
def test_a_search_range_the_recipe_cannot_train_is_refused_at_either_end(work, no_ray, capsys, old, new, says):
    assert says in refused_file(work, capsys, study_file(work, edited(old, new)))


def test_a_study_saved_before_ranges_were_checked_still_loads_to_be_resumed_and_reported():
    saved = studies.load("smoke").to_dict()
    saved["space"]["dropout"]["high"] = 1.0
    assert studies.StudySpec.from_dict(saved).space["dropout"].high == 1.0


@pytest.mark.parametrize("old, new, says", [
    ("low = 0.02\nhigh = 0.8\n", "low = 0.02\n", "[space.lr] needs low and high; it has no high"),
    ("low = 0.02\nhigh = 0.8\nlog = true\n", "", "[space.lr] needs low and high; it has no low"),
    ('metric = "eval_loss"', 'metric = ["eval_loss"]', "objective.metric must be one of eval_acc, eval_loss, got "
                                                       "['eval_loss']"),
    ('metric = "eval_loss"', "metric = 3", "objective.metric must be one of eval_acc, eval_loss, got 3"),
    ("seed = 0", 'seed = 0\nname = ["smoke"]', "name must be str"),
])
def test_a_malformed_table_or_value_is_one_line(work, no_ray, capsys, old, new, says):
    assert says in refused_file(work, capsys, study_file(work, edited(old, new)))


def test_a_study_file_that_is_not_utf8_is_one_line(work, no_ray, capsys):
    study = study_file(work, SMOKE.encode().replace(b"# A study", b"# \xe9tude: a study", 1))
    assert "not a UTF-8 text file (byte 2 is 0xe9)" in refused_file(work, capsys, study)


@pytest.mark.parametrize("seed", [MAX_STUDY_SEED + 1, 9223372036854775807, 99999999999999999999999])
def test_a_study_seed_beyond_what_optunas_sampler_takes_is_refused_before_anything_is_written(work, no_ray, capsys,
                                                                                            seed):
    err = refused_file(work, capsys, study_file(work, edited("seed = 0", f"seed = {seed}")))
    assert f"seed must be <= {MAX_STUDY_SEED}" in err and str(seed) in err


def test_the_largest_study_seed_is_taken_and_its_runs_seeds_are_valid(tmp_path):
    spec = studies.load(str(study_file(tmp_path, edited("seed = 0", f"seed = {MAX_STUDY_SEED}"))))
    params = spec.seed_params()
    assert spec.trial_config(params, seed=spec.revalidation_seed()).seed == MAX_STUDY_SEED + 1
    assert spec.final_config(params, seed=spec.final_seeds(4)[-1]).seed == MAX_STUDY_SEED + 2


def test_a_recipe_seed_is_at_most_what_torch_and_numpy_take():
    assert RecipeConfig(seed=MAX_SEED, split_seed=MAX_SEED).seed == MAX_SEED == 2**63 - 1
    for field in ("seed", "split_seed"):
        with pytest.raises(ConfigError, match=rf"{field}: must be in \[0, {MAX_SEED}\]"):
            RecipeConfig(**{field: MAX_SEED + 1})


def test_recipe_train_with_a_seed_out_of_range_is_one_line_and_writes_nothing(work, capsys):
    before = tree(work)
    code, out, err = call_main(train_main, ["--seed", "99999999999999999999999", "--data", "synthetic",
                                           "--out", str(work / "run")], capsys)
    assert_one_line(code, out, err, "seed: must be in [0, 9223372036854775807], got 99999999999999999999999")
    assert tree(work) == before


# ---- every kind of run checked against the data -------------------------------------------------------

def small_npz(path: Path, n_train: int = 600, n_test: int = 100) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(n_train) % 100, x_test=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(n_test) % 100)
    return path


def test_a_final_run_asking_more_test_images_than_the_data_has_is_refused_before_ray(work, no_ray, capsys):
    data = small_npz(work / "small.npz")  # the trials (128 + 256 training images) fit; 128 of 100 test images do not
    err = search_refuses(work, capsys, "smoke", "--data", str(data))
    assert "the final runs: eval_subset (128) exceeds the 100 test images" in err


def test_a_schedule_that_torch_cannot_build_is_refused_before_ray(work, no_ray, capsys):
    # 256 images at batch 32 for 4 epochs: 32 steps, of which 1/32 warm up: exactly one step, a crash in torch.
    study = study_file(work, edited("width = 4", "width = 4\npct_start = 0.03125"))
    err = search_refuses(work, capsys, study)
    assert "the trials: epochs: OneCycle cannot warm up over exactly 1 step" in err


def saved_study(work: Path, argv: list[str]) -> Path:
    """results/<study>/ as an interrupted study leaves it: spec.json as the driver writes it (tuning.run) from argv."""
    planned = search_run.plan(search_run.parse_args([*argv, "--results-dir", str(work / "results")]))
    planned.paths.root.mkdir(parents=True)
    planned.paths.spec.write_text(json.dumps(planned.spec_record()))
    return planned.paths.root


def test_a_resumed_study_whose_final_runs_do_not_fit_its_data_is_refused_before_ray(work, no_ray, capsys):
    study = study_file(work, SMOKE)
    root = saved_study(work, ["--study", str(study)])
    saved = json.loads((root / "spec.json").read_text())
    saved["recipe"]["data"] = str(small_npz(work / "small.npz"))  # it started on data its final runs do not fit
    (root / "spec.json").write_text(json.dumps(saved))
    study.write_text(edited("trials = 8", "trials = 9"))  # a note's worth, which the error leaves unsaid
    err = search_refuses(work, capsys, study, "--resume")
    assert "the final runs: eval_subset (128) exceeds the 100 test images" in err


# ---- --resume after the study file was edited ---------------------------------------------------------

def resume_plan(work: Path, study: Path | str):
    return search_run.plan(search_run.parse_args(["--study", str(study), "--results-dir", str(work / "results"),
                                                  "--resume"]))


def test_spec_json_keeps_the_study_file_as_it_was_beside_the_settings_the_flags_changed(work, no_ray):
    planned = search_run.plan(search_run.parse_args(["--study", "smoke", "--results-dir", str(work / "results"),
                                                     "--trials", "3", "--final-seeds", "2"]))
    record = json.loads(json.dumps(planned.spec_record()))  # as spec.json holds it
    assert studies.StudySpec.from_dict(record) == planned.spec and planned.spec.trials == 3
    assert record[studies.STUDY_FILE] == studies.load("smoke").to_dict()  # 8 trials, no [final] seeds


def test_resuming_a_study_started_with_flags_says_nothing_of_them(work, no_ray, capsys):
    study = study_file(work, SMOKE, name="smoke.toml")
    saved_study(work, ["--study", str(study), "--trials", "3", "--final-seeds", "2", "--revalidate-top", "1"])
    planned = resume_plan(work, study)
    assert planned.spec.trials == 3 and capsys.readouterr() == ("", "")


def test_resuming_after_the_study_file_was_edited_names_the_edited_keys_and_keeps_the_saved_spec(work, no_ray, capsys):
    study = study_file(work, SMOKE, name="smoke.toml")
    saved_study(work, ["--study", str(study), "--final-seeds", "2"])
    study.write_text(edited("trials = 8", "trials = 9").replace("horizon = 4", "horizon = 6")
                     .replace("eval_subset = 128", "eval_subset = 64"))
    planned = resume_plan(work, study)
    assert capsys.readouterr().err == (f"note: {study} was edited since the study started, in asha.horizon, "
                                       f"final.eval_subset, trials; a resumed study keeps the settings it started "
                                       f"with: the saved {planned.paths.spec} wins\n")  # not final.seeds, a flag
    assert planned.spec.trials == 8 and planned.spec.asha.horizon == 4 and planned.spec.final_seeds(0) == [0, 1]


def test_resuming_with_the_study_file_as_it_started_says_nothing(work, no_ray, capsys):
    study = study_file(work, SMOKE, name="smoke.toml")
    saved_study(work, ["--study", str(study)])
    assert resume_plan(work, study).resume and capsys.readouterr() == ("", "")


def test_resuming_a_study_saved_before_spec_json_kept_its_study_file_says_nothing_of_edits(work, no_ray, capsys):
    study = study_file(work, SMOKE, name="smoke.toml")
    root = saved_study(work, ["--study", str(study)])
    saved = json.loads((root / "spec.json").read_text())
    del saved[studies.STUDY_FILE]
    (root / "spec.json").write_text(json.dumps(saved))
    study.write_text(edited("trials = 8", "trials = 9"))  # nothing saved to compare it with
    assert resume_plan(work, study).spec.trials == 8 and capsys.readouterr() == ("", "")


# ---- a study saved before a rule of new study files still resumes -------------------------------------

def saved_as_before(work: Path, study: Path, **changes) -> None:
    """results/<study>/spec.json as a driver saved it before the name's and the ranges' rules (none checked)."""
    saved = {**studies.load("smoke").to_dict(), "name": study.stem}
    for key, value in changes.items():
        table, _, name = key.partition("__")
        saved["space"][table][name] = value
    (work / "results" / study.stem).mkdir(parents=True)
    (work / "results" / study.stem / "spec.json").write_text(json.dumps(saved))


def test_a_study_whose_file_name_is_not_a_plain_name_still_resumes(work, no_ray, capsys):
    study = study_file(work, SMOKE, name="my study.toml")
    saved_as_before(work, study)
    assert resume_plan(work, study).spec.name == "my study"
    assert "name (the file's name" in refused_file(work, capsys, study_file(work, SMOKE, name="a new one.toml"))


def test_a_study_whose_range_ends_where_the_recipe_cannot_train_still_resumes(work, no_ray):
    study = study_file(work, edited("low = 0.0\nhigh = 0.5", "low = 0.0\nhigh = 1.0"), name="old.toml")
    saved_as_before(work, study, dropout__high=1.0)
    assert resume_plan(work, study).spec.space["dropout"].high == 1.0


@pytest.mark.parametrize("name", ["..", ".", "a/b", ""])
def test_a_resumed_study_name_must_still_name_a_directory_inside_the_results(work, no_ray, capsys, name):
    study = study_file(work, f"name = {json.dumps(name)}\n{SMOKE}")
    err = search_refuses(work, capsys, study, "--resume")
    assert f"name must be 1 to {NAME_MAX} of the letters" in err and repr(name) in err


# ---- a saved spec.json of the wrong types --------------------------------------------------------------

MUTATIONS = {
    "trials a string": lambda d: d.update(trials="8"),
    "seed null": lambda d: d.update(seed=None),
    "horizon null": lambda d: d["asha"].update(horizon=None),
    "recipe a list": lambda d: d.update(recipe=[1]),
    "a range end a string": lambda d: d["space"]["lr"].update(low="0.1"),
    "cpus a string": lambda d: d["resources"].update(cpus_per_trial="2"),
    "name a number": lambda d: d.update(name=5),
    "name a path": lambda d: d.update(name="../x"),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_saved_spec_of_wrong_types_is_a_spec_error(mutation):
    saved = studies.load("smoke").to_dict()
    MUTATIONS[mutation](saved)
    with pytest.raises(studies.SpecError, match="^spec.json: "):
        studies.StudySpec.from_dict(saved, "spec.json")


def test_resuming_with_a_spec_json_of_wrong_types_is_one_line(work, no_ray, capsys):
    study = study_file(work, SMOKE, name="smoke.toml")
    root = saved_study(work, ["--study", str(study)])
    saved = json.loads((root / "spec.json").read_text())
    saved["trials"] = "8"
    (root / "spec.json").write_text(json.dumps(saved))
    err = search_refuses(work, capsys, study, "--resume")
    assert err.startswith(f"error: {root / 'spec.json'}: not a saved study spec (TypeError: "), err
