"""How a study chooses its answer from re-validated trials, and sums up its final runs (search.results)."""
import json
import math

import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from search import results
from search import study as studies
from search.study import StudyPaths

SPEC = studies.load("smoke").replace(metric="eval_acc")  # revalidate_top = 2; maximising eval_acc here


def study_of(values: list[float | None], spec=SPEC) -> optuna.Study:
    """Trials with these values at the horizon; None is a pruned trial."""
    study = optuna.create_study(direction="maximize" if spec.mode == "max" else "minimize")
    dist = {n: FloatDistribution(p.low, p.high, log=p.log) for n, p in spec.space.items()}
    for v in values:
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED if v is None else TrialState.COMPLETE, value=v if v is not None else 0.01,
            params=spec.seed_params(), distributions=dist, intermediate_values={1: v or 0.01}))
    return study


def rerun(trial_id: int, value: float | None, status: str = "completed") -> dict:
    return {"trial_id": trial_id, "seed": 1, "status": status, "value": value, "epochs": 4, "time_s": 10.0,
            "ended": 1000.0 + trial_id, "reason": None, "ray_trial_id": f"r{trial_id}"}


def test_the_best_mean_over_a_trials_runs_is_chosen_not_the_best_single_value():
    study = study_of([0.40, None, 0.52, 0.45])  # top 2 by value: 2, then 3
    record = results.revalidation_record(study, SPEC, [rerun(2, 0.36), rerun(3, 0.47)])
    assert [r["trial_id"] for r in record["trials"]] == [2, 3]
    assert record["trials"][0]["values"] == [0.52, 0.36] and record["trials"][0]["mean_value"] == pytest.approx(0.44)
    assert record["chosen"] == 3 and record["best_single"] == 2 and record["changed"]
    assert record["epochs"] == 8 and record["wall_time_s"] == pytest.approx(11.0)  # from 992 to 1003
    best = results.best_record(SPEC, results.chosen_trial(study, SPEC, record), record)
    assert best["trial_id"] == 3 and best["value"] == 0.45 and best["values"] == [0.45, 0.47]
    assert best["mean_value"] == pytest.approx(0.46) and best["revalidated"] and best["best_single_trial_id"] == 2


def test_a_tie_in_the_mean_goes_to_the_trial_the_search_ranked_higher():
    study = study_of([0.50, 0.40])
    record = results.revalidation_record(study, SPEC, [rerun(0, 0.40), rerun(1, 0.50)])
    assert record["chosen"] == 0 and not record["changed"]


def test_a_diverged_re_run_ranks_its_trial_last_and_a_failed_one_after_those_with_every_run():
    study = study_of([0.50, 0.45, 0.30])
    spec = SPEC.replace(selection=SPEC.selection.__class__(revalidate_top=3))
    record = results.revalidation_record(study, spec, [rerun(0, float("nan"), "diverged"), rerun(1, None, "failed"),
                                                       rerun(2, 0.31)])
    by_id = {r["trial_id"]: r for r in record["trials"]}
    assert math.isnan(by_id[0]["mean_value"])  # the settings are unstable: last
    # A crash says nothing of the settings: left out of the mean, but the trial's 0.45 alone is its lucky search
    # value, so the trial with both its runs (mean 0.305) comes first.
    assert by_id[1]["values"] == [0.45] and by_id[1]["mean_value"] == 0.45 and by_id[1]["missing_runs"] == 1
    assert record["chosen"] == 2
    # With every trial short of its runs, the means alone decide again.
    record = results.revalidation_record(study, spec, [rerun(0, None, "failed"), rerun(1, None, "failed"),
                                                       rerun(2, None, "failed")])
    assert record["chosen"] == 0


def test_revalidate_top_0_runs_no_re_validation_and_best_json_names_the_best_complete_trial(tmp_path):
    from search import run as search_run
    from search import tuning
    from search.plan import Plan
    from search.stopping import Stop

    spec = search_run.with_overrides(SPEC, search_run.parse_args(["--revalidate-top", "0"]))
    assert spec.selection.revalidate_top == 0
    paths = StudyPaths(tmp_path / "results" / spec.name)
    plan = Plan(spec=spec, paths=paths, resume=False, storage=str(tmp_path / "results" / spec.name), address=None,
                final=True)
    study = study_of([0.40, None, 0.52, 0.45])
    assert tuning.revalidate(plan, 0, study, Stop()) is None  # nothing trained again (no Tune run: no Ray needed)
    best = results.write_results(paths, spec, study, None)
    assert json.loads(paths.best.read_text()) == best
    assert best["trial_id"] == 2 and best["values"] == [0.52] and not best["revalidated"]
    assert not paths.revalidation.exists()


