"""benchmarks/gpu_check.sh: the one command a person runs on a new GPU machine, here in its --quick form on a CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from recipe.data import synthetic

from conftest import running

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def gpu_check(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """A small CIFAR-shaped .npz in the real file's format (uint8 images and labels)."""
    train, test = synthetic()
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, x_train=train.x[:1200], y_train=train.y[:1200].astype(np.uint8), x_test=test.x[:300],
             y_test=test.y[:300].astype(np.uint8))
    return path


@pytest.fixture(scope="module")
def quick_run(small_npz, tmp_path_factory):
    """gpu_check --quick into an --out an earlier check left its files in, and summary.md and study.json as they
    stood when the study began (read as "3/3" was printed)."""
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    out.mkdir()
    for name in ("summary.md", "bench.json", "run.json", "study.json"):
        (out / name).write_text('{"status": "an earlier check\'s"}')
    err = tmp_path_factory.mktemp("gpu_check_err") / "stderr"
    with err.open("w") as err_file, subprocess.Popen(
            ["bash", str(SCRIPT), "--data", str(small_npz), "--out", str(out), "--quick"], cwd=REPO,
            env=os.environ | {"PYTHON": sys.executable}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=err_file, text=True) as proc:
        # gpu_check()'s timeout: SIGTERM first, which gpu_check turns into stopping its step's processes.
        timed_out = threading.Event()
        watchdog = threading.Timer(600, lambda: (timed_out.set(), proc.terminate()))
        watchdog.daemon = True
        watchdog.start()
        try:
            lines, before_study = [], None
            for line in proc.stdout:
                if line.startswith("3/3"):
                    before_study = {name: (out / name).read_text() for name in ("summary.md", "study.json")}
                lines.append(line)
            proc.wait(timeout=60)
        finally:
            watchdog.cancel()
    assert not timed_out.is_set(), "gpu_check --quick ran over 10 minutes"
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines), err.read_text()), out, before_study


@pytest.fixture(scope="module")
def quick(quick_run):
    proc, out, _ = quick_run
    return proc, out


def test_quick_check_runs_every_step_and_prints_the_summary_it_writes(quick):
    proc, out = quick
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# gpu_check: cpu\n")
    for heading in ("## 1. Bench suite (ok", "## 2. The seed recipe on the data", "killed and resumed (ok)",
                    "## 3. A miniature study (ok)"):
        assert heading in summary, heading
    assert summary in proc.stdout


def test_the_summary_is_written_after_each_step_so_a_check_stopped_from_outside_leaves_what_it_measured(quick_run):
    _, out, before_study = quick_run
    summary = before_study["summary.md"]
    assert "## 1. Bench suite (ok" in summary and "killed and resumed (ok)" in summary
    assert "## 3. A miniature study (not reached)" in summary
    assert json.loads(before_study["study.json"]) == {"status": "not reached"}  # not the earlier check's
    assert json.loads((out / "study.json").read_text())["status"] == "ok"  # as it is written at the end


def test_quick_check_benchmarks_every_path_mode_and_concurrency(quick):
    _, out = quick
    report = json.loads((out / "bench.json").read_text())
    names = [r["name"] for r in report["measurements"]]
    assert names == ["seed style: classic, fp32, contiguous", "fast, eager", "model step (ceiling)", "evaluation",
                     "fast, compiled (default)", "1 process at once", "2 processes at once", "classic, recipe settings"]
    assert all(r["status"] == "ok" and r["images_per_s"] > 0 for r in report["measurements"])
    # On a CPU the recipe's settings are the seed's but channels_last (bf16 resolves to off): measured on their own.
    seed, recipe = report["measurements"][0], report["measurements"][-1]
    assert (seed["amp"], seed["channels_last"]) == (recipe["amp"], not recipe["channels_last"]) == ("off", False)
    assert all("same_as" not in r for r in report["measurements"])
    compiled = report["measurements"][4]
    assert compiled["compile"] == "default" and compiled["compile_s"] >= 0
    assert report["environment"]["device"] == "cpu"
    # What the figures say, from those figures: the final run's setups and how many processes train the most.
    found = report["conclusions"]
    eager, evaluation = report["measurements"][1], report["measurements"][3]
    per_epoch = {r["compile"]: 50_000 / r["images_per_s"] + evaluation["seconds_per_10k"] for r in (eager, compiled)}
    # Batch 16 divides the 50,000 images: no smaller last batch, so one compilation.
    assert [(s["compile"], s["seconds"]) for s in found["final_run"]["setups"]] == [
        ("off", pytest.approx(250 * per_epoch["off"])),
        ("default", pytest.approx(250 * per_epoch["default"] + compiled["compile_s"]))]
    assert "not_measured" not in found  # every measurement ran
    processes = report["measurements"][5:7]
    assert found["at_once"]["most"] == max(processes, key=lambda r: r["images_per_s"])["processes"]
    assert found["evaluation_s_per_10k"] == evaluation["seconds_per_10k"]


