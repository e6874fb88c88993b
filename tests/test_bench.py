"""python -m recipe.bench as a user runs it: a table of the three paths, then the same figures as JSON."""
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
PATHS = ["model step", "fast path", "classic path"]
TINY = ["--device", "cpu", "--width", "4", "--batch-size", "16", "--workers", "0"]
ROW = re.compile(r"^(model step|fast path|classic path) +(\S+) +(\S+) +(\S+)$")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One tiny benchmark through `python -m recipe.bench`, its output and its --json file."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "recipe.bench", *TINY, "--steps", "2", "--warmup", "1",
                           "--json", str(out)], cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text())


def test_bench_prints_a_table_of_the_three_paths_then_a_json_line(bench):
    proc, _ = bench
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ResNet34 width 4, batch 16, cpu, torch ")
    assert lines[1].split() == ["path", "images/s", "ms/step", "vs", "model", "step"]
    assert [ROW.match(line).group(1) for line in lines[2:5]] == PATHS, lines
    assert len(lines) == 6
    assert isinstance(json.loads(lines[5]), dict)
    assert proc.stderr == ""


def test_bench_json_says_the_device_the_torch_version_and_each_paths_speed(bench):
    _, report = bench
    assert report["device"] == "cpu"
    assert report["torch"] == torch.__version__
    assert (report["width"], report["batch_size"], report["steps"], report["warmup"]) == (4, 16, 2, 1)
    assert [r["path"] for r in report["results"]] == PATHS
    for r in report["results"]:
        assert r["images_per_s"] > 0 and r["ms_per_step"] > 0, r
        assert r["images_per_s"] * r["ms_per_step"] / 1000 == pytest.approx(16)  # images per step
    assert report["results"][0]["vs_model_step"] == 1.0
    for r in report["results"][1:]:
        assert r["vs_model_step"] == pytest.approx(r["images_per_s"] / report["results"][0]["images_per_s"])


def test_bench_json_file_and_json_line_are_the_same_report(bench):
    proc, report = bench
    assert json.loads(proc.stdout.splitlines()[-1]) == report


def test_bench_table_shows_the_figures_of_the_json(bench):
    proc, report = bench
    rows = {m.group(1): m.groups()[1:] for m in map(ROW.match, proc.stdout.splitlines()) if m}
    for r in report["results"]:
        assert rows[r["path"]] == (f"{r['images_per_s']:.0f}", f"{r['ms_per_step']:.1f}", f"{r['vs_model_step']:.2f}")
    assert f"torch {report['torch']}," in proc.stdout.splitlines()[0]


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