def test_a_re_run_that_ended_before_its_first_epoch_counts_as_failed_and_out_of_the_wall_time():
    # Tune's record of a run stopped or crashed before its first report: an end (its start-up figures), no time.
    study = study_of([0.50, 0.45])
    early = {**rerun(0, None, "failed"), "time_s": None, "epochs": 0}
    record = results.revalidation_record(study, SPEC, [early, rerun(1, 0.46)])
    assert record["chosen"] == 1 and record["trials"][0]["missing_runs"] == 1
    assert record["wall_time_s"] == pytest.approx(10.0)  # the timed run alone
    assert results.revalidation_record(study, SPEC, [early])["wall_time_s"] is None


def test_a_minimised_metric_chooses_the_lowest_mean():
    spec = SPEC.replace(metric="eval_loss")
    study = study_of([2.0, 1.5, 1.8], spec)
    record = results.revalidation_record(study, spec, [rerun(1, 2.3), rerun(2, 1.7)])
    assert [r["trial_id"] for r in record["trials"]] == [1, 2] and record["chosen"] == 2


def test_trials_csv_carries_the_re_runs_and_the_mean_of_the_re_validated_trials(tmp_path):
    study = study_of([0.40, None, 0.52, 0.45])
    record = results.revalidation_record(study, SPEC, [rerun(2, 0.36), rerun(3, 0.47)])
    frame = results.trials_frame(study, SPEC, record)
    assert json.loads(frame.loc[2, "revalidated_values"]) == [0.36] and frame.loc[3, "mean_value"] == pytest.approx(0.46)
    assert pd.isna(frame.loc[0, "revalidated_values"]) and pd.isna(frame.loc[0, "mean_value"])
    path = tmp_path / "trials.csv"
    frame.to_csv(path, index=False)
    lines = path.read_text().splitlines()
    assert lines[0].split(",")[5:7] == ["revalidated_values", "mean_value"]
    assert lines[1].split(",")[5:7] == ["", ""] and ",[0.36],0.44," in lines[3]


def write_run(paths: StudyPaths, seed: int, status: str, acc: float | None, baseline: bool = False) -> None:
    run = paths.final_run(seed, baseline)
    run.mkdir(parents=True, exist_ok=True)
    (run / "summary.json").write_text(json.dumps({
        "status": status, "final_eval_acc": acc, "best_eval_acc": acc, "best_epoch": 4, "epochs_run": 4,
        "epochs": 4, "eval_set": "test", "wall_time_s": 10.0 + seed}))


def test_the_final_summary_gives_each_seed_their_mean_and_sample_std(tmp_path):
    paths = StudyPaths(tmp_path / "s")
    for seed, acc in ((0, 0.781), (1, 0.779), (2, 0.783)):
        write_run(paths, seed, "completed", acc)
    summary = results.final_summary(paths, [0, 1, 2])
    assert summary["status"] == "completed" and summary["n"] == 3
    assert [r["final_eval_acc"] for r in summary["runs"]] == [0.781, 0.779, 0.783]
    assert [r["dir"] for r in summary["runs"]] == ["seed-0", "seed-1", "seed-2"]
    assert summary["mean_final_eval_acc"] == pytest.approx(0.781)
    assert summary["std_final_eval_acc"] == pytest.approx(0.002)  # sample std: divided by n - 1
    assert summary["wall_time_s"] == 12.0  # side by side: the longest run
    assert results.final_line(summary) == "final: 78.10 +- 0.20% test accuracy over 3 seeds"


def test_a_seed_tune_gave_up_on_is_failed_whatever_its_run_directory_last_said(tmp_path):
    paths = StudyPaths(tmp_path / "s")
    write_run(paths, 0, "completed", 0.5)
    write_run(paths, 1, "running", 0.4)  # a run writes "running" after each epoch; it crashed after one
    summary = results.final_summary(paths, [0, 1], failed={"seed-1"})
    assert [r["status"] for r in summary["runs"]] == ["completed", "failed"] and summary["status"] == "failed"
    assert summary["n"] == 1