def test_quick_check_resumes_the_killed_run_for_its_last_two_epochs(quick):
    _, out = quick
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "ok"
    assert run["killed_after_epoch"] == run["epochs"] - 2 >= 1
    assert run["resumed_from_checkpoint"] and run["each_epoch_once"]
    assert [e["epoch"] for e in run["per_epoch"]] == list(range(1, run["epochs"] + 1))
    # At toy size the bench compiles with the eager backend: its compiled figures do not carry over, the run trains eagerly.
    assert run["compile"] == "off" and "--compile" not in run["command"]
    assert all(e["train_s"] > 0 and e["eval_s"] > 0 for e in run["per_epoch"])


def test_quick_check_runs_a_miniature_study_on_the_data(quick):
    _, out = quick
    study = json.loads((out / "study.json").read_text())
    assert study["status"] == "ok", study
    assert study["trials"] == 2 and study["complete"] + study["pruned"] == 2 and study["failed"] == 0
    assert study["final_epochs"] == 2 and 0 <= study["final_test_acc"] <= 1 and study["final_seeds"] == 1
    # No re-validation at toy size (the search tests have their own): the choice rests on one run, and the
    # summary says no more.
    assert study["best_runs"] == 1 and study["best_mean_value"] == study["best_value"]
    assert "re-validation" not in (out / "summary.md").read_text()


def test_the_summary_gives_the_mean_over_the_best_trials_runs_where_it_was_revalidated():
    gpu_check = gpu_check_module()
    study = {"best_runs": 3, "best_mean_value": 0.6123}
    assert gpu_check.revalidated(study) == ", mean 61.23% over 3 runs after re-validation"
    assert gpu_check.revalidated(study | {"best_runs": 1}) == ""


