"""The command lines as a user meets them: bad input is one line on stderr and exit status 2,
with nothing written; a good run prints a line per epoch and leaves a whole run directory;
Ctrl-C stops a run so that --resume finishes it.

Most cases call each CLI's main(argv) in-process (recipe.cli.fail raises SystemExit(2)); one
case per CLI runs the real `python -m` entry point in a subprocess to show it behaves the same.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import fcntl
import json
import os
import pty
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pytest

import recipe.train
import search
from recipe.cli import flag
from recipe.train import main as train_main
from search import report
from search import run as search_run
from search import study as search_study
from search.study import STUDIES_DIR

from conftest import tiny_config

REPO = Path(__file__).resolve().parent.parent


def tiny_flags(**changes) -> list[str]:
    """The command-line flags of tests' tiny config (synthetic data, width 4, 128 images)."""
    config = tiny_config(**{"subset": 128, "eval_subset": 100, "epochs": 2, **changes})
    names = ("data", "width", "subset", "eval_subset", "batch_size", "epochs", "device", "workers")
    return [part for name in names for part in (flag(name), str(getattr(config, name)))]


@dataclass
class Result:
    code: int | None
    out: str
    err: str


def call(main, argv: list[str], capsys) -> Result:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def assert_usage_error(result: Result, *fragments: str) -> None:
    """Exit status 2, exactly one line on stderr (no traceback) that says each fragment, nothing on stdout."""
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err, result.err
    assert result.err.startswith("error: ") and result.err.endswith("\n") and result.err.count("\n") == 1, result.err
    assert result.out == "", result.out
    for fragment in fragments:
        assert fragment in result.err, (fragment, result.err)