def test_a_seed_to_run_again_outranks_a_diverged_one_in_the_summarys_status(tmp_path):
    paths = StudyPaths(tmp_path / "s")
    write_run(paths, 0, "diverged", float("nan"))
    write_run(paths, 1, "running", 0.4)
    assert results.final_summary(paths, [0, 1], failed={"seed-1"})["status"] == "failed"  # --resume has work to do
    assert results.final_summary(paths, [0])["status"] == "diverged"  # ended for good
    assert results.final_exit_status(results.final_summary(paths, [0, 1], failed={"seed-1"})) == 1
    assert results.final_exit_status(results.final_summary(paths, [0])) == 1  # the final model diverged


def test_a_diverged_baseline_run_is_said_by_seed_and_fails_nothing_where_the_chosen_settings_runs_completed(tmp_path):
    paths = StudyPaths(tmp_path / "s")
    for seed, baseline in ((0, 0.77), (1, float("nan")), (2, 0.76)):
        write_run(paths, seed, "completed", 0.78)
        write_run(paths, seed, "completed" if baseline == baseline else "diverged", baseline, baseline=True)
    summary = results.final_summary(paths, [0, 1, 2], baseline=True)
    assert summary["status"] == "diverged" and summary["difference"]["seeds"] == [0, 2]
    assert results.final_line(summary) == (
        "final: 78.00 +- 0.00% test accuracy over 3 seeds; the seed recipe: 76.50 +- 0.71% (+1.50 points, 95% CI "
        "-4.85 to +7.85, paired over 2 seeds, 2 of 3 runs completed; seed 1 diverged)")
    assert results.final_exit_status(summary) == 0  # the study's final model was trained: the line says the rest
    write_run(paths, 2, "diverged", float("nan"))  # one of the chosen settings' own runs diverges
    summary = results.final_summary(paths, [0, 1, 2], baseline=True)
    assert results.final_line(summary).startswith("final: 78.00 +- 0.00% test accuracy over 2 seeds (2 of 3 runs "
                                                  "completed; seed 2 diverged); the seed recipe: ")
    assert results.final_exit_status(summary) == 1
    assert results.final_exit_status(results.final_summary(paths, [0])) == 0


def test_one_seed_is_one_number_and_an_unfinished_seed_keeps_the_study_unfinished(tmp_path):
    paths = StudyPaths(tmp_path / "s")
    write_run(paths, 0, "completed", 0.5)
    one = results.final_summary(paths, [0])
    assert one["std_final_eval_acc"] is None and results.final_line(one) == "final: 50.00% test accuracy (seed 0)"
    two = results.final_summary(paths, [0, 1])
    assert two["status"] == "not run" and two["n"] == 1
    assert results.final_line(two) == "final: 50.00% test accuracy (1 of 2 runs completed; seed 1 not run)"


def t_density(t: float, df: int) -> float:
    return math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi) * (1 + t * t / df) ** (
        -(df + 1) / 2)


@pytest.mark.parametrize("df", range(1, 31))
def test_the_t_quantile_table_holds_the_975_quantile_of_students_t(df):
    # P(|T| < q) by Simpson's rule over the density: 0.95 at the table's value, to its four decimals.
    q, steps = results.t_quantile_975(df), 4000
    h = 2 * q / steps
    area = h / 3 * sum((1 if i in (0, steps) else 4 if i % 2 else 2) * t_density(-q + i * h, df) for i in range(steps + 1))
    assert area == pytest.approx(0.95, abs=6e-6)  # the table rounds to 4 decimals


def test_the_t_quantile_is_the_textbooks_and_the_normals_beyond_30_degrees_of_freedom():
    assert [results.t_quantile_975(df) for df in (1, 2, 4, 10, 30)] == pytest.approx(
        [12.706, 4.303, 2.776, 2.228, 2.042], abs=5e-4)
    assert results.t_quantile_975(31) == results.t_quantile_975(1000) == pytest.approx(1.960, abs=5e-4)
    with pytest.raises(ValueError):
        results.t_quantile_975(0)


