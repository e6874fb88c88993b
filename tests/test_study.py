import dataclasses
import json

import pytest

from search import study as studies
from search.study import SpecError

SMOKE = (studies.STUDIES_DIR / "smoke.toml").read_text()


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_default_study_is_the_mission_study():
    spec = studies.load("default")
    assert spec.trials == 40 and spec.metric == "eval_acc" and spec.mode == "max"
    assert spec.asha.horizon == 50 and spec.rungs() == [5, 15, 45]
    assert spec.final_config(spec.seed_params()).epochs == 250
    trial = spec.trial_config(spec.seed_params())
    assert trial.epochs == 50 and trial.val_size == 5000 and trial.width == 64
    assert spec.seed_params() == {"lr": 0.1, "weight_decay": 5e-4, "dropout": 0.2, "label_smoothing": 0.1}


def test_a_study_is_found_by_name_or_by_path(tmp_path):
    assert studies.load("smoke").name == "smoke"
    assert studies.load(write(tmp_path, SMOKE, "mine.toml")).name == "mine"


def test_trial_and_final_configs_take_their_own_overrides():
    spec = studies.load("smoke")
    params = {"lr": 0.3, "weight_decay": 1e-4, "dropout": 0.1, "label_smoothing": 0.0}
    trial, final = spec.trial_config(params), spec.final_config(params)
    assert (trial.lr, trial.epochs, trial.val_size, trial.subset) == (0.3, 4, 128, 256)
    assert (final.lr, final.epochs, final.val_size, final.subset) == (0.3, 4, 0, 256)
    assert trial.width == final.width == 4 and trial.seed == final.seed == spec.seed


@pytest.mark.parametrize(
    "edit, message",
    [
        (("[asha]", "[asha]\nbogus = 1"), r"\[asha\] has unknown key 'bogus'"),
        (("seed = 0", "seed = 0\ncolour = 'red'"), "unknown key 'colour'"),
        (("low = 0.02\nhigh = 0.8", "low = 0.8\nhigh = 0.02"), "space.lr: low must be below high"),
        (("low = 0.02\nhigh = 0.8", "low = 0.0\nhigh = 0.8"), "space.lr: a log scale needs low > 0"),
        (("low = 1e-5\nhigh = 5e-3", "low = 1e-3\nhigh = 5e-3"), r"space.weight_decay: \[0.001, 0.005\] must contain"),
        (("[space.dropout]", "[space.momentum]"), "missing \\[space.dropout\\]"),
        (("metric = \"eval_loss\"", "metric = \"test_acc\""), "objective.metric must be one of"),
        (("val_size = 128", "val_size = 0"), r"\[trial\] val_size must be > 0"),
        (("width = 4", "width = 4\nlr = 0.2"), r"\[recipe\] sets lr, which the search chooses"),
        (("width = 4", "width = -4"), r"\[recipe\] width: must be >= 1"),
        (("[trial]", "[trial]\nepochs = 3"), r"\[trial\] sets epochs"),
        (("horizon = 4", "horizon = \"four\""), "asha.horizon must be int"),
        (("grace_period = 1", "grace_period = 9"), "grace_period .9. must not exceed asha.horizon"),
        (("trials = 8", "trials = 0"), "trials must be >= 1"),
        (("revalidate_top = 2", "revalidate_top = -1"), "selection.revalidate_top must be >= 0"),
        (("cpus_per_trial = 1", "cpus_per_trial = 0"), "resources.cpus_per_trial must be > 0, got 0.0"),
        (("cpus_per_trial = 1", "cpus_per_trial = \"one\""), "resources.cpus_per_trial must be float"),
        (("revalidate_top = 2", "revalidate_top = 2\nseeds = 3"), r"\[selection\] has unknown key 'seeds'"),
        (("epochs = 4", "epochs = 4\nseeds = 0"), "final.seeds must be >= 1"),
        (("epochs = 4", "epochs = 4\nseeds = 1.5"), "final.seeds must be int"),
        (("epochs = 4", "epochs = 4\nseed = 3"), r"\[final\] sets seed; every run of a study is seeded by"),
        (("val_size = 128", "val_size = 128\nsplit_seed = 3"), r"\[trial\] sets split_seed"),
    ],
)
def test_a_bad_study_file_is_one_clear_error(tmp_path, edit, message):
    old, new = edit
    assert old in SMOKE
    with pytest.raises(SpecError, match=message):
        studies.load(write(tmp_path, SMOKE.replace(old, new, 1)))