@pytest.mark.parametrize("make_args, fragment", [
    (lambda tmp: ["--data", str(tmp / "missing.npz"), "--out", str(tmp / "out")], "missing.npz: no such file"),
    (lambda tmp: ["--data", str(tmp / "afile"), "--out", str(tmp / "out")], "not a readable .npz"),
    (lambda tmp: ["--data", "NPZ", "--out", str(tmp / "afile")], "is a file, not a directory"),
    (lambda tmp: ["--out", str(tmp / "out")], "the following arguments are required: --data"),
    (lambda tmp: ["--data", "NPZ", "--out", str(tmp / "out"), "--minutes", "0"], "--minutes 0: must be > 0"),
], ids=["missing npz", "not an npz", "out is a file", "no data", "minutes 0"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, small_npz, make_args, fragment):
    (tmp_path / "afile").write_text("not a .npz\n")
    args = [str(small_npz) if a == "NPZ" else a for a in make_args(tmp_path)]
    proc = gpu_check(*args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert fragment in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def gpu_check_module():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    return gpu_check


def plan_of(final_run, quick=False, train_images=50_000, seconds=200.0):
    gpu_check = gpu_check_module()
    bench = {"report": {"conclusions": {"final_run": final_run}}} if final_run else {"status": "failed: timed out"}
    return gpu_check.run_plan(bench, gpu_check.Sizes(quick), train_images, seconds)


# As the bench writes them: compiling_s is one process's compilations (the full batch and the last, smaller one).
FINAL_RUN = {"fastest": "fast, compiled (reduce-overhead)", "setups": [
    {"name": "fast, eager", "compile": "off", "images_per_s": 5_500, "compiling_s": 0.0},
    {"name": "fast, compiled (reduce-overhead)", "compile": "reduce-overhead", "images_per_s": 27_500, "compiling_s": 40.0}]}


def test_the_real_data_run_trains_in_the_benchs_fastest_setup_for_as_many_epochs_as_fit():
    plan = plan_of(FINAL_RUN)
    # 200 s less the run's and the resumed run's compilations (2 x 40 s), at 2 s an epoch (50,000 images at
    # 27,500/s, and a tenth more for evaluation).
    assert plan == {"compile": "reduce-overhead", "epochs": 60, "why": "the bench's fastest setup for a final run"}
    eager_first = FINAL_RUN | {"fastest": "fast, eager"}
    assert plan_of(eager_first)["compile"] == "off" and plan_of(eager_first)["epochs"] == 20  # 200 s / 10 s


def test_a_fastest_setup_that_cannot_train_the_fewest_epochs_in_the_time_gives_way_to_one_that_can():
    # 82 s: 80 s of compiling leave 2 s, one epoch; eager trains 8 in them.
    plan = plan_of(FINAL_RUN, seconds=82.0)
    assert (plan["compile"], plan["epochs"]) == ("off", 8)
    assert plan["why"] == ("the bench's fastest for a final run (fast, compiled (reduce-overhead)) would not train 3 "
                           "epochs in 82 s; this setup trains the most in them")
    assert plan_of(FINAL_RUN, seconds=86.0)["compile"] == "reduce-overhead"  # 6 s: 3 epochs fit


def test_at_toy_size_or_without_the_benchs_figures_the_run_trains_eagerly_for_the_fewest_epochs():
    # 2 s at the eager speed: 512 images at 5,500/s and a tenth more for evaluation, 0.1024 s an epoch.
    assert plan_of(FINAL_RUN, quick=True, train_images=512, seconds=2.0) == {
        "compile": "off", "epochs": 19, "why": "at toy size the run trains eagerly"}
    assert plan_of(None) == {"compile": "off", "epochs": 3, "why": "the bench measured no training speed"}
    # Out of time already: still the fewest epochs that kill and resume.
    assert plan_of(FINAL_RUN, seconds=-50.0)["epochs"] == 3


def test_the_run_trains_in_what_the_bench_left_less_the_studys_quarter_or_as_long_as_asked():
    gpu_check = gpu_check_module()
    gpu = gpu_check.Sizes(quick=False)
    # 8 minutes: 300 s left after the bench; 120 s kept for the study; two process starts of 20 s; 90% of the rest.
    assert gpu_check.run_time(gpu, 300.0, 480.0, study_possible=True, run_seconds=None) == (pytest.approx(126.0), 180.0)
    assert gpu_check.run_time(gpu, 300.0, 480.0, study_possible=False, run_seconds=None) == (pytest.approx(234.0), 300.0)
    # --run-seconds: as long as asked, its timeout following it rather than --minutes.
    assert gpu_check.run_time(gpu, 300.0, 480.0, study_possible=True, run_seconds=400.0) == (400.0, 1500.0)
    # The bench overran: the run still gets a minute before it is stopped.
    assert gpu_check.run_time(gpu, 100.0, 480.0, study_possible=True, run_seconds=None) == (pytest.approx(-54.0), 60.0)
    assert gpu_check.run_time(gpu_check.Sizes(quick=True), 300.0, 480.0, True, None) == (2.0, 180.0)


def test_a_step_that_runs_out_of_time_is_stopped_with_every_process_it_started(tmp_path):
    gpu_check = gpu_check_module()
    pid_file = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pid_file}; wait"
    code, seconds = gpu_check.run_logged(["bash", "-c", script], tmp_path / "step.log", timeout=5.0)
    assert code is None and seconds < 30
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(child)  # the step's own child went with it
