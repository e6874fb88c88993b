"""The searcher's bookkeeping, driven the way Tune drives it, read back from the SQLite study."""
import warnings
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from search import study as studies
from search.searcher import FailureReasons, StudySearcher, fail_running


@pytest.fixture
def setup(tmp_path):
    spec = studies.load("smoke").replace(metric="eval_acc")  # horizon 4; results here carry eval_acc
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = StudySearcher(spec, optuna.storages.RDBStorage(url))
    reopen = lambda: optuna.load_study(study_name=spec.name, storage=url)  # noqa: E731
    return spec, searcher, reopen


def run_epochs(searcher, trial_id, values, last_via_complete=True, **final):
    """Tune's calls: on_trial_result for each epoch but the one a scheduler stops on."""
    results = [{"epoch": e, "eval_acc": v, "status": "running"} for e, v in enumerate(values, 1)]
    for r in results[:-1] if last_via_complete else results:
        searcher.on_trial_result(trial_id, r)
    searcher.on_trial_complete(trial_id, result={**results[-1], **final})


def test_the_seed_recipe_is_the_first_trial(setup):
    spec, searcher, reopen = setup
    assert searcher.suggest("t0") == spec.seed_params() | {"trial_id": 0}  # its Optuna number: the run's name
    assert reopen().trials[0].params == spec.seed_params()
    assert searcher.suggest("t1") != spec.seed_params() | {"trial_id": 1}


def test_a_trial_that_ran_the_horizon_is_complete_with_every_epoch_recorded(setup):
    _, searcher, reopen = setup
    searcher.suggest("t0")
    run_epochs(searcher, "t0", [0.1, 0.2, 0.3, 0.4])
    t = reopen().trials[0]
    assert t.state == TrialState.COMPLETE and t.value == 0.4
    assert t.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}
    assert t.user_attrs["epochs"] == 4 and t.user_attrs["ray_trial_id"] == "t0"


def test_a_trial_stopped_at_a_rung_is_pruned_with_its_stopping_epoch_recorded(setup):
    _, searcher, reopen = setup
    searcher.suggest("t0")
    run_epochs(searcher, "t0", [0.05, 0.07])
    t = reopen().trials[0]
    assert t.state == TrialState.PRUNED
    assert t.intermediate_values == {1: 0.05, 2: 0.07}  # Ray's OptunaSearch drops epoch 2
    assert t.value == 0.07 and t.user_attrs["epochs"] == 2


def test_a_diverged_trial_fails_with_its_reason(setup):
    _, searcher, reopen = setup
    searcher.suggest("t0")
    run_epochs(searcher, "t0", [0.02, float("nan")], status="diverged")
    t = reopen().trials[0]
    assert t.state == TrialState.FAIL
    assert "diverged" in t.user_attrs["reason"] and "epoch 2" in t.user_attrs["reason"]
    assert t.intermediate_values == {1: 0.02}