def test_missing_study_names_the_known_ones(tmp_path):
    with pytest.raises(SpecError, match="no such study file.*smoke"):
        studies.load("nope")


def test_invalid_toml_is_an_error(tmp_path):
    with pytest.raises(SpecError, match="not valid TOML"):
        studies.load(write(tmp_path, "trials = = 3"))


def test_a_spec_round_trips_through_its_saved_form(tmp_path):
    spec = studies.load("default")
    assert studies.StudySpec.from_dict(spec.to_dict()) == spec


def test_replacing_settings_revalidates():
    spec = studies.load("smoke")
    with pytest.raises(SpecError, match="trials must be >= 1"):
        spec.replace(trials=0)
    with pytest.raises(SpecError, match="resources.trials_per_gpu must be >= 1"):
        spec.replace(resources=dataclasses.replace(spec.resources, trials_per_gpu=0))


@pytest.mark.parametrize("cpus, threads, at_once", [(1, 1, 4), (2, 2, 2), (0.5, 1, 8), (1.5, 1, 2), (2.5, 2, 1)])
def test_cpus_per_trial_may_be_a_fraction_as_rays_and_a_trials_threads_are_its_whole_part(tmp_path, monkeypatch, cpus,
                                                                                          threads, at_once):
    from search import tuning

    spec = studies.load(write(tmp_path, SMOKE.replace("cpus_per_trial = 1", f"cpus_per_trial = {cpus}", 1)))
    assert spec.resources.cpus_per_trial == cpus and spec.trial_threads() == threads
    assert tuning.resources(spec, gpus=0) == {"cpu": cpus, "gpu": 0.0}
    monkeypatch.setattr(tuning.ray, "cluster_resources", lambda: {"CPU": 4.0})
    assert tuning.concurrency(spec, gpus=0) == at_once
    from search.report import spec_html

    assert f"{cpus:g} CPU{'s' * (cpus != 1)} per trial" in spec_html(spec)  # the report's record of the study


@pytest.mark.parametrize("cpus, at_once", [(16, 6), (4, 4)], ids=["as-the-gpus-take", "as-the-cpus-serve"])
def test_trials_per_gpu_shares_each_gpu_among_that_many_trials_and_sets_how_many_run_at_once(monkeypatch, cpus,
                                                                                             at_once):
    from search import run as search_run
    from search import tuning

    args = search_run.parse_args(["--study", "smoke", "--gpus", "2", "--trials-per-gpu", "3"])
    spec = search_run.with_overrides(studies.load("smoke"), args)
    assert (spec.resources.gpus, spec.resources.trials_per_gpu) == (2, 3)
    # What a Ray given 2 GPUs shows (on a CPU machine, logical ones: ray.init(num_gpus=2)).
    monkeypatch.setattr(tuning.ray, "cluster_resources", lambda: {"CPU": float(cpus), "GPU": 2.0})
    monkeypatch.setattr(tuning.ray, "nodes", lambda: [{"Alive": True}])
    gpus = tuning.gpus_to_use(spec)
    assert gpus == 2
    assert tuning.resources(spec, gpus) == {"cpu": 1, "gpu": pytest.approx(1 / 3)}  # a third of a GPU per trial
    # A phase of known runs (re-validation, the final stage) spreads them over the GPUs before they share one.
    assert tuning.resources(spec, gpus, runs=2) == {"cpu": 1, "gpu": 1.0}
    assert tuning.resources(spec, gpus, runs=6) == {"cpu": 1, "gpu": pytest.approx(1 / 3)}
    assert tuning.at_once(spec, gpus, runs=6) == at_once
    assert tuning.concurrency(spec, gpus) == at_once  # 2 GPUs x 3 trials, where the CPUs (1 a trial) serve them
    assert tuning.base_config(spec.trial_config(spec.seed_params()).to_dict(), gpus)["device"] == "cuda"


