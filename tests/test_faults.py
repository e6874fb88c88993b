"""Environmental faults, injected for real: a full disk, a read-only file system, a file where a directory
should be. Each is one line saying what happened and what to do, the right exit status, and nothing lost.

A full or read-only file system is a small tmpfs mounted in a mount namespace of its own (we run as root:
chmod cannot make a directory unwritable). A process that holds the namespace keeps the mount alive; the
tests and the runs they start reach it through /proc/<holder>/root, as if it were any other directory.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from recipe import checkpoint
from recipe.cli import flag
from recipe.train import main as train_main
from recipe.train import train
from search import run as search_run

from conftest import ONE_AT_A_TIME, REPO, tiny_config, write_torchvision_cifar100

TINY_STUDY = str(REPO / "tests" / "studies" / "tiny.toml")
TIMING = ("epoch_time_s", "images_per_s")


def namespaces_available() -> bool:
    if not shutil.which("unshare") or not shutil.which("nsenter"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m none /mnt"], capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not namespaces_available(), reason="needs `unshare -m` and tmpfs mounts (root)")


class Tmpfs:
    """A tmpfs of `size` at `where`, visible only through .path (its mount namespace is a holder process's)."""

    def __init__(self, where: Path, size: str) -> None:
        where.mkdir(parents=True, exist_ok=True)
        self.holder = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size={size} none "{where}" && echo ready && exec sleep 3600'],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert self.holder.stdout.readline().strip() == "ready"
        self.where = where
        self.path = Path(f"/proc/{self.holder.pid}/root") / str(where).lstrip("/")

    def read_only(self) -> None:
        subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "mount", "-o", "remount,ro", str(self.where)],
                       check=True)

    def fill(self, leave: int) -> Path:
        """A file that takes all the free space but `leave` bytes (real pages: a sparse file would take none)."""
        filler = self.path / "filler"
        with open(filler, "wb") as f:
            size = 0
            for chunk in (1 << 20, 4096):  # in steps: a running study writes meanwhile
                while shutil.disk_usage(self.path).free - leave >= chunk:
                    try:
                        os.posix_fallocate(f.fileno(), size, chunk)
                    except OSError:
                        break
                    size += chunk
        return filler

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


@pytest.fixture
def tmpfs(tmp_path):
    made = []

    def make(size: str = "16m") -> Tmpfs:
        made.append(Tmpfs(tmp_path / f"mnt{len(made)}", size))
        return made[-1]

    yield make
    for fs in made:
        fs.close()