def assert_one_line_from_python_m(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


def python_m(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def tree(root: Path) -> dict[str, object]:
    """Every file and directory under root, with each file's bytes and modification time."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---- python -m recipe.train: bad input --------------------------------------------------------

@pytest.mark.parametrize("argv, fragments", [
    (["--lr", "-1"], ["lr", "> 0"]),
    (["--dropout", "1.5"], ["dropout", "[0, 1)"]),
    (["--device", "gpu"], ["--device", "'gpu'", "cpu"]),
    (["--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
    (["--epochs", "ten"], ["--epochs", "'ten'", "int"]),
], ids=["negative lr", "dropout 1.5", "device gpu", "unknown flag", "epochs not a number"])
def test_train_rejects_a_bad_flag_value_in_one_line_and_writes_nothing(work, capsys, argv, fragments):
    before = tree(work)
    result = call(train_main, [*tiny_flags(), "--out", str(work / "run"), *argv], capsys)
    assert_usage_error(result, *fragments)
    assert tree(work) == before


def test_train_without_cifar100_on_disk_says_to_add_download(work, capsys):
    (work / "data").mkdir()
    before = tree(work)
    result = call(train_main, ["--data", "cifar100", "--data-dir", str(work / "data"), "--out", str(work / "run")],
                  capsys)
    assert_usage_error(result, "CIFAR-100 not found", "--download")
    assert tree(work) == before


class Terminal(io.StringIO):
    """stdin of a user at a terminal who types the given answer."""

    def isatty(self) -> bool:
        return True


DOWNLOAD_PROMPT = "Download it now (about 170 MB)? [y/N]"


def test_train_at_a_terminal_asks_before_downloading_and_no_means_nothing_is_fetched(work, capsys, monkeypatch,
                                                                                      cifar100_server):
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    before = tree(work)
    result = call(train_main, ["--data", "cifar100", "--data-dir", str(work / "data"), "--out", str(work / "run")],
                  capsys)
    assert DOWNLOAD_PROMPT in result.out and str(work / "data") in result.out
    assert_usage_error(Result(result.code, "", result.err), "CIFAR-100 not found", "--download")
    assert tree(work) == before


@pytest.mark.parametrize("how", ["answers yes at the prompt", "--download"])
def test_cifar100_is_downloaded_on_first_use_and_trained_on(work, capsys, monkeypatch, cifar100_server, how):
    monkeypatch.setattr(sys, "stdin", Terminal("y\n" if how.startswith("answers") else ""))
    data, out = work / "data", work / "run"
    argv = [*tiny_flags(data="cifar100", subset=100, eval_subset=50, epochs=1), "--data-dir", str(data),
            "--out", str(out)] + (["--download"] if how == "--download" else [])
    result = call(train_main, argv, capsys)
    assert result.code == 0, result.err
    assert (DOWNLOAD_PROMPT in result.out) == how.startswith("answers")
    # torchvision's own files, unpacked where the user said, hold what the server sent.
    from torchvision.datasets import CIFAR100
    train, test = CIFAR100(str(data), train=True), CIFAR100(str(data), train=False)
    np.testing.assert_array_equal(train.data, cifar100_server["train"][0])
    np.testing.assert_array_equal(test.data, cifar100_server["test"][0])
    assert json.loads((out / "config.json").read_text())["data"] == "cifar100"
    assert len(read_metrics(out)) == 1
    # The second run finds the data and asks nothing.
    monkeypatch.setattr(sys, "stdin", Terminal(""))
    again = call(train_main, [str(work / "again") if a == str(out) else a for a in argv if a != "--download"], capsys)
    assert again.code == 0 and DOWNLOAD_PROMPT not in again.out, again.err


@pytest.mark.parametrize("served", ["nothing", "a corrupted archive"])
def test_a_failed_download_is_one_line_saying_why_and_where_to_get_the_data(work, capsys, cifar100_server,
                                                                            monkeypatch, served):
    from torchvision.datasets import CIFAR100
    if served == "nothing":
        monkeypatch.setattr(CIFAR100, "url", CIFAR100.url.replace(CIFAR100.filename, "missing.tar.gz"))
    else:
        monkeypatch.setattr(CIFAR100, "tgz_md5", "0" * 32)
    url = CIFAR100.url
    result = call(train_main, [*tiny_flags(data="cifar100"), "--data-dir", str(work / "data"), "--download",
                               "--out", str(work / "run")], capsys)
    # torchvision's own "Downloading URL to PATH" (on stdout, in older torchvision: 0.19 has it, 0.26 not) and its
    # progress bar (stderr) may come first; then one line, and no traceback.
    out = "".join(line for line in result.out.splitlines(keepends=True) if not line.startswith(f"Downloading {url} "))
    last = result.err.splitlines()[-1] + "\n"
    assert_usage_error(Result(result.code, out, last), "CIFAR-100 could not be downloaded into",
                       str(work / "data"), "404" if served == "nothing" else "corrupted", url)
    assert "Traceback" not in result.err
    assert not (work / "run").exists()


def test_train_with_a_missing_npz_says_which_file(work, capsys):
    missing = work / "missing.npz"
    before = tree(work)
    result = call(train_main, ["--data", str(missing), "--out", str(work / "run")], capsys)
    assert_usage_error(result, str(missing), "no such file")
    assert tree(work) == before


class RunsOnLoad:
    """A pickled object that, were it unpickled, would make a directory: proof that code in a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_train_on_an_npz_holding_an_object_array_is_one_line_and_unpickles_nothing(work, capsys):
    marker = work / "code-ran"
    data = work / "objects.npz"
    images = np.zeros((100, 32, 32, 3), np.uint8)
    labels = np.array([RunsOnLoad(marker)] * 100, dtype=object)
    np.savez(data, x_train=images, y_train=labels, x_test=images, y_test=np.arange(100) % 100)
    before = tree(work)
    result = call(train_main, [*tiny_flags(), "--data", str(data), "--out", str(work / "run")], capsys)
    assert_usage_error(result, str(data), "not a readable .npz of arrays")
    assert not marker.exists() and tree(work) == before


def test_train_into_an_unwritable_out_says_it_cannot_write_there(work, capsys):
    (work / "a-file").write_text("not a directory\n")
    before = tree(work)
    result = call(train_main, [*tiny_flags(), "--out", str(work / "a-file" / "run")], capsys)
    assert_usage_error(result, str(work / "a-file" / "run"), "cannot write there")
    assert tree(work) == before


def test_train_resume_with_no_checkpoint_says_so(work, capsys):
    (work / "run").mkdir()
    before = tree(work)
    result = call(train_main, [*tiny_flags(), "--out", str(work / "run"), "--resume"], capsys)
    assert_usage_error(result, "last.pt", "no checkpoint")
    assert tree(work) == before


def test_train_resume_needs_out(work, capsys):
    before = tree(work)
    result = call(train_main, [*tiny_flags(), "--resume"], capsys)
    assert_usage_error(result, "--resume", "--out")
    assert tree(work) == before


def test_train_study_without_from_study_is_refused(work, capsys):
    before = tree(work)
    result = call(train_main, ["--study", "smoke", "--out", str(work / "run")], capsys)
    assert_usage_error(result, "--study", "--from-study")
    assert tree(work) == before


def test_train_from_study_with_no_study_in_the_results_dir_says_to_run_a_search(work, capsys):
    (work / "results").mkdir()
    before = tree(work)
    result = call(train_main, ["--from-study", "best", "--results-dir", str(work / "results"),
                               "--out", str(work / "run")], capsys)
    assert_usage_error(result, "no finished study", "python -m search.run")
    assert tree(work) == before


def test_python_m_recipe_train_bad_input_is_one_line_and_exit_2(tmp_path):
    missing, out = tmp_path / "missing.npz", tmp_path / "run"
    proc = python_m("recipe.train", "--data", str(missing), "--device", "cpu", "--out", str(out))
    assert_one_line_from_python_m(proc, str(missing), "no such file")
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


# Training in a process where search, Ray and Optuna cannot be imported (as on a machine without them): every
# recipe module imports, a run trains and a study's best.json is trained again.
WITHOUT_SEARCH = """
import importlib, json, pkgutil, sys
for name in ("search", "ray", "optuna"):
    sys.modules[name] = None  # an import of it, or of anything in it, raises ImportError
import recipe
from recipe.train import main
for module in pkgutil.iter_modules(recipe.__path__):
    importlib.import_module(f"recipe.{module.name}")
flags, out, results = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
assert main([*flags, "--out", f"{out}/plain"]) == 0
assert main(["--from-study", "best", "--results-dir", results, "--out", f"{out}/best"]) == 0
"""


def test_recipe_trains_and_reruns_a_studys_best_without_search_ray_or_optuna(tmp_path):
    study = tmp_path / "results" / "s"
    study.mkdir(parents=True)
    final = tiny_config(epochs=1, lr=0.05, seed=2)
    (study / "best.json").write_text(json.dumps({"trial_id": 3, "value": 0.5, "final_config": final.to_dict()}))
    proc = subprocess.run([sys.executable, "-c", WITHOUT_SEARCH, json.dumps(tiny_flags(epochs=1)), str(tmp_path),
                           str(tmp_path / "results")], cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "from study 's', best trial 3" in proc.stdout
    assert json.loads((tmp_path / "best" / "config.json").read_text()) == final.to_dict()
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["status"] == "completed"


# ---- python -m recipe.train: a good run, and what can be done with it afterwards ---------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny 2-epoch run through the CLI, stdout and stderr captured as a pipe would (not a terminal)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = train_main([*tiny_flags(epochs=2), "--out", str(run)])
    return run, Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished run, for a test that may change it."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run[0], copy)
    return copy


def test_a_good_run_prints_one_line_per_epoch_then_its_summary_and_no_progress_bar(finished_run):
    run, result = finished_run
    assert result.code == 0
    assert result.err == ""  # no tqdm bar when stderr is not a terminal
    lines = result.out.splitlines()
    assert "\r" not in result.out
    assert len(lines) == 4, lines
    assert lines[0].startswith(f"run directory: {run}; 128 training images, 100 test images, cpu")
    assert re.match(r"epoch +1/2  lr \S+  train loss \S+ acc +\S+%  test loss \S+ acc +\S+%", lines[1]), lines[1]
    assert re.match(r"epoch +2/2  lr ", lines[2]), lines[2]
    summary = json.loads((run / "summary.json").read_text())
    assert lines[3].startswith(f"completed: 2/2 epochs, final test accuracy {100 * summary['final_eval_acc']:.2f}%, "
                               f"best {100 * summary['best_eval_acc']:.2f}% (epoch {summary['best_epoch']})")
    assert lines[3].endswith(f"curves: {run / 'curves.html'}")


def test_on_a_terminal_a_run_shows_a_progress_bar_per_epoch_and_still_its_epoch_lines(tmp_path):
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal has a size
    proc = subprocess.Popen([sys.executable, "-m", "recipe.train", *tiny_flags(epochs=2), "--out", str(tmp_path / "run")],
                            cwd=REPO, stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True)
    os.close(secondary)
    seen, deadline = b"", time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if not select.select([primary], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other side is closed, the program has ended
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
    assert proc.wait(timeout=300) == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    steps = 128 // tiny_config().batch_size
    for epoch in (1, 2):
        assert re.search(rf"\repoch {epoch}/2: +0%\| +\| 0/{steps} \[", text), text  # a bar of the epoch's steps
        assert re.search(rf"[\r\n]epoch +{epoch}/2  lr \S+  train loss", text), text  # the bar cleared, then the line
    assert "completed: 2/2 epochs" in text


def test_a_good_run_leaves_a_whole_run_directory(finished_run):
    run, _ = finished_run
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == [
        "checkpoints", "checkpoints/best.pt", "checkpoints/last.pt", "config.json", "curves.html", "metrics.csv",
        "summary.json"]
    config = json.loads((run / "config.json").read_text())
    assert (config["data"], config["width"], config["subset"], config["epochs"]) == ("synthetic", 4, 128, 2)
    assert [int(row["epoch"]) for row in read_metrics(run)] == [1, 2]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["epochs_run"], summary["epochs"]) == ("completed", 2, 2)
    assert "plotly" in (run / "curves.html").read_text().lower()


def test_resume_of_a_finished_run_completes_at_once_with_the_same_metrics(finished_run, run_copy, capsys):
    metrics = (run_copy / "metrics.csv").read_bytes()
    before = json.loads((run_copy / "summary.json").read_text())
    result = call(train_main, [*tiny_flags(epochs=2), "--out", str(run_copy), "--resume"], capsys)
    assert result.code == 0 and result.err == ""
    lines = result.out.splitlines()
    assert len(lines) == 2 and lines[0].endswith("resuming after epoch 2"), lines  # no epoch trained again
    same = lambda line: re.sub(r", \d+s; curves: .*", "", line)  # noqa: E731 (the wall time and path may differ)
    assert same(lines[1]) == same(finished_run[1].out.splitlines()[-1])
    assert (run_copy / "metrics.csv").read_bytes() == metrics
    after = json.loads((run_copy / "summary.json").read_text())
    for key in ("status", "epochs_run", "final_eval_acc", "best_eval_acc", "best_epoch"):
        assert after[key] == before[key], key


def test_resume_needs_no_flags_but_out_it_reads_the_runs_config(run_copy, capsys):
    config = (run_copy / "config.json").read_text()
    result = call(train_main, ["--out", str(run_copy), "--resume", "--epochs", "3"], capsys)
    assert result.code == 2 and "epochs=2, not 3" in result.err  # a flag given must agree with the run
    result = call(train_main, ["--out", str(run_copy), "--resume"], capsys)
    assert result.code == 0, result.err
    assert (run_copy / "config.json").read_text() == config


def test_a_new_run_in_a_directory_that_holds_one_is_refused_and_leaves_it_unchanged(run_copy, capsys):
    before = tree(run_copy.parent)
    result = call(train_main, [*tiny_flags(epochs=2), "--out", str(run_copy)], capsys)
    assert_usage_error(result, str(run_copy), "holds a run already", "--resume")
    assert tree(run_copy.parent) == before


def test_resume_on_a_truncated_checkpoint_is_one_line_and_changes_nothing(run_copy, capsys):
    last = run_copy / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    before = tree(run_copy.parent)
    result = call(train_main, [*tiny_flags(epochs=2), "--out", str(run_copy), "--resume"], capsys)
    assert_usage_error(result, str(last), "not a readable checkpoint")
    assert tree(run_copy.parent) == before


def test_resume_on_a_checkpoint_holding_a_pickled_object_is_one_line_and_runs_none_of_it(run_copy, tmp_path, capsys):
    import torch

    last = run_copy / "checkpoints" / "last.pt"
    marker = tmp_path / "code-ran"
    state = torch.load(last, weights_only=True)  # the run's own state, with an object slipped in
    torch.save({**state, "history": [*state["history"], RunsOnLoad(marker)]}, last)
    before = tree(run_copy.parent)
    result = call(train_main, [*tiny_flags(epochs=2), "--out", str(run_copy), "--resume"], capsys)
    assert_usage_error(result, str(last), "not a readable checkpoint")
    assert not marker.exists() and tree(run_copy.parent) == before


# ---- python -m recipe.train: Ctrl-C, then --resume -------------------------------------------

def test_an_interrupted_run_exits_130_with_a_resume_hint_and_resumes_to_the_end(tmp_path, capsys):
    epochs = 12
    out = tmp_path / "run"
    argv = [*tiny_flags(epochs=epochs), "--out", str(out)]
    # A child inherits an ignored SIGINT (a shell's background job), and Python then never raises
    # KeyboardInterrupt; give it the default disposition, as a terminal's Ctrl-C meets it.
    proc = subprocess.Popen([sys.executable, "-m", "recipe.train", *argv], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            # Once epoch 1 is checkpointed and in metrics.csv (the test below covers before).
            if (out / "checkpoints" / "last.pt").exists() and (out / "metrics.csv").exists():
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert "Traceback" not in stderr
    hint = stderr.strip().splitlines()
    assert len(hint) == 1, stderr  # the hint alone: no progress bar on a pipe, no traceback
    assert hint[0].startswith("interrupted; continue with: python -m recipe.train")
    assert f"--out {out}" in hint[0] and "--resume" in hint[0]
    assert 1 <= len(read_metrics(out)) < epochs
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert all(line.startswith(("run directory:", "epoch ")) for line in stdout.splitlines()), stdout

    result = call(train_main, [*argv, "--resume"], capsys)
    assert result.code == 0, result.err
    # The last checkpoint, not metrics.csv, says where it resumes: Ctrl-C may fall between the two writes.
    done = int(re.search(r"resuming after epoch (\d+)$", result.out.splitlines()[0]).group(1))
    assert 1 <= done < epochs
    printed = [int(m.group(1)) for m in re.finditer(r"^epoch +(\d+)/", result.out, re.M)]
    assert printed == list(range(done + 1, epochs + 1))
    assert [int(row["epoch"]) for row in read_metrics(out)] == list(range(1, epochs + 1))
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["epochs_run"]) == ("completed", epochs)


def test_ctrl_c_in_the_first_epoch_prints_a_hint_that_works(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = [*tiny_flags(epochs=2), "--out", str(out)]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C in the middle of epoch 1, before any checkpoint

    with monkeypatch.context() as m:
        m.setattr(recipe.train, "train_epoch", interrupted)
        result = call(train_main, argv, capsys)
    assert result.code == 130
    hint = result.err.strip().splitlines()
    assert len(hint) == 1 and hint[0].startswith("interrupted; "), result.err
    # Whatever the hint says (resume, or start again), doing it must finish the run.
    again = call(train_main, [*argv, "--resume"] if "--resume" in hint[0] else argv, capsys)
    assert again.code == 0, again.err
    assert [int(row["epoch"]) for row in read_metrics(out)] == [1, 2]


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_the_resume_hint_of_a_run_in_a_path_with_spaces_works_when_pasted(tmp_path, capsys, monkeypatch, stop):
    out = tmp_path / "my runs" / "lr 0.2"
    argv = [*tiny_flags(epochs=2), "--out", str(out)]
    real_epoch = recipe.train.train_epoch
    calls = []

    def interrupted_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # in epoch 2, after epoch 1's checkpoint
            if stop == "ctrl-c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's stop
        return real_epoch(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(recipe.train, "train_epoch", interrupted_in_epoch_2)
        result = call(train_main, argv, capsys)
    assert result.code == 130
    (hint,) = result.err.strip().splitlines()
    command = hint.split("continue with: ", 1)[1]
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "recipe.train"] and words[3:] == ["--out", str(out), "--resume"], hint
    again = call(train_main, words[3:], capsys)
    assert again.code == 0, again.err
    assert [int(row["epoch"]) for row in read_metrics(out)] == [1, 2]


# ---- python -m search.run: bad input fails before Ray starts ---------------------------------

def search_cli(work: Path, capsys, *argv: str) -> Result:
    results = work / "results"
    before = tree(work)
    result = call(search_run.main, ["--results-dir", str(results), *argv], capsys)
    assert tree(work) == before  # in particular no results/<study>/
    assert not results.exists()
    return result


def test_search_with_an_unknown_study_lists_the_known_ones(work, no_ray, capsys):
    result = search_cli(work, capsys, "--study", "nope")
    known = sorted(p.stem for p in STUDIES_DIR.glob("*.toml"))
    assert {"default", "smoke"} <= set(known)
    assert_usage_error(result, "nope.toml", "no such study", f"studies: {', '.join(known)}")


def test_search_with_an_impossible_range_in_the_study_file_names_the_key(work, no_ray, capsys):
    text = (STUDIES_DIR / "smoke.toml").read_text()
    dropout = "[space.dropout]\nlow = 0.0\nhigh = 0.5\n"
    assert dropout in text
    study = work / "studies" / "impossible.toml"
    study.parent.mkdir()
    study.write_text(text.replace(dropout, "[space.dropout]\nlow = 0.6\nhigh = 0.5\n"))
    result = search_cli(work, capsys, "--study", str(study))
    assert_usage_error(result, str(study), "space.dropout", "low must be below high")


def test_a_trial_that_needs_more_cpus_than_this_machines_ray_has_is_one_clear_error():
    from recipe.config import RecipeError
    from search.cluster import check_trials_fit

    spec = search_study.load("smoke")
    check_trials_fit(dataclasses.replace(spec, resources=dataclasses.replace(spec.resources, cpus_per_trial=2)), 2)
    wants_4 = dataclasses.replace(spec, resources=dataclasses.replace(spec.resources, cpus_per_trial=4))
    with pytest.raises(RecipeError, match=r"a trial needs 4 CPUs \(resources.cpus_per_trial, --cpus-per-trial\) but "
                                          r"this machine's Ray has 2: no trial could start; ask for at most 2"):
        check_trials_fit(wants_4, 2)


@pytest.mark.parametrize("shown, asked, says", [(0, "1", "this machine has 0 GPUs for Ray; ask for at most 0 (0 runs on CPU)"),
                                                (2, "3", "this machine has 2 GPUs for Ray; ask for at most 2")])
def test_search_asking_for_more_gpus_than_this_machine_has_is_one_line_before_ray_starts(work, no_ray, capsys,
                                                                                         monkeypatch, shown, asked, says):
    import torch

    import search.plan

    def not_asked():
        raise AssertionError("torch asked for GPUs on a machine without a GPU driver")

    # A GPU driver's device file where GPUs are shown; without one, torch is not imported (nor asked) at all.
    monkeypatch.setattr(search.plan, "GPU_DEVICE_FILES", (str(work),) if shown else (str(work / "nvidiactl"),))
    monkeypatch.setattr(torch.cuda, "device_count", (lambda: shown) if shown else not_asked)
    result = search_cli(work, capsys, "--study", "smoke", "--gpus", asked)
    assert_usage_error(result, f"--gpus {asked}: {says}")


def test_search_resume_with_nothing_to_resume_says_so(work, no_ray, capsys):
    result = search_cli(work, capsys, "--study", "smoke", "--resume")
    assert_usage_error(result, "nothing to resume", "'smoke'")


def test_search_with_a_missing_npz_fails_before_any_trial(work, no_ray, capsys):
    missing = work / "missing.npz"
    result = search_cli(work, capsys, "--study", "smoke", "--data", str(missing))
    assert_usage_error(result, str(missing), "no such file")


@pytest.mark.parametrize("flag, value, says", [("--trials", "0", "must be >= 1"), ("--final-seeds", "0", "must be >= 1"),
                                               ("--revalidate-top", "-1", "must be >= 0"),
                                               ("--cpus-per-trial", "0", "must be > 0")])
def test_search_with_too_few_trials_seeds_or_re_validated_trials_is_refused(work, no_ray, capsys, flag, value, says):
    result = search_cli(work, capsys, "--study", "smoke", flag, value)
    assert_usage_error(result, f"{flag}: {says}", f"got {value}")


def test_selection_flags_override_the_studys(work):
    args = search_run.parse_args(["--study", "smoke", "--revalidate-top", "0", "--final-seeds", "3"])
    spec = search_run.with_overrides(search_study.load("smoke"), args)
    assert spec.selection.revalidate_top == 0 and spec.final_seeds(0) == [0, 1, 2]


def test_search_on_a_remote_cluster_without_storage_is_refused(work, no_ray, capsys):
    result = search_cli(work, capsys, "--study", "smoke", "--address", "10.0.0.5:6379")
    assert_usage_error(result, "--address", "needs --storage")


def a_study_in(work: Path, *files: str) -> Path:
    """results/smoke/ as a study leaves it at some point: spec.json and the given files.

    trials.csv holds a complete trial, or none where it is named "trials.csv:none".
    """
    root = work / "results" / "smoke"
    root.mkdir(parents=True)
    (root / "spec.json").write_text(json.dumps(search_study.load("smoke").replace(trials=1).to_dict()))  # as trials.csv
    for name in files:
        name, _, none = name.partition(":")
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text('{"status": "completed"}' if name.endswith(".json")
                                 else f"trial_id,state\n0,{'pruned' if none else 'complete'}\n")
    return root


@pytest.mark.parametrize("files, says", [
    ((), "was interrupted; add --resume to continue it"),
    (("trials.csv:none",), "no trial ran the whole horizon"),
    (("trials.csv",), "was interrupted; add --resume to continue it"),  # in its re-validation
    (("trials.csv", "best.json"), "has finished its search but not its final run; add --resume"),
    (("trials.csv", "best.json", "final/summary.json"), "has finished; its report is"),
])
def test_running_a_study_again_says_where_it_stands_and_what_to_do(work, no_ray, capsys, files, says):
    a_study_in(work, *files)
    result = call(search_run.main, ["--results-dir", str(work / "results"), "--study", "smoke"], capsys)
    assert_usage_error(result, says)


@pytest.mark.parametrize("files", [(), ("trials.csv", "best.json")], ids=["interrupted", "searched"])
@pytest.mark.parametrize("answer", ["\n", "y\n", "n\n"])
def test_running_an_unfinished_study_again_at_a_terminal_asks_to_resume_it(work, no_ray, capsys, monkeypatch, files,
                                                                          answer):
    root = a_study_in(work, *files)
    monkeypatch.setattr(sys, "stdin", Terminal(answer))
    argv = ["--results-dir", str(work / "results"), "--study", "smoke"]
    if answer == "n\n":
        result = call(search_run.main, argv, capsys)
        assert "Resume it? [Y/n]" in result.out
        assert_usage_error(Result(result.code, "", result.err), "not resumed", "remove it")
        return
    planned = search_run.plan(search_run.parse_args(argv))
    assert f"Study 'smoke' in {root}" in capsys.readouterr().out
    assert planned.resume and planned.paths.root == root


def test_a_finished_study_run_again_at_a_terminal_is_not_offered_a_resume(work, no_ray, capsys, monkeypatch):
    a_study_in(work, "trials.csv", "best.json", "final/summary.json")
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    result = call(search_run.main, ["--results-dir", str(work / "results"), "--study", "smoke"], capsys)
    assert_usage_error(result, "has finished; its report is")


def test_a_resumed_study_keeps_its_settings(work, no_ray, capsys):
    a_study_in(work)
    for given in (["--gpus", "0"], ["--data", "synthetic"], ["--final-seeds", "2"], ["--revalidate-top", "0"]):
        result = call(search_run.main, ["--results-dir", str(work / "results"), "--study", "smoke", "--resume",
                                        *given], capsys)
        assert_usage_error(result, given[0], "keeps the settings it started with")


def test_a_study_resumed_with_more_trials_is_extended_and_with_fewer_than_have_ended_is_one_line(work, no_ray, capsys):
    root = a_study_in(work)
    study = optuna.create_study(study_name="smoke", storage=f"sqlite:///{root / 'optuna.db'}")
    for _ in range(3):
        study.tell(study.ask(), 0.5)
    study.ask()  # running when the driver stopped: it goes on
    argv = ["--results-dir", str(work / "results"), "--study", "smoke", "--resume", "--trials"]
    assert search_run.plan(search_run.parse_args([*argv, "5"])).spec.trials == 5
    assert search_run.plan(search_run.parse_args([*argv, "4"])).spec.trials == 4
    # The running trial goes on when the study resumes: 3 would end with 4.
    result = call(search_run.main, [*argv, "3"], capsys)
    assert_usage_error(result, "--trials 3: study 'smoke' holds 4 trials (3 ended, the others go on", "ask for at least 4")


class StoppedTuning:
    """search.tuning as a stop (Ctrl-C, SIGTERM) leaves it: run() raises KeyboardInterrupt, after writing `files`."""

    def __init__(self, *files: str) -> None:
        self.files = files
        self.optuna = optuna

    def run(self, p, stop) -> int:
        for name in self.files:
            (p.paths.root / name).write_text(json.dumps(search_study.load("smoke").to_dict()))
        raise KeyboardInterrupt


def stopped(work, capsys, monkeypatch, argv: list[str], *files: str) -> tuple[Result, list[str]]:
    """A study stopped once it had written `files`: its result, and the command its one-line hint gives."""
    tuning = StoppedTuning(*files)
    monkeypatch.setitem(sys.modules, "search.tuning", tuning)
    monkeypatch.setattr(search, "tuning", tuning, raising=False)  # `from search import tuning` reads it once imported
    take = search_run.lock.take
    # The driver's lock as a driver's ends with it: here, released at once (an open one would refuse the hint's plan).
    monkeypatch.setattr(search_run.lock, "take", lambda root, name: os.close(take(root, name)))
    for name in (search_run.LOCAL_RAY, "RAY_AIR_NEW_OUTPUT", "TUNE_DISABLE_SIGINT_HANDLER"):
        monkeypatch.delenv(name, raising=False)  # set by main for Ray and Tune
    result = call(search_run.main, argv, capsys)
    assert result.code == 130 and "Traceback" not in result.err, result
    (hint,) = result.err.strip().splitlines()
    assert hint.startswith("interrupted; "), hint
    return result, shlex.split(hint.split(": ", 1)[1])


def test_a_study_stopped_before_it_wrote_anything_says_to_run_the_same_command_again(work, capsys, monkeypatch):
    results = work / "my results"
    argv = ["--study", "smoke", "--results-dir", str(results), "--cpus-per-trial", "1"]
    result, command = stopped(work, capsys, monkeypatch, argv)
    assert "nothing of the study was written" in result.err and "--resume" not in result.err
    assert command == ["python", "-m", "search.run", *argv]  # quoted: a path with a space is one word again
    search_run.forget_if_empty(results / "smoke", [results / "smoke", results])  # what atexit does in the driver
    assert not results.exists()


def test_a_study_stopped_once_its_spec_was_written_says_how_to_resume_it_in_a_command_that_pastes(work, capsys,
                                                                                                  monkeypatch):
    results, study = work / "my results", work / "my studies" / "smoke.toml"
    study.parent.mkdir()
    shutil.copy(STUDIES_DIR / "smoke.toml", study)
    argv = ["--study", str(study), "--results-dir", str(results), "--storage", str(work / "tune files")]
    result, command = stopped(work, capsys, monkeypatch, argv, "spec.json")
    assert command == ["python", "-m", "search.run", *argv, "--resume"]
    planned = search_run.plan(search_run.parse_args(command[3:]))  # the hint is a command that goes on
    assert planned.resume and planned.paths.root == results / "smoke"


def test_a_study_stopped_as_it_ended_points_to_its_report(work):
    root = a_study_in(work, "trials.csv", "best.json", "final/summary.json")  # finished, the stop came after
    args = search_run.parse_args(["--study", "smoke", "--results-dir", str(work / "results")])
    planned = search_run.Plan(spec=search_study.load("smoke"), paths=search_study.StudyPaths(root), resume=True,
                              storage=str(work / "results" / "smoke"), address=None, final=True)
    hint = search_run.after_interrupt(args, None, planned)
    assert hint.startswith("the study had finished; its report is ") and "--resume" not in hint, hint
    command = shlex.split(hint.split("rewrite it with: ", 1)[1].removesuffix(")"))
    assert command == ["python", "-m", "search.report", "--study", "smoke", "--results-dir", str(work / "results")]


def test_the_disk_full_hint_is_quoted_too(work):
    args = search_run.parse_args(["--study", "my study.toml", "--results-dir", "a b", "--address", "127.0.0.1:6379"])
    assert shlex.split(search_run.resume_command(args)) == [
        "python", "-m", "search.run", "--study", "my study.toml", "--results-dir", "a b", "--address", "127.0.0.1:6379",
        "--resume"]


def test_relative_data_paths_of_a_study_are_taken_from_where_it_is_run(work, capsys):
    study = work / "mine.toml"
    text = (STUDIES_DIR / "smoke.toml").read_text().replace('data = "synthetic"', 'data = "arrays/c.npz"')
    study.write_text(text.replace("[final]", '[final]\ndata_dir = "elsewhere"'))
    args = search_run.parse_args(["--study", str(study)])
    spec = search_run.with_overrides(search_study.load(str(study)), args)
    assert spec.recipe["data"] == str(Path.cwd() / "arrays" / "c.npz")
    assert spec.recipe["data_dir"] == str(Path.cwd() / "data")
    assert spec.final["data_dir"] == str(Path.cwd() / "elsewhere")


def test_python_m_search_run_unknown_study_is_one_line_and_exit_2(tmp_path):
    results = tmp_path / "results"
    proc = python_m("search.run", "--study", "nope", "--results-dir", str(results), timeout=120)
    assert_one_line_from_python_m(proc, "no such study", "default", "smoke")
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


# ---- python -m search.report: what tests/test_report.py leaves out ---------------------------

def test_report_with_a_missing_results_dir_says_so_and_creates_nothing(work, capsys):
    missing = work / "results"
    before = tree(work)
    result = call(report.main, ["--results-dir", str(missing)], capsys)
    assert_usage_error(result, f"--results-dir {missing}", "no such directory")
    assert tree(work) == before


def test_report_of_an_unknown_study_lists_the_studies_there(work, capsys):
    results = work / "results"
    for name in ("alpha", "beta"):
        (results / name).mkdir(parents=True)
        (results / name / "spec.json").write_text("{}\n")
    before = tree(work)
    result = call(report.main, ["--results-dir", str(results), "--study", "gamma"], capsys)
    assert_usage_error(result, "--study gamma", "no such study directory", "studies there: alpha, beta")
    assert tree(work) == before


def test_training_needs_no_plotly_and_says_once_that_curves_are_skipped(tmp_path):
    # A GPU machine's image often has torch but not plotly: the recipe (and its bench) must run there.
    hide = "import sys; sys.modules['plotly'] = None; import runpy; sys.argv[0] = 'recipe.train'; "
    proc = subprocess.run([sys.executable, "-c", hide + "runpy.run_module('recipe.train', run_name='__main__')",
                           *tiny_flags(epochs=2), "--out", str(tmp_path / "run")],
                          cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    said = (proc.stdout + proc.stderr).count("curves.html is skipped")
    assert said == 1, (proc.stdout, proc.stderr)
    assert "completed: 2/2 epochs" in proc.stdout and "curves:" not in proc.stdout
    assert len(read_metrics(tmp_path / "run")) == 2 and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "run" / "curves.html").exists()


def test_every_command_says_how_it_is_used_with_help(capsys):
    # argparse formats each flag's help with %: a bare % in a help text is a crash of --help alone.
    import recipe.bench
    for main in (train_main, recipe.bench.main, search_run.main, report.main):
        result = call(main, ["--help"], capsys)
        assert result.code == 0 and result.out.startswith("usage: ") and result.err == "", (main.__module__, result)
    proc = subprocess.run(["bash", str(Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.sh"), "--help"],
                          env=os.environ | {"PYTHON": sys.executable, "COLUMNS": "200"}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: ") and "37.5% of it" in proc.stdout, proc.stderr
