"""python -m recipe.bench as a user runs it: a table of the measurements, then the same figures as JSON."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recipe.bench import main as bench_main

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
    assert len(lines) == 7
    assert isinstance(json.loads(lines[6]), dict)
    assert proc.stderr == ""


def test_bench_json_names_the_device_and_versions_and_has_one_record_per_measurement(bench):
    _, report = bench
    env = report["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["python"] and env["host_cpus"] >= 1
    assert [r["path"] for r in report["measurements"]] == PATHS
    for r in report["measurements"]:
        assert r["status"] == "ok" and r["images_per_s"] > 0, r
        assert (r["width"], r["batch_size"], r["amp"], r["channels_last"], r["compile"]) == (4, 16, "off", False, "off")
        assert (r["steps"], r["warmup"]) == (2, 1)
    for r in report["measurements"][:3]:
        assert r["images_per_s"] * r["ms_per_step"] / 1000 == pytest.approx(16)  # images per step
        assert r["images"] == 2 * 16
    evaluation = report["measurements"][3]
    assert evaluation["seconds_per_10k"] == pytest.approx(10_000 / evaluation["images_per_s"])


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
], ids=["concurrent 0", "unknown compile mode", "unknown path", "suite and concurrent", "timeout 0"])
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


@pytest.mark.parametrize("channels_last, same", [("auto", True), ("on", False)], ids=["auto", "on"])
def test_a_suite_setup_the_device_resolves_to_one_measured_already_is_measured_once(monkeypatch, channels_last, same):
    # On a CPU the recipe's CUDA settings resolve to off (bf16, and channels_last unless asked for): the seed's setup.
    from recipe import bench
    from recipe.config import RecipeConfig

    measured = []

    def fake(setup, path, *args, **kwargs):
        measured.append(path)
        return {"path": path, **bench.setup_of(setup, torch.device("cpu")), "status": "ok", "images_per_s": 1.0 + len(measured)}

    monkeypatch.setattr(bench, "in_this_process", fake)
    monkeypatch.setattr(bench, "concurrent", lambda *args, **kwargs: {"path": "fast", "status": "ok", "images_per_s": 1.0})
    config = RecipeConfig.from_dict({"device": "cpu", "width": 4, "channels_last": channels_last})
    seed, recipe = bench.run_suite(config, 1, 0, "eager", 10, log=lambda message: None)[:2]
    assert (seed["name"], recipe["name"]) == ("seed style: classic, fp32, contiguous", "classic, recipe settings")
    assert not seed["channels_last"] and recipe["channels_last"] == (not same)
    if same:
        assert recipe == seed | {"name": recipe["name"], "same_as": seed["name"]} and measured.count("classic") == 1
    else:
        assert "same_as" not in recipe and recipe["images_per_s"] != seed["images_per_s"] and measured.count("classic") == 2