def test_the_baseline_is_summed_up_beside_the_chosen_runs_with_their_paired_difference(tmp_path):
    paths = StudyPaths(tmp_path / "s")
    for seed, chosen, baseline in ((0, 0.781, 0.770), (1, 0.779, 0.775), (2, 0.783, 0.777)):
        write_run(paths, seed, "completed", chosen)
        write_run(paths, seed, "completed", baseline, baseline=True)
    summary = results.final_summary(paths, [0, 1, 2], baseline=True)
    assert summary["status"] == "completed" and summary["mean_final_eval_acc"] == pytest.approx(0.781)
    other = summary["baseline"]
    assert [r["dir"] for r in other["runs"]] == ["baseline/seed-0", "baseline/seed-1", "baseline/seed-2"]
    assert [r["final_eval_acc"] for r in other["runs"]] == [0.770, 0.775, 0.777] and other["n"] == 3
    assert other["mean_final_eval_acc"] == pytest.approx(0.774) and other["std_final_eval_acc"] == pytest.approx(
        0.0036056, abs=1e-6)
    diff = summary["difference"]  # seed by seed: 0.011, 0.004, 0.006
    assert diff["seeds"] == [0, 1, 2] and diff["values"] == pytest.approx([0.011, 0.004, 0.006]) and diff["n"] == 3
    assert diff["mean"] == pytest.approx(0.007) and diff["std"] == pytest.approx(0.0036056, abs=1e-6)
    half = 4.3027 * 0.0036056 / math.sqrt(3)  # t(0.975, 2 degrees of freedom) standard errors
    assert diff["ci95"] == pytest.approx([0.007 - half, 0.007 + half], abs=1e-6)
    assert summary["epochs_run"] == 6 * 4 and summary["wall_time_s"] == 12.0  # both groups, side by side
    assert results.final_line(summary) == ("final: 78.10 +- 0.20% test accuracy over 3 seeds; the seed recipe: "
                                           "77.40 +- 0.36% (+0.70 points, 95% CI -0.20 to +1.60, paired over 3 seeds)")


def test_one_seed_with_a_baseline_gives_the_two_numbers_and_their_difference_without_an_interval(tmp_path):
    paths = StudyPaths(tmp_path / "s")
    write_run(paths, 0, "completed", 0.801)
    write_run(paths, 0, "completed", 0.774, baseline=True)
    summary = results.final_summary(paths, [0], baseline=True)
    assert summary["difference"]["n"] == 1 and summary["difference"]["std"] is None
    assert summary["difference"]["ci95"] is None
    assert results.final_line(summary) == ("final: 80.10% test accuracy (seed 0); the seed recipe: 77.40% "
                                           "(+2.70 points)")


def test_a_baseline_run_left_to_do_keeps_the_final_stage_unfinished_and_pairs_only_seeds_both_completed(tmp_path):
    paths = StudyPaths(tmp_path / "s")
    for seed in (0, 1):
        write_run(paths, seed, "completed", 0.78 + seed / 100)
    write_run(paths, 0, "completed", 0.77, baseline=True)
    write_run(paths, 1, "running", 0.5, baseline=True)
    summary = results.final_summary(paths, [0, 1], failed={"baseline/seed-1"}, baseline=True)
    assert summary["status"] == "failed" and summary["n"] == 2 and summary["baseline"]["n"] == 1
    assert [r["status"] for r in summary["baseline"]["runs"]] == ["completed", "failed"]
    assert summary["difference"]["seeds"] == [0] and summary["difference"]["ci95"] is None
    assert results.final_line(summary).endswith("; the seed recipe: 77.00% (+1.00 points, 1 of 2 runs completed; "
                                                       "seed 1 failed)")


def test_where_the_seed_recipe_is_chosen_the_last_line_says_there_is_no_baseline(tmp_path):
    paths = StudyPaths(tmp_path / "s")
    write_run(paths, 0, "completed", 0.5)
    summary = results.final_summary(paths, [0], skipped=results.NO_BASELINE)
    assert summary["baseline"] is None and summary["difference"] is None
    assert results.final_line(summary) == ("final: 50.00% test accuracy (seed 0); the chosen settings are the seed "
                                           "recipe's own: no baseline to train")