def test_a_trial_that_diverges_ends_without_an_error_for_tune_to_retry_and_fails_with_its_reason(setup, tmp_path,
                                                                                                 monkeypatch):
    from recipe.config import SEARCHED
    from search import trainable

    spec, searcher, reopen = setup
    params = searcher.suggest("t0")
    reports = []
    monkeypatch.setattr(trainable.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(trainable.tune, "report",
                        lambda metrics, checkpoint=None: reports.append((metrics, checkpoint)))
    monkeypatch.chdir(tmp_path)  # the trial's working directory
    base = {k: v for k, v in spec.trial_config({k: params[k] for k in SEARCHED}).to_dict().items() if k not in SEARCHED}
    # An lr the toy network cannot take: its loss is not finite in epoch 1. The trainable returns (Tune retries a
    # trial only where it raises), after one report with no checkpoint (nothing worth resuming from).
    trainable.run_recipe({**params, "lr": 1e5}, base=base, threads=1)
    assert [(m["epoch"], m["status"], c) for m, c in reports] == [(1, "diverged", None)]
    # As Tune tells the searcher: each result, then the trial's end with its last one.
    searcher.on_trial_result("t0", reports[-1][0])
    searcher.on_trial_complete("t0", result=reports[-1][0])
    t = reopen().trials[0]
    assert t.state == TrialState.FAIL and t.user_attrs["epochs"] == 1
    assert t.user_attrs["reason"] == "diverged: the training loss was not finite in epoch 1"
    assert t.intermediate_values == {}


def test_a_crashed_trial_fails_with_the_error_as_its_reason(setup):
    _, searcher, reopen = setup
    searcher.suggest("t0")
    searcher.on_trial_result("t0", {"epoch": 1, "eval_acc": 0.1})
    # Tune tells the searcher first, then the callbacks, which carry the error.
    searcher.on_trial_complete("t0", error=True)
    assert reopen().trials[0].state == TrialState.RUNNING
    error = RuntimeError("Traceback ...\n  File x\ntorch.OutOfMemoryError: CUDA out of memory")
    FailureReasons(searcher).on_trial_error(0, [], SimpleNamespace(trial_id="t0", get_error=lambda: error,
                                                                   num_failures=3))
    t = reopen().trials[0]
    assert t.state == TrialState.FAIL
    assert t.user_attrs["reason"] == "torch.OutOfMemoryError: CUDA out of memory (after 3 attempts)"
    assert t.intermediate_values == {1: 0.1}


def test_a_second_completion_of_a_trial_changes_nothing(setup):
    _, searcher, reopen = setup
    searcher.suggest("t0")
    run_epochs(searcher, "t0", [0.1, 0.2, 0.3, 0.4])
    searcher.on_trial_complete("t0", result={"epoch": 4, "eval_acc": 0.9})
    assert reopen().trials[0].value == 0.4


def test_a_resumed_searcher_hands_out_a_trial_left_running_with_its_settings_before_any_new_one(setup):
    from search.resume import search_left

    spec, searcher, reopen = setup
    searcher.suggest("t0")
    lost = searcher.suggest("t1")  # the driver then dies
    resumed = StudySearcher(spec, searcher.study._storage)  # the next driver's, over the same optuna.db
    assert search_left(resumed.study, spec.trials) == ([0, 1], spec.trials - 2)
    assert [t.state for t in reopen().trials] == [TrialState.WAITING] * 2  # back in the queue, not a FAIL
    resumed.suggest("t2")
    assert resumed.suggest("t3") == lost  # with the settings sampled for it, and its number
    run_epochs(resumed, "t3", [0.1, 0.2, 0.3, 0.4])
    trial = reopen().trials[1]
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["ray_trial_id"] == "t3"


def test_a_resumed_searcher_counts_the_trials_that_ended_and_hands_none_of_them_out_again(setup):
    from search.resume import search_left

    spec, searcher, reopen = setup
    searcher.suggest("t0")
    run_epochs(searcher, "t0", [0.1, 0.2], last_via_complete=False)  # stopped at a rung
    resumed = StudySearcher(spec, searcher.study._storage)
    assert resumed.tally() == {"complete": 0, "pruned": 1, "fail": 0}
    assert search_left(resumed.study, spec.trials) == ([], spec.trials - 1)
    assert resumed.suggest("t1")["trial_id"] == 1
    (trial, _) = reopen().trials
    assert trial.state == TrialState.PRUNED and trial.intermediate_values == {1: 0.1, 2: 0.2}


def test_trials_left_running_at_the_end_are_failed_with_a_reason(setup):
    _, searcher, reopen = setup
    searcher.suggest("t0")
    searcher.suggest("t1")
    run_epochs(searcher, "t1", [0.1, 0.2, 0.3, 0.4])
    assert fail_running(reopen(), "lost") == [0]
    states = [t.state for t in reopen().trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]


def test_epochs_a_restarted_trial_runs_again_keep_optunas_first_values_without_a_warning(setup):
    _, searcher, reopen = setup
    searcher.suggest("t0")
    for epoch, value in ((1, 0.1), (2, 0.2)):
        searcher.on_trial_result("t0", {"epoch": epoch, "eval_acc": value, "status": "running"})
    why = "its checkpoint /x/last.pt could not be used (truncated); restarted from epoch 0"
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")  # Optuna warns of each epoch told twice unless the searcher sees to it
        run_epochs(searcher, "t0", [0.15, 0.25, 0.3, 0.4], restarted=why)
    assert [str(w.message) for w in warned] == []
    t = reopen().trials[0]
    assert t.state == TrialState.COMPLETE and t.value == 0.4 and t.user_attrs["restarted"] == why
    assert t.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}  # as ASHA keeps its first judgement


def test_a_restart_is_recorded_also_when_asha_stops_the_trial_at_its_first_epoch_back(setup):
    _, searcher, reopen = setup
    searcher.suggest("t0")
    why = "its checkpoint /x/last.pt could not be used (not there); restarted from epoch 0"
    run_epochs(searcher, "t0", [0.1], restarted=why)  # the epoch ASHA stops on reaches on_trial_complete alone
    t = reopen().trials[0]
    assert t.state == TrialState.PRUNED and t.user_attrs["restarted"] == why
