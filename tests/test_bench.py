"""python -m recipe.bench as a user runs it: a table of the measurements, then the same figures as JSON."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recipe.bench import main as bench_main

from conftest import running

REPO = Path(__file__).resolve().parent.parent
PATHS = ["model-step", "fast", "classic", "eval"]
TINY = ["--device", "cpu", "--width", "4", "--batch-size", "16", "--workers", "0"]
ROW = re.compile(r"^(model-step|fast|classic|eval) +(\S+) +(\S+) +(\S+) +(\S+)  (.*)$")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One tiny benchmark through `python -m recipe.bench`, its output and its --json file."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "recipe.bench", *TINY, "--steps", "2", "--warmup", "1",
                           "--paths", ",".join(PATHS), "--json", str(out)], cwd=REPO, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text())


def test_bench_prints_a_table_of_the_paths_then_a_json_line(bench):
    proc, _ = bench
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ResNet34, cpu, torch ")
    assert lines[1].split()[:5] == ["measurement", "images/s", "ms/step", "vs", "model"]
    assert [ROW.match(line).group(1) for line in lines[2:6]] == PATHS, lines
    # Then what the figures say: a final run projected for the one training setup measured, and evaluation.
    assert lines[6] == "what the figures say:"
    assert lines[7].startswith("a 250-epoch final run, projected"), lines
    assert re.fullmatch(r"  fast +\d+\.\d min  \(\d+\.\d\d s an epoch\)  <- fastest", lines[8]), lines
    assert lines[9].startswith("evaluation: ") and len(lines) == 11
    assert isinstance(json.loads(lines[10]), dict)
    assert proc.stderr == ""


def test_bench_json_names_the_device_and_versions_and_has_one_record_per_measurement(bench):
    _, report = bench
    env = report["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["python"] and env["host_cpus"] >= 1
    assert [r["path"] for r in report["measurements"]] == PATHS
    for r in report["measurements"]:
        assert r["status"] == "ok" and r["images_per_s"] > 0, r
        # On a CPU --amp auto resolves to off and --channels-last auto to on.
        assert (r["width"], r["batch_size"], r["amp"], r["channels_last"], r["compile"]) == (4, 16, "off", True, "off")
        assert (r["steps"], r["warmup"]) == (2, 1)
    for r in report["measurements"][:3]:
        assert r["images_per_s"] * r["ms_per_step"] / 1000 == pytest.approx(16)  # images per step
        assert r["images"] == 2 * 16
    evaluation = report["measurements"][3]
    assert evaluation["seconds_per_10k"] == pytest.approx(10_000 / evaluation["images_per_s"])
    # Whole passes over the 2,000 evaluation images on a CPU, as many as hold 2 batches of 4 x 16: one.
    assert (evaluation["passes"], evaluation["images"]) == (1, 2_000)


def test_bench_json_file_and_json_line_are_the_same_report(bench):
    proc, report = bench
    assert json.loads(proc.stdout.splitlines()[-1]) == report


def test_bench_table_shows_the_figures_of_the_json(bench):
    proc, report = bench
    rows = {m.group(1): m.groups()[1:5] for m in map(ROW.match, proc.stdout.splitlines()) if m}
    ceiling = report["measurements"][0]["images_per_s"]
    for r in report["measurements"][:3]:
        assert rows[r["path"]] == (f"{r['images_per_s']:.0f}", f"{r['ms_per_step']:.1f}",
                                   f"{r['images_per_s'] / ceiling:.2f}", "-")
    assert f"torch {report['environment']['torch']}," in proc.stdout.splitlines()[0]


def test_bench_concurrent_processes_report_the_aggregate_and_each_process(tmp_path, capsys):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(4)  # the bench's own threads, shared out: 2 processes train on 2 each
    try:
        code, stdout, err = call([*TINY, "--steps", "3", "--warmup", "1", "--concurrent", "2", "--json", str(out)],
                                 capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    [record] = json.loads(out.read_text())["measurements"]  # no CUDA MPS on a CPU
    assert record["status"] == "ok" and record["processes"] == 2 and record["mps"] is False
    assert len(record["per_process_images_per_s"]) == 2 and record["images"] == 2 * 3 * 16
    # The aggregate spans from the first process's start to the last one's end: no more than their sum.
    assert 0 < record["images_per_s"] <= sum(record["per_process_images_per_s"]) * 1.0001
    assert record["per_process_threads"] == [2, 2]
    assert "per process" in stdout and "(2 threads each)" in stdout


def call(argv: list[str], capsys) -> tuple[int | None, str, str]:
    try:
        code = bench_main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code, out: str, err: str, *fragments: str) -> None:
    assert code == 2, (code, err)
    assert "Traceback" not in err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert out == "", out  # refused before any benchmarking
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--warmup", "-1"]], ids=["steps 0", "warmup -1"])
def test_bench_bad_step_counts_are_one_line_and_exit_2(tmp_path, capsys, argv):
    code, out, err = call([*TINY, *argv, "--json", str(tmp_path / "bench.json")], capsys)
    assert_usage_error(code, out, err, "--steps must be >= 1", "--warmup >= 0")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, fragment", [
    (["--concurrent", "0"], "--concurrent 0: must be >= 1"),
    (["--compile", "fastest"], "invalid choice: 'fastest'"),
    (["--paths", "fast,turbo"], "--paths fast,turbo: expected"),
    (["--suite", "--concurrent", "2"], "give --suite or --concurrent"),
    (["--timeout", "0"], "--timeout 0: must be > 0"),
    (["--suite", "--budget", "0"], "--budget 0: must be > 0 seconds"),
    (["--budget", "60"], "goes with --suite"),
], ids=["concurrent 0", "unknown compile mode", "unknown path", "suite and concurrent", "timeout 0", "budget 0",
        "budget without suite"])
def test_bench_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, fragment):
    code, out, err = call([*TINY, *argv, "--json", str(tmp_path / "bench.json")], capsys)
    assert_usage_error(code, out, err, fragment)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_on_cuda_without_cuda_is_one_line_and_exit_2(tmp_path, capsys):
    code, out, err = call(["--device", "cuda", "--json", str(tmp_path / "bench.json")], capsys)
    assert_usage_error(code, out, err, "'cuda'", "--device cpu")
    assert list(tmp_path.iterdir()) == []


def test_python_m_recipe_bench_bad_input_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "recipe.bench", *TINY, "--steps", "0"], cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_bench_json_into_an_unwritable_path_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a directory\n")
    target = tmp_path / "a-file" / "bench.json"
    code, out, err = call([*TINY, "--steps", "1", "--warmup", "0", "--json", str(target)], capsys)
    assert_usage_error(code, out, err, str(target))
    assert (tmp_path / "a-file").read_text() == "not a directory\n"


def test_on_a_gpu_each_suite_measurement_has_a_process_of_its_own_within_its_timeout():
    # The suite's path on a GPU, here on the CPU: the same measurement, run as a child `python -m recipe.bench`.
    from recipe import bench
    from recipe.config import RecipeConfig

    config = RecipeConfig.from_dict({"device": "cpu", "width": 4, "batch_size": 16, "workers": 0})
    record = bench.in_subprocess(config, "model-step", 2, 1, "eager", timeout=300)
    assert record["status"] == "ok" and record["path"] == "model-step" and record["images"] == 2 * 16
    assert record["images_per_s"] > 0 and (record["width"], record["batch_size"]) == (4, 16)
    late = bench.in_subprocess(config, "model-step", 2, 1, "eager", timeout=0.01)
    assert late["status"] == "timed out after 0 s" and late["path"] == "model-step" and "images_per_s" not in late


def test_on_a_cpu_a_suite_measurement_that_fails_is_a_record_saying_why(monkeypatch):
    from recipe import bench
    from recipe.config import RecipeConfig

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(bench, "measure", broken)
    config = RecipeConfig.from_dict({"device": "cpu", "width": 4})
    record = bench.in_this_process(config, "fast", 2, 1, "eager")
    assert record == {"path": "fast", **bench.setup_of(config, torch.device("cpu")),
                      "status": "failed: RuntimeError: out of memory"}


@pytest.mark.parametrize("channels_last, same", [("off", True), ("auto", False)], ids=["off", "auto"])
def test_a_suite_setup_the_device_resolves_to_one_measured_already_is_measured_once(monkeypatch, channels_last, same):
    # On a CPU the recipe's bf16 resolves to off, and so, with channels_last off, its settings are the seed's setup.
    from recipe import bench
    from recipe.config import RecipeConfig

    measured = []

    def fake(setup, path, *args, **kwargs):
        measured.append(path)
        return {"path": path, **bench.setup_of(setup, torch.device("cpu")), "status": "ok", "images_per_s": 1.0 + len(measured)}

    monkeypatch.setattr(bench, "in_this_process", fake)
    monkeypatch.setattr(bench, "concurrent", lambda *args, **kwargs: {"path": "fast", "status": "ok", "images_per_s": 1.0})
    config = RecipeConfig.from_dict({"device": "cpu", "width": 4, "channels_last": channels_last})
    records = {r["name"]: r for r in bench.run_suite(config, 1, 0, "eager", 10, log=lambda message: None)}
    seed, recipe = records["seed style: classic, fp32, contiguous"], records["classic, recipe settings"]
    assert not seed["channels_last"] and recipe["channels_last"] == (not same)
    if same:
        assert recipe == seed | {"name": recipe["name"], "same_as": seed["name"]} and measured.count("classic") == 1
    else:
        assert "same_as" not in recipe and recipe["images_per_s"] != seed["images_per_s"] and measured.count("classic") == 2


def test_the_suite_on_a_gpu_measures_the_decisive_setups_first_and_under_mps_too():
    from recipe import bench
    from recipe.config import RecipeConfig

    plan = bench.suite_plan(RecipeConfig(), torch.device("cuda"), mps=True)
    assert [m.name for m in plan] == [
        "seed style: classic, fp32, contiguous", "fast, eager", "model step (ceiling)", "evaluation",
        "fast, compiled (reduce-overhead)", "1 process at once", "2 processes at once", "4 processes at once",
        "fast, compiled (default)", "2 processes at once under MPS", "4 processes at once under MPS",
        "classic, recipe settings", "fast, compiled (max-autotune-no-cudagraphs)"]
    assert [m.setup.compile for m in plan if m.name.startswith("fast, compiled")] == [
        "reduce-overhead", "default", "max-autotune-no-cudagraphs"]
    seed = plan[0].setup
    assert (seed.amp, seed.channels_last, seed.compile) == ("off", "off", "off")
    assert [(m.processes, m.mps) for m in plan if m.processes] == [(1, False), (2, False), (4, False), (2, True), (4, True)]
    # Processes at once train as a study's trials do: the recipe's settings as given, not forced eager.
    given = bench.suite_plan(RecipeConfig(compile="reduce-overhead"), torch.device("cuda"))
    assert {m.setup.compile for m in given if m.processes} == {"reduce-overhead"}
    assert {m.setup.compile for m in plan if m.processes} == {"off"}


def test_the_suite_starts_no_measurement_once_its_budget_is_spent_and_gives_the_last_what_is_left(monkeypatch):
    from recipe import bench
    from recipe.config import RecipeConfig

    now = [100.0]
    timeouts = {}

    def fake(setup, path, *args, **kwargs):
        now[0] += 4.0  # each measurement takes 4 s on the suite's clock
        return {"path": path, **bench.setup_of(setup, torch.device("cpu")), "status": "ok", "images_per_s": 1.0}

    def fake_concurrent(setup, n, steps, warmup, backend, timeout, mps=False):
        timeouts[n] = timeout
        now[0] += 4.0
        return {"path": "fast", "processes": n, "mps": mps, "status": "ok", "images_per_s": 1.0}

    monkeypatch.setattr(bench, "_clock", lambda: now[0])
    monkeypatch.setattr(bench, "in_this_process", fake)
    monkeypatch.setattr(bench, "concurrent", fake_concurrent)
    config = RecipeConfig.from_dict({"device": "cpu", "width": 4, "channels_last": "off"})
    logged = []
    # Measured on a CPU: seed, fast eager, model step, evaluation, compiled, 1 and 2 processes, classic (the seed's
    # setup: channels_last off, and amp resolves to off).
    records = bench.run_suite(config, 1, 0, "eager", timeout=10, log=logged.append, budget=22)
    assert [r["status"] for r in records] == ["ok"] * 6 + ["skipped: the suite's budget of 22 s was spent", "ok"]
    assert timeouts == {1: 2.0}  # what the budget had left: less than the measurement's own timeout
    skipped = records[6]
    assert (skipped["name"], skipped["processes"], skipped["mps"], skipped["width"]) == ("2 processes at once", 2, False, 4)
    assert "images_per_s" not in skipped and "2 processes at once: skipped, the suite's budget of 22 s was spent" in logged
    assert records[7]["same_as"] == records[0]["name"]  # measured already, so not skipped


def fast(compile_mode, images_per_s, compile_s=None, batch_size=128, **extra):
    record = {"path": "fast", "compile": compile_mode, "images_per_s": images_per_s, "batch_size": batch_size,
              "status": "ok", **extra}
    return record | ({"compile_s": compile_s} if compile_s is not None else {})


def test_the_final_run_projection_weighs_compile_time_against_the_epochs_it_speeds_up():
    from recipe.bench import conclusions

    evaluation = {"path": "eval", "seconds_per_10k": 0.2, "images_per_s": 50_000, "status": "ok"}
    seed = {"name": "seed style: classic, fp32, contiguous", "path": "classic", "compile": "off", "images_per_s": 5_000,
            "status": "ok"}
    eager = fast("off", 10_000, name="fast, eager")  # 5 s an epoch + 0.2 s evaluating: 1,300 s for 250 epochs
    quick = fast("reduce-overhead", 25_000, compile_s=60, name="fast, compiled (reduce-overhead)")  # 2.2 s: 550 + 120
    slow = fast("max-autotune-no-cudagraphs", 50_000, compile_s=600, name="fast, compiled (max-autotune-no-cudagraphs)")
    found = conclusions([seed, eager, quick, slow, evaluation], epochs=250)
    final = found["final_run"]
    assert [(s["name"], s["seconds"]) for s in final["setups"]] == [
        ("fast, eager", pytest.approx(1300)), ("fast, compiled (reduce-overhead)", pytest.approx(670)),
        ("fast, compiled (max-autotune-no-cudagraphs)", pytest.approx(1500))]
    assert (final["fastest"], final["compile"], final["epochs"]) == ("fast, compiled (reduce-overhead)", "reduce-overhead", 250)
    assert found["vs_seed_style"] == pytest.approx(5.0) and found["evaluation_s_per_10k"] == 0.2
    # A shorter run does not win back the 20 minutes of compiling: max-autotune loses; at 10 epochs eager wins.
    assert conclusions([eager, quick, slow, evaluation], epochs=10)["final_run"]["compile"] == "off"
    # A batch size that divides the 50,000 images leaves no smaller last batch: one compilation, not two.
    [once] = conclusions([fast("default", 25_000, compile_s=60, batch_size=125), evaluation], epochs=250)["final_run"]["setups"]
    assert once["compiling_s"] == 60 and once["seconds"] == pytest.approx(250 * 2.2 + 60)


def test_what_failed_was_skipped_or_measured_once_decides_nothing():
    from recipe.bench import conclusion_lines, conclusions

    evaluation = {"path": "eval", "seconds_per_10k": 0.2, "status": "ok"}
    failed = fast("reduce-overhead", None, status="timed out after 150 s")
    copy = fast("default", 99_999, compile_s=0, same_as="fast, eager")
    found = conclusions([fast("off", 10_000), failed, copy, evaluation], epochs=250)
    assert [s["compile"] for s in found["final_run"]["setups"]] == ["off"] and "vs_seed_style" not in found
    # ... and is named after what was decided without it.
    assert found["not_measured"] == [{"name": "fast, compiled (reduce-overhead)", "status": "timed out after 150 s"}]
    assert conclusion_lines(found)[-1] == "not measured: fast, compiled (reduce-overhead) (timed out after 150 s)"
    assert conclusions([fast("off", 10_000)], epochs=250) == {}  # no evaluation: no final run to project
    # Nothing decided: what was not measured is named all the same.
    assert conclusions([failed, evaluation], epochs=250) == {"evaluation_s_per_10k": 0.2,
                                                             "not_measured": found["not_measured"]}


def test_the_processes_at_once_that_train_the_most_images_are_named_with_their_gain_over_one():
    from recipe.bench import conclusions, conclusion_lines

    def at_once(n, images_per_s, mps=False, status="ok"):
        return {"path": "fast", "processes": n, "mps": mps, "images_per_s": images_per_s, "status": status}

    late = at_once(4, 99_000, mps=True, status="skipped: the suite's budget of 180 s was spent")
    found = conclusions([at_once(1, 8_000), at_once(2, 14_000), at_once(4, 15_000), at_once(2, 15_500, mps=True), late],
                        epochs=250)
    assert found["at_once"]["most"] == 2 and found["at_once"]["mps"] is True
    assert [round(a["vs_one"], 4) for a in found["at_once"]["measured"]] == [1.0, 1.75, 1.875, 1.9375]
    assert conclusion_lines(found) == [
        "what the figures say:",
        "processes training at once, images/s in all: 1: 8000, 2: 14000 (1.75x), 4: 15000 (1.88x), "
        "2 (MPS): 15500 (1.94x); the most: 2 under MPS",
        "not measured: fast (skipped: the suite's budget of 180 s was spent)"]
    # One count alone (the others skipped, or --concurrent N, with or without MPS) compares nothing: no "most".
    alone = conclusions([at_once(1, 8_000), at_once(2, 1, status="timed out after 150 s")], epochs=250)
    assert "most" not in alone["at_once"] and alone["not_measured"] == [{"name": "fast", "status": "timed out after 150 s"}]
    assert "most" not in conclusions([at_once(2, 14_000), at_once(2, 15_500, mps=True)], epochs=250)["at_once"]


def test_on_a_gpu_the_suite_caps_each_process_by_its_budget_and_says_which_it_cut_short(monkeypatch):
    from recipe import bench
    from recipe.config import RecipeConfig

    now = [0.0]
    timeouts = []

    def child(setup, path, steps, warmup, backend, timeout):
        timeouts.append(timeout)
        now[0] += min(timeout, 40.0)  # each takes 40 s, or is killed at its timeout
        if timeout < 40.0:
            return {"path": path, "status": f"timed out after {timeout:.0f} s"}
        return {"path": path, "status": "ok", "images_per_s": 1.0}

    monkeypatch.setattr(bench, "_clock", lambda: now[0])
    monkeypatch.setattr(bench, "resolve_device", lambda config: torch.device("cuda"))
    monkeypatch.setattr(bench, "setup_of", lambda setup, device: {"compile": setup.compile, "amp": setup.amp,
                                                                   "channels_last": setup.channels_last})
    monkeypatch.setattr(bench, "mps_available", lambda device: False)
    monkeypatch.setattr(bench, "in_subprocess", child)
    monkeypatch.setattr(bench, "concurrent", lambda setup, n, steps, warmup, backend, timeout, mps=False:
                        child(setup, "fast", steps, warmup, backend, timeout) | {"processes": n, "mps": mps})

    def suite(budget):
        now[0] = 0.0
        timeouts.clear()
        return [r["status"] for r in bench.run_suite(RecipeConfig(), 1, 0, "inductor", timeout=150, log=lambda m: None,
                                                     budget=budget)]

    spent = "skipped: the suite's budget of {:g} s was spent"
    # Seed style, fast eager at 0 and 40 s; the model step gets the 15 s left, and is cut short.
    assert suite(95) == ["ok", "ok", "cut short: the suite's budget of 95 s ran out after 15 s of it"] + [spent.format(95)] * 8
    assert timeouts == [95, 55, 15]
    # 10 s left: less than a process on a GPU needs to start; nothing more is started.
    assert suite(90) == ["ok", "ok"] + ["skipped: the suite's budget of 90 s had under 15 s left"] * 9
    assert timeouts == [90, 50]
    # No budget: every measurement has its own timeout, however short.
    assert suite(None) == ["ok"] * 11 and timeouts == [150] * 11


def test_a_reduce_overhead_measurement_without_cuda_graphs_says_so():
    # Inductor counts each graph it could not record as a CUDA graph (it then runs it without, silently).
    from torch._dynamo.utils import counters

    from recipe.bench import cudagraph_skips, table

    before = cudagraph_skips()
    counters["inductor"]["cudagraph_skips"] += 2
    try:
        assert cudagraph_skips() == before + 2
    finally:
        counters["inductor"]["cudagraph_skips"] -= 2
    record = {"name": "fast, compiled (reduce-overhead)", "path": "fast", "compile": "reduce-overhead", "width": 64,
              "batch_size": 128, "amp": "bfloat16", "channels_last": True, "images_per_s": 9_000.0, "ms_per_step": 14.2,
              "compile_s": 30.0, "cudagraph_skips": 2, "status": "ok"}
    report = {"environment": {"device": "NVIDIA H100", "torch": "2.11", "python": "3.12", "host_cpus": 16},
              "measurements": [record, record | {"cudagraph_skips": 0, "name": "recorded"}]}
    lines = table(report).splitlines()
    assert lines[2].endswith("; CUDA graphs skipped 2 times (TORCH_LOGS=cudagraphs says why)")
    assert "CUDA graphs" not in lines[3]



# A stand-in for nvidia-cuda-mps-control, which a CPU machine lacks. -d starts a "daemon" and a "server" (copies
# of sleep named as MPS processes are, which the kernel shows as "nvidia-cuda-mps") and a process of another name,
# and logs them as the real daemon logs its start and its servers (the third one under a PID the log names, as a
# PID that has gone to another process since would be), with the "NEW CLIENT" lines FAKE_MPS_CLIENTS asks for
# (the real daemon logs one per CUDA process that reaches it). quit ends the daemon, or hangs where
# FAKE_MPS_QUIT=hang.
FAKE_MPS_CONTROL = """#!/usr/bin/env bash
log="$CUDA_MPS_LOG_DIRECTORY/control.log"
if [ "${1:-}" = -d ]; then
  "$FAKE_MPS_BIN/nvidia-cuda-mps-daemon" 600 </dev/null >/dev/null 2>&1 &
  daemon=$!
  echo "[2026-11-28 00:00:00.000 Control $daemon] Starting control daemon using socket $CUDA_MPS_PIPE_DIRECTORY/control" >> "$log"
  "$FAKE_MPS_BIN/nvidia-cuda-mps-server" 600 </dev/null >/dev/null 2>&1 &
  echo "[2026-11-28 00:00:01.000 Control $!] Starting new server $! for user 0" >> "$log"
  echo "$daemon $!" > "$FAKE_MPS_PIDS"
  sleep 600 </dev/null >/dev/null 2>&1 &
  echo "[2026-11-28 00:00:01.000 Control $!] Starting new server $! for user 0" >> "$log"
  echo "$!" >> "$FAKE_MPS_PIDS"
  for i in $(seq 1 "$FAKE_MPS_CLIENTS"); do
    echo "[2026-11-28 00:00:02.000 Control $daemon] NEW CLIENT $i from user 0" >> "$log"
  done
  exit 0