def flags_of(config) -> list[str]:
    names = ("data", "width", "subset", "eval_subset", "batch_size", "epochs", "device", "workers")
    return [part for name in names for part in (flag(name), str(getattr(config, name)))]


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def tree(root: Path) -> dict[str, object]:
    return {str(p.relative_to(root)): "dir" if p.is_dir() else (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# ---- a full disk while a run writes its checkpoint -----------------------------------------------

@needs_mounts
def test_a_full_disk_at_a_checkpoint_is_one_line_exit_1_keeps_the_old_one_and_resume_ends_like_a_straight_run(
        tmp_path, tmpfs):
    config = tiny_config(epochs=4)
    fs = tmpfs("16m")
    out = fs.path / "run"
    last = out / "checkpoints" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-m", "recipe.train", *flags_of(config), "--out", str(out)], cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if last.exists() and (out / "metrics.csv").exists():
                # Room for the small files (metrics.csv, summary.json) but not for another checkpoint.
                filler = fs.fill(leave=last.stat().st_size // 2)
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before the disk could be filled"
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, (proc.returncode, stderr)
    line = one_error_line(stderr)
    assert "no space left on device" in line and " free there, " in line and " needed: the file's full size" in line
    assert "is untouched" in line and line.endswith(f"free space, then continue with: python -m recipe.train --out {out} "
                                                    "--resume"), line
    # Nothing lost: the last checkpoint loads, metrics.csv agrees with it, no temporary file is left behind.
    state = checkpoint.load(last)
    assert 1 <= state["epoch"] < config.epochs
    assert [int(r["epoch"]) for r in read_metrics(out)] == list(range(1, state["epoch"] + 1))
    assert not [p.name for p in out.rglob("*.tmp")]
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == state["epoch"]

    filler.unlink()
    resumed = subprocess.run([sys.executable, "-m", "recipe.train", "--out", str(out), "--resume"], cwd=REPO,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {state['epoch']}" in resumed.stdout
    with redirect_stdout(io.StringIO()):
        train(config, tmp_path / "straight", curves=False)
    assert read_metrics(out) == read_metrics(tmp_path / "straight")
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


@needs_mounts
def test_a_result_file_that_does_not_fit_names_it_the_free_space_and_the_size_and_keeps_the_old_one(tmpfs):
    fs = tmpfs("1m")
    path = fs.path / "summary.json"
    checkpoint.write_json(path, {"old": True})
    fs.fill(leave=64 * 1024)
    with pytest.raises(checkpoint.DiskFullError) as caught:
        checkpoint.write_text(path, "x" * 300_000)
    message = str(caught.value)
    assert message.startswith(f"{path}: no space left on device (") and "KiB free there, 293.0 KiB needed" in message
    assert json.loads(path.read_text()) == {"old": True}
    assert sorted(p.name for p in fs.path.iterdir()) == ["filler", "summary.json"]


# ---- directories that cannot be written: one line, exit 2, before anything is written ------------

def call(main, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def read_only(tmpfs):
    """A read-only file system holding CIFAR-100 (in the torchvision layout) under data/, and an empty/ directory."""
    fs = tmpfs("8m")
    write_torchvision_cifar100(fs.path / "data")
    (fs.path / "empty").mkdir()
    fs.read_only()
    return fs


@pytest.fixture
def work(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (tmp_path / "a-file").write_text("not a directory\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    return tmp_path


@needs_mounts
@pytest.mark.parametrize("case", ["out is a file", "out under a file", "out read-only", "data-dir is a file",
                                  "data-dir read-only, download needed"])
def test_train_into_a_directory_it_cannot_write_is_one_line_exit_2_and_writes_nothing(work, read_only, case):
    a_file, read_only = work / "a-file", read_only.path
    argv, says = {
        "out is a file": (["--out", str(a_file)], "it is a file, not a directory"),
        "out under a file": (["--out", str(a_file / "run")], f"{a_file} is a file, not a directory"),
        "out read-only": (["--out", str(read_only / "run")], "read-only file system"),
        "data-dir is a file": (["--data", "cifar100", "--data-dir", str(a_file), "--out", str(work / "run")],
                               "it is a file, not a directory"),
        "data-dir read-only, download needed": (["--data", "cifar100", "--data-dir", str(read_only / "empty"),
                                                 "--download", "--out", str(work / "run")],
                                                "cannot download CIFAR-100 there"),
    }[case]
    before, before_ro = tree(work), tree(read_only)
    code, out, err = call(train_main, [*flags_of(tiny_config(epochs=1)), *argv])
    assert code == 2, err
    line = one_error_line(err)
    assert says in line, line
    assert out == ""
    assert tree(work) == before and tree(read_only) == before_ro


@needs_mounts
def test_a_read_only_data_dir_that_holds_the_data_is_only_read(work, read_only, monkeypatch):
    from torchvision.datasets import CIFAR100

    read_only = read_only.path
    folder = read_only / "data" / "cifar-100-python"
    sums = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in ("train", "test", "meta")}
    monkeypatch.setattr(CIFAR100, "train_list", [["train", sums["train"]]])  # our small files' checksums
    monkeypatch.setattr(CIFAR100, "test_list", [["test", sums["test"]]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": sums["meta"]})
    config = tiny_config(epochs=1, data="cifar100", subset=0, eval_subset=0)
    code, out, err = call(train_main, [*flags_of(config), "--data-dir", str(read_only / "data"), "--download",
                                       "--out", str(work / "run")])
    assert code == 0, err
    assert json.loads((work / "run" / "summary.json").read_text())["train_images"] == 200


@pytest.mark.parametrize("case", ["results-dir is a file", "results-dir under a file", "storage is a file"])
def test_a_study_into_a_file_is_one_line_exit_2_before_ray_starts(work, no_ray, case):
    a_file = work / "a-file"
    argv, says = {
        "results-dir is a file": (["--results-dir", str(a_file)], f"--results-dir {a_file}: cannot write there "
                                                                  f"({a_file} is a file, not a directory)"),
        "results-dir under a file": (["--results-dir", str(a_file / "r")], f"{a_file} is a file, not a directory"),
        "storage is a file": (["--results-dir", str(work / "results"), "--storage", str(a_file)],
                              f"--storage {a_file}: cannot write there ({a_file} is a file, not a directory)"),
    }[case]
    before = tree(work)
    code, out, err = call(search_run.main, ["--study", TINY_STUDY, *argv])
    assert code == 2, err
    assert says in one_error_line(err)
    assert out == ""
    assert tree(work) == before


@needs_mounts
@pytest.mark.parametrize("case", ["results-dir", "storage", "data-dir, download needed"])
def test_a_study_on_a_read_only_file_system_is_one_line_exit_2_before_ray_starts(work, read_only, case):
    # search.run resolves its paths (a /proc/<pid>/root view would resolve to this namespace's "/"): it runs
    # in the read-only file system's namespace instead, where the mount is at its own path.
    ro = read_only.where
    results = str(work / "results")
    argv, says = {
        "results-dir": (["--results-dir", str(ro / "r")], f"--results-dir {ro / 'r'}: cannot write there ({ro} is "
                                                          "on a read-only file system)"),
        "storage": (["--results-dir", results, "--storage", str(ro / "s")], f"--storage {ro / 's'}: cannot write there"),
        "data-dir, download needed": (["--results-dir", results, "--data", "cifar100", "--data-dir", str(ro / "empty"),
                                       "--download"], "cannot download CIFAR-100 there"),
    }[case]
    before, before_ro = tree(work), tree(read_only.path)
    proc = subprocess.run(["nsenter", "-t", str(read_only.holder.pid), "-m", "--", sys.executable, "-m", "search.run",
                           "--study", TINY_STUDY, *argv], cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert says in one_error_line(proc.stderr)
    assert proc.stdout == ""
    assert tree(work) == before and tree(read_only.path) == before_ro


# ---- a study whose disk fills ----------------------------------------------------------------------

def test_a_trial_that_finds_its_disk_full_fails_with_that_reason_and_its_epochs_kept(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from search import study as studies
    from search.searcher import StudySearcher
    from search.trainable import DISK_FULL, FULL_PATH

    spec = studies.load(TINY_STUDY)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = StudySearcher(spec, optuna.storages.RDBStorage(url), tune_storage=str(tmp_path / "results" / "tiny"))
    searcher.suggest("t0")
    epoch1 = {"epoch": 1, "eval_acc": 0.25, "status": "running"}
    searcher.on_trial_result("t0", epoch1)
    # What the trainable reports when train() raised DiskFullError on its own disk (a node's, not the study's
    # storage): the last epoch's figures again, then it ends.
    reason = "disk full: /x/last.pt: no space left on device (0 bytes free there, 58.1 KiB needed: ...)"
    ended = {**epoch1, "status": DISK_FULL, "reason": reason, FULL_PATH: "/x/last.pt"}
    searcher.on_trial_result("t0", ended)
    searcher.on_trial_complete("t0", result=ended)
    (trial,) = optuna.load_study(study_name=spec.name, storage=url).trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["reason"] == reason and trial.user_attrs["epochs"] == 1
    assert trial.intermediate_values == {1: 0.25}
    assert searcher.final_state("t0") == "fail" and searcher.failure_reason("t0") == reason


def test_a_trial_that_finds_the_studys_storage_full_stops_the_study_and_stays_to_be_resumed(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from recipe.checkpoint import DiskFullError
    from search import study as studies
    from search.searcher import StudySearcher
    from search.trainable import DISK_FULL, FULL_PATH

    spec = studies.load(TINY_STUDY)
    url, storage = f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path / "results" / "tiny"
    searcher = StudySearcher(spec, optuna.storages.RDBStorage(url), tune_storage=str(storage))
    searcher.suggest("t0")
    epoch1 = {"epoch": 1, "eval_acc": 0.25, "status": "running"}
    searcher.on_trial_result("t0", epoch1)
    # Tune could not persist the trial's checkpoint onto the study's storage: every trial would meet that disk.
    full = storage / "tune" / "trial_0" / "checkpoint_000001" / "last.pt"
    said = f"{full}: no space left on device (0 bytes free there, 58.1 KiB needed: ...); nothing was written"
    ended = {**epoch1, "status": DISK_FULL, "reason": f"disk full: {said}", FULL_PATH: str(full)}
    with pytest.raises(DiskFullError) as stopped:
        searcher.on_trial_result("t0", ended)
    assert str(stopped.value) == said and stopped.value.path == full
    (trial,) = optuna.load_study(study_name=spec.name, storage=url).trials
    assert trial.state == TrialState.RUNNING  # not failed: --resume continues it from its last checkpoint
    # The file the trainable names, from whichever layer of the error names it (pyarrow wraps Tune's copy).
    from search.trainable import unwritten

    try:
        try:
            raise DiskFullError(said, full)
        except DiskFullError as e:
            raise OSError("copying the checkpoint failed") from e
    except OSError as wrapped:
        assert unwritten(wrapped) == str(full)
    assert unwritten(OSError(28, "No space left on device", "/y/z")) == "/y/z" and unwritten(RuntimeError()) is None


def check_diverged_trials(trials: list, view: Path, tune_records: dict[str, bytes], stdout: str) -> None:
    """Trials that diverged (all but the seed recipe's, in the diverging study) failed with that reason, each run
    once: Tune did not retry them (`tune_records`: Tune's result.json of each trial, by path)."""
    diverged = [t for t in trials if t.number > 0]
    assert diverged and all(t.state.name == "FAIL" for t in diverged), [(t.state, t.params) for t in trials]
    for t in diverged:
        assert t.user_attrs["reason"] == "diverged: the training loss was not finite in epoch 1", t.user_attrs
        assert f"trial {t.number} failed: diverged: " in stdout
        (record,) = [data for path, data in tune_records.items() if f"_{t.user_attrs['ray_trial_id']}_" in path]
        assert [json.loads(line)["epoch"] for line in record.decode().splitlines()] == [1]
    assert "crashed; retrying" not in stdout
    with open(view / "trials.csv", newline="") as f:
        rows = {int(row["trial_id"]): row for row in csv.DictReader(f)}
    assert all(rows[t.number]["state"] == "failed" and rows[t.number]["reason"].startswith("diverged: ")
               for t in diverged), rows


def diverging_tiny_study(folder: Path) -> str:
    """The tiny study with an lr range (uniform, up to 1e9) whose every draw but about one in 20,000 makes the toy
    network's loss non-finite in its first epoch (lr 5e4 did; 4e3 did not, in 3 epochs): its trials after the seed
    recipe's (lr 0.1) diverge, through the trainable, Tune and the searcher."""
    text = Path(TINY_STUDY).read_text()
    old = "[space.lr]\nlow = 0.02\nhigh = 0.8\nlog = true\n"
    assert old in text
    folder.mkdir()
    (folder / "tiny.toml").write_text(text.replace(old, "[space.lr]\nlow = 0.02\nhigh = 1e9\nlog = false\n"))
    return str(folder / "tiny.toml")


def recorded_checkpoints(root: Path) -> dict[str, str]:
    """The search's checkpoints as the study's record holds them (checkpoints.json, written whole): trial -> path."""
    try:
        return json.loads((root / "checkpoints.json").read_text()).get("tune", {})
    except (OSError, ValueError):
        return {}


@needs_mounts
def test_a_study_whose_results_disk_fills_stops_in_one_line_exit_1_and_resumes_once_space_is_freed(tmp_path, tmpfs,
                                                                                                    s3_server):
    fs = tmpfs("64m")
    results = fs.where / "results"  # search.run resolves paths: it runs in the tmpfs's namespace (see above)
    view = fs.path / "results" / "tiny"
    # Tune's files in an S3 bucket, the endpoint in the URI's query (the cluster study of test_search_cluster gives it
    # in AWS_ENDPOINT_URL): the study's own files fill the disk, and the resumed study goes on from a checkpoint there.
    bucket = s3_server.new_bucket()
    storage = s3_server.uri(f"{bucket}/hpo")
    # Its trials after the first diverge: a study whose trials fail goes on, and the disk fills in trial 0 (once the
    # study has recorded its first checkpoint), as with any study.
    study = diverging_tiny_study(tmp_path / "study")
    command = ["nsenter", "-t", str(fs.holder.pid), "-m", "--", sys.executable, "-m", "search.run",
               "--study", study, "--results-dir", str(results), "--storage", storage]
    env = os.environ | s3_server.env
    proc = subprocess.Popen([*command, *ONE_AT_A_TIME], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL, env=env)
    filled = None
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if filled is None and recorded_checkpoints(view):  # a trial has reported an epoch
                spec_before = (view / "spec.json").read_bytes()
                filled = fs.fill(leave=0)
            time.sleep(0.1)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert filled is not None, "the study ended before the disk could be filled"
    assert proc.returncode == 1, (proc.returncode, stderr[-3000:])
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error: the study stopped: ") and " free there" in line, stderr[-3000:]
    assert line.endswith(f"free space, then continue with: python -m search.run --study {study} "
                         f"--results-dir {results} --storage '{storage}' --resume"), line  # quoted: it pastes
    # Nothing the study had written is damaged: its spec, and its Optuna study with the trials told so far.
    filled.unlink()
    assert (view / "spec.json").read_bytes() == spec_before
    shutil.copyfile(view / "optuna.db", tmp_path / "optuna.db")
    import optuna

    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert trials and trials[0].params
    assert not list(view.glob("**/.*.tmp"))
    (stopped_at,) = recorded_checkpoints(view).values()  # trial 0's, in the bucket
    assert any(key.startswith(f"{bucket}/hpo/tiny/{stopped_at}/") for key in s3_server.files(bucket))
    # Space freed, the study resumes to the end of its search (the final run after it is test_search_faults's),
    # and --no-final ends it there: exit 0, the best trial chosen, no final run.
    resumed = subprocess.run([*command, "--resume", "--no-final"], cwd=REPO, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "search: trial 0 goes on from its last checkpoint" in resumed.stdout, resumed.stdout
    best_line, report_line = resumed.stdout.strip().splitlines()[-2:]
    assert best_line.startswith("best: trial ") and report_line.startswith("report: "), resumed.stdout[-2000:]
    assert not (view / "final").exists()
    shutil.copyfile(view / "optuna.db", tmp_path / "after.db")
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'after.db'}").trials
    assert len(trials) == 3 and all(t.state.is_finished() for t in trials), [t.state for t in trials]
    # Without re-validation (the tiny study's revalidate_top is 0) best.json is the best complete trial's.
    complete = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: (-t.value, t.number))
    best = json.loads((view / "best.json").read_text())
    assert complete and best["trial_id"] == complete[0].number and best["values"] == [complete[0].value]
    assert not best["revalidated"] and not (view / "revalidation.json").exists()
    # Trial 0 went on from its checkpoint in the bucket, opened through the URI's options: its Tune run of the resumed
    # study began after epoch 1, and it was not restarted from epoch 0.
    tune_records = {key: data for key, data in s3_server.files(f"{bucket}/hpo/tiny/tune").items()
                    if key.endswith("/result.json")}
    (went_on,) = [data for key, data in tune_records.items() if f"_{trials[0].user_attrs['ray_trial_id']}_" in key]
    assert json.loads(went_on.decode().splitlines()[0])["epoch"] > 1 and "restarted" not in trials[0].user_attrs
    assert not [key for key in s3_server.files(bucket) if "/checkpoint_" in key]  # the search ended: none is kept
    check_diverged_trials(trials, view, tune_records, resumed.stdout)


@needs_mounts
def test_tunes_files_on_a_local_disk_are_written_whole_or_not_at_all(tmpfs, tmp_path):
    import pyarrow.fs

    from search.storage import whole_files

    fs = tmpfs("1m")
    state = fs.path / "tune" / "experiment_state-x.json"
    whole = whole_files()  # Tune's storage file system for a study on a local disk
    with whole.open_output_stream(str(state)) as f:
        f.write(b'{"saved": 1}')
    assert state.read_bytes() == b'{"saved": 1}'
    # Tune copies its newer state (or a checkpoint) in; the disk fills halfway: the old file stays whole.
    newer = tmp_path / "newer.json"
    newer.write_bytes(b" " * (2 << 20))
    with pytest.raises(OSError, match="No space left on device"):
        pyarrow.fs.copy_files(str(newer), str(state), destination_filesystem=whole)
    assert state.read_bytes() == b'{"saved": 1}'
    assert [p.name for p in state.parent.iterdir()] == [state.name]  # no temporary file left


def test_tunes_storage_file_system_reaches_trial_workers_and_copies_whole_files(tmp_path):
    import pickle

    import pyarrow.fs

    from search.storage import whole_files

    whole = pickle.loads(pickle.dumps(whole_files()))  # as Ray hands it to each trial's worker
    source = tmp_path / "checkpoint_000001"
    source.mkdir()
    (source / "last.pt").write_bytes(os.urandom(3 << 20))
    pyarrow.fs.copy_files(str(source), str(tmp_path / "tune" / source.name), destination_filesystem=whole)
    copied = tmp_path / "tune" / source.name / "last.pt"
    assert copied.read_bytes() == (source / "last.pt").read_bytes()
    assert copied.stat().st_mode & 0o777 == 0o666 & ~checkpoint.current_umask()
    assert [p.name for p in copied.parent.iterdir()] == ["last.pt"]


def test_a_writer_that_fails_midway_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "best.json"
    path.write_bytes(b'{"old": 1}')
    with pytest.raises(ValueError):
        with checkpoint.WholeFile(path) as f:
            f.write(b'{"new": ')
            raise ValueError("the writer gave up")
    assert path.read_bytes() == b'{"old": 1}' and [p.name for p in tmp_path.iterdir()] == ["best.json"]
    with checkpoint.WholeFile(path) as f:
        f.write(b'{"new": 2}')
    assert path.read_bytes() == b'{"new": 2}' and [p.name for p in tmp_path.iterdir()] == ["best.json"]