def test_selection_re_validates_the_top_trials_and_final_seeds_are_3_on_any_number_of_gpus(tmp_path):
    assert studies.load("default").selection.revalidate_top == 3
    smoke = studies.load("smoke")
    assert smoke.selection.revalidate_top == 2 and smoke.selection.final_seeds is None
    # Omitted: 3 seeds on GPUs (they share one GPU where there is one), one on CPU.
    assert [smoke.final_seeds(g) for g in (0, 1, 2, 4, 8)] == [[0], [0, 1, 2], [0, 1, 2], [0, 1, 2], [0, 1, 2]]
    spec = studies.load(write(tmp_path, SMOKE.replace("epochs = 4", "epochs = 4\nseeds = 2", 1)))
    assert spec.selection.final_seeds == 2 and spec.final_seeds(0) == [0, 1] and spec.final_seeds(8) == [0, 1]
    assert "seeds" not in spec.final  # a key of the study, not a recipe setting
    assert studies.StudySpec.from_dict(spec.to_dict()) == spec


def test_every_run_of_a_study_scores_on_the_studys_split_whatever_its_seed():
    spec = studies.load("smoke").replace(seed=3)
    params = spec.seed_params()
    rerun, final = spec.trial_config(params, seed=spec.revalidation_seed()), spec.final_config(params, seed=5)
    assert (rerun.seed, rerun.split_seed) == (4, 3) and (final.seed, final.split_seed) == (5, 3)
    assert spec.trial_config(params).seed == spec.trial_config(params).split_seed == 3


def test_a_saved_study_whose_tables_set_a_seed_still_loads():
    saved = studies.load("smoke").to_dict()
    saved["trial"]["seed"] = 3  # allowed before the study's seed took over every run's
    assert studies.StudySpec.from_dict(saved).trial["seed"] == 3


def test_a_study_saved_before_selection_existed_resumes_without_re_validation_or_extra_seeds():
    saved = studies.load("smoke").to_dict()
    del saved["selection"]
    spec = studies.StudySpec.from_dict(saved)
    assert spec.selection.revalidate_top == 0 and spec.final_seeds(4) == [0] and not spec.selection.baseline


def test_a_study_saved_before_the_baseline_existed_resumes_with_the_final_seeds_it_planned_a_gpu_each_up_to_3():
    saved = studies.load("default").to_dict()
    saved["selection"] = {"revalidate_top": 3, "final_seeds": None}  # as spec.json held it then
    spec = studies.StudySpec.from_dict(saved)
    assert [len(spec.final_seeds(g)) for g in (0, 1, 2, 4)] == [1, 1, 2, 3] and not spec.selection.baseline
    assert studies.StudySpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec  # saved again, still so
    assert len(studies.load("default").final_seeds(1)) == 3  # a new study: 3 on any number of GPUs


def test_the_baseline_is_a_key_of_final_true_in_the_default_and_smoke_studies_and_off_where_omitted(tmp_path):
    assert studies.load("default").selection.baseline and studies.load("smoke").selection.baseline
    assert studies.load("demo").selection.baseline
    spec = studies.load(write(tmp_path, SMOKE.replace("baseline = true", "")))
    assert not spec.selection.baseline  # it doubles the final stage's cost: a study asks for it
    assert "baseline" not in studies.load("smoke").final  # a key of the study, not a recipe setting
    with pytest.raises(studies.SpecError, match="final.baseline must be bool, got 'yes'"):
        studies.load(write(tmp_path, SMOKE.replace("baseline = true", 'baseline = "yes"')))
    saved = studies.load("smoke").to_dict()
    del saved["selection"]["baseline"]  # a study saved before the baseline existed resumes without one
    assert not studies.StudySpec.from_dict(saved).selection.baseline


@pytest.mark.parametrize("flag, baseline", [([], True), (["--no-baseline"], False), (["--baseline"], True)])
def test_baseline_and_no_baseline_override_the_studys_final_baseline(flag, baseline):
    from search import run as search_run

    args = search_run.parse_args(["--study", "smoke", *flag])
    assert search_run.with_overrides(studies.load("smoke"), args).selection.baseline is baseline