fi
read -r command
[ "$command" = quit ] || exit 1
[ "${FAKE_MPS_QUIT:-}" = hang ] && exec sleep 600  # exec: the process the timeout kills
kill $(head -1 "$FAKE_MPS_PIDS")
"""


@pytest.mark.parametrize("clients, quit", [(1, "ok"), (0, "hang")], ids=["reached", "not reached, quit hangs"])
def test_processes_under_mps_count_only_if_they_reached_the_daemon_which_is_stopped_even_when_quit_hangs(
        tmp_path, monkeypatch, clients, quit):
    from recipe import bench
    from recipe.config import RecipeConfig
    bin_dir, pids_file = tmp_path / "bin", tmp_path / "pids"
    bin_dir.mkdir()
    (bin_dir / bench.MPS_CONTROL).write_text(FAKE_MPS_CONTROL)
    (bin_dir / bench.MPS_CONTROL).chmod(0o755)
    for name in ("nvidia-cuda-mps-daemon", "nvidia-cuda-mps-server"):
        shutil.copy(shutil.which("sleep"), bin_dir / name)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MPS_BIN", str(bin_dir))
    monkeypatch.setenv("FAKE_MPS_PIDS", str(pids_file))
    monkeypatch.setenv("FAKE_MPS_CLIENTS", str(clients))
    monkeypatch.setenv("FAKE_MPS_QUIT", quit)
    monkeypatch.setattr(bench.MpsDaemon, "QUIT_TIMEOUT_S", 2.0)
    config = RecipeConfig(data="synthetic", width=4, batch_size=16, device="cpu", workers=0)
    record = bench.concurrent(config, 1, steps=2, warmup=1, backend="eager", timeout=120, mps=True)
    (daemon, server), (other,) = [map(int, line.split()) for line in pids_file.read_text().splitlines()]
    try:
        assert record["mps"] is True
        if clients:
            assert record["status"] == "ok" and "mps_stop" not in record
            assert wait_until(lambda: not running(daemon) and not running(server))
        else:
            assert record["status"] == "failed: 0 of the 1 processes reached the MPS daemon (its control.log); the " \
                                        "others ran without MPS"
            assert record["mps_stop"] == \
                f"the MPS daemon did not quit (TimeoutExpired): killed it and its servers (PIDs {daemon}, {server})"
            assert wait_until(lambda: not running(daemon) and not running(server))
            assert running(other)  # named in the log, but no MPS process: left alone
    finally:
        for pid in (daemon, server, other):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_until(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()
