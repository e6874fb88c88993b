"""Shared helpers: tiny recipe configs that train in seconds on a CPU."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import ipaddress
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import psutil
import pytest
import torch
from ray._private.utils import get_num_cpus as ray_cpus  # what ray.init counts; no public API
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from recipe.config import RecipeConfig

# The cores shared out between pytest-xdist's workers (two at most each: more only fight each other), for
# this process and, through OMP_NUM_THREADS, the recipe runs it starts (a study's trials set their own).
THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ["OMP_NUM_THREADS"] = str(THREADS)  # not inherited from xdist's controller: in and out of process alike
torch.set_num_threads(THREADS)
# A trial given two cores trains on two threads; OpenMP's threads spin while they wait, and with the other worker's
# processes on the same cores a tiny run took 36 s instead of 9 s. Passive threads sleep instead (every process the
# tests start inherits this).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# The files that run whole studies go first, longest first, so that no pytest-xdist worker starts one last; then
# the files that train in the tests' own process, longest first; the files of quick tests fill the end, so that
# both workers finish together. xdist hands each worker two files at the start (the first and the third to one,
# the second and the fourth to the other): measured in the suite on one machine, about 50 s, 90 s, 45 s and 45 s,
# then 40 s, and 25 s down to 8 s. (A worker per core: with two per core, 4 on 2 cores, the suite took 651 s
# instead of 571 s, the studies' processes fighting for the cores.)
SLOWEST_FIRST = ("test_search_e2e.py", "test_search_faults.py", "test_gpu_check.py", "test_faults.py",
                 "test_search_cluster.py", "test_cli.py", "test_report.py", "test_train.py", "test_step.py",
                 "test_bench.py", "test_object_storage.py")


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order kept


# A new study's flag that has one trial (or re-run) run at a time, on any machine: a trial then takes more than half
# of the CPUs a study's own Ray counts (as Ray counts them: a container's CPU quota, not the host's cores), and
# trains on their whole part (on 2 cores: 1.5 CPUs, one thread; two threads of such a small network are slower
# than one, and take the cores pytest-xdist's other worker needs). Where a test's claim is not about trials side by
# side, one worker process (and torch import) instead of one per core, and one sequence of events (a re-run ends
# before the next starts).
ONE_AT_A_TIME = ["--cpus-per-trial", f"{max(1, int(ray_cpus())) / 2 + 0.5:g}"]


def running(pid: int) -> bool:
    """Whether pid is a live process (a killed one waiting to be reaped by whoever adopted it is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def tiny_config(**changes) -> RecipeConfig:
    """A seed-recipe config shrunk to seconds: synthetic data, width 4, a few hundred images."""
    base = dict(data="synthetic", width=4, subset=256, eval_subset=200, batch_size=32, epochs=2, device="cpu",
                workers=0)
    return RecipeConfig(**{**base, **changes})


# ---------------------------------------------------------------------------------------------
# End-to-end studies: `python -m search.run` in a subprocess, as a user runs it.

REPO = Path(__file__).resolve().parent.parent
# A network namespace with a non-loopback address (and a default route through it), so that a
# Ray left to itself would have an outside address to pick; nothing can leave the namespace.
NETNS_SETUP = (
    "ip link set lo up && ip link add veth0 type veth peer name veth1 && "
    "ip addr add 10.23.0.1/24 dev veth0 && ip link set veth0 up && ip link set veth1 up && "
    "ip route add default via 10.23.0.2 dev veth0"
)


def write_torchvision_cifar100(root, n_train=200, n_test=100):
    """The on-disk layout torchvision's CIFAR100 reads: pickled dicts of flattened CHW rows."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    images = {}
    for name, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = [i % 100 for i in range(n)]
        entry = {"data": x.transpose(0, 3, 1, 2).reshape(n, -1), "fine_labels": y, "coarse_labels": [v // 5 for v in y]}
        (folder / name).write_bytes(pickle.dumps(entry))
        images[name] = (x, np.array(y))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    return images


@pytest.fixture
def cifar100_server(tmp_path, monkeypatch):
    """torchvision's CIFAR100 downloading from a server on loopback that holds a small archive of the real layout.

    Only where the files are and their checksums change: the download, its md5 check, the unpacking and the
    reading are torchvision's own. Yields the images the archive holds.
    """
    from torchvision.datasets import CIFAR100

    served = tmp_path / "served"
    images = write_torchvision_cifar100(served)
    folder = served / "cifar-100-python"
    archive = served / CIFAR100.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    shutil.rmtree(folder)  # the server holds only the archive
    handler = functools.partial(QuietFileHandler, directory=str(served))
    server = QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(CIFAR100, "url", f"http://127.0.0.1:{server.server_address[1]}/{CIFAR100.filename}")
    monkeypatch.setattr(CIFAR100, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    sums = {name: md5_of_member(archive, name) for name in ("train", "test", "meta")}
    monkeypatch.setattr(CIFAR100, "train_list", [["train", sums["train"]]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", sums["test"]]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": sums["meta"]})
    yield images
    server.shutdown()
    server.server_close()


class QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # a client that hung up early: not our test's business
        pass


def md5_of_member(archive: Path, name: str) -> str:
    with tarfile.open(archive) as tar:
        return hashlib.md5(tar.extractfile(f"cifar-100-python/{name}").read()).hexdigest()


def read_trials(db: Path, name: str = "smoke") -> list:
    """The trials of a study another process may be writing, read as the report reads them.

    Read-only, and without creating tables: a reader that created them could race the study's
    own first write of its schema. Before the study exists: no trials.
    """
    if not db.exists():
        return []
    try:
        return optuna.load_study(study_name=name, storage=reader_of(db)).get_trials()
    except (KeyError, optuna.exceptions.OptunaError, SQLAlchemyError, RuntimeError):  # no study, or no tables, yet
        return []


@functools.cache
def reader_of(db: Path) -> optuna.storages.RDBStorage:
    """One read-only storage per database for the whole session: making one costs ~70 ms of CPU (Optuna checks the
    schema's version with alembic), a poll every 0.1 s made one each time. No pool: no file held open between reads."""
    return optuna.storages.RDBStorage(f"sqlite:///file:{db}?mode=ro&uri=true", skip_table_creation=True,
                                      engine_kwargs={"poolclass": NullPool})


# An S3 server on loopback (moto's), in a process of its own: the study's processes talk to it over HTTP as to any
# S3-compatible store (MinIO, Ceph), with fake credentials. It prints its port; it stops when its stdin closes (its
# test process gone), else when the test ends it.
S3_SERVER = """
import logging, sys
from moto.server import ThreadedMotoServer

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@dataclass
class S3Server:
    """A running S3 server on loopback; `env`: what a study's processes need to reach it (its endpoint aside)."""

    endpoint: str  # HOST:PORT
    env: dict[str, str]

    def uri(self, path: str) -> str:
        """s3://path with the endpoint in the URI's query, pyarrow's own form for an S3-compatible store."""
        return f"s3://{path}?endpoint_override={self.endpoint}&scheme=http"

    def filesystem(self):
        import pyarrow.fs

        return pyarrow.fs.S3FileSystem(access_key=self.env["AWS_ACCESS_KEY_ID"], secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
                                       endpoint_override=self.endpoint, scheme="http", allow_bucket_creation=True)

    def new_bucket(self) -> str:
        """A bucket made for one test (the server is shared by a pytest worker's tests): its name."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.filesystem().create_dir(name)
        return name

    def files(self, prefix: str) -> dict[str, bytes]:
        """Every object under `prefix` (a bucket, or a path in one) that holds data, by key: what a study left there."""
        import pyarrow.fs

        fs = self.filesystem()
        found = {}
        for info in fs.get_file_info(pyarrow.fs.FileSelector(prefix, recursive=True, allow_not_found=True)):
            if info.type == pyarrow.fs.FileType.File:
                with fs.open_input_stream(info.path) as f:
                    found[info.path] = f.readall()
        return found


# Fake credentials, never the user's: files of the user's are not read, nor is a cloud machine's metadata service.
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true",
          "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull, "no_proxy": "127.0.0.1"}


@contextlib.contextmanager
def s3_server_running(auth: bool = False):
    """An S3 server of the test's own on loopback; with `auth`, one that refuses credentials it does not know."""
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"} if auth else None
    server = subprocess.Popen([sys.executable, "-c", S3_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        port = server.stdout.readline().strip()
        assert port.isdigit(), "the S3 server did not start"
        yield S3Server(f"127.0.0.1:{port}", dict(S3_ENV))
    finally:
        server.terminate()  # its own stop waits half a second for its serving loop to notice
        server.wait()


@pytest.fixture(scope="session")
def s3_server():
    """One S3 server for a pytest worker's tests, each in a bucket of its own (S3Server.new_bucket)."""
    with s3_server_running() as server:
        yield server


def isolated_network_available() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "sh", "-c", NETNS_SETUP], capture_output=True).returncode == 0


@dataclass
class StudyRun:
    """A finished (or stopped) `python -m search.run` and what was seen while it ran."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    listening: set = field(default_factory=set)  # (ip, port) of the sockets seen listening
    isolated: bool = False


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def listening_sockets(pid: int) -> set:
    """(ip, port) of every listening TCP socket in the network namespace of process `pid`.

    Read from /proc/<pid>/net/tcp{,6}, which show that process's namespace (psutil reads the
    caller's), so this also sees into a study run under `unshare -n`.
    """
    found = set()
    for name, family in (("tcp", 4), ("tcp6", 6)):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":  # TCP_LISTEN
                continue
            addr, port = local.split(":")
            raw = bytes.fromhex(addr)
            # The kernel prints each 32-bit word in host (little-endian) order.
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(packed)
            found.add((str(getattr(ip, "ipv4_mapped", None) or ip), int(port, 16)))
    return found


def in_own_netns(pid: int) -> bool:
    """Whether process `pid` is in another network namespace than this one."""
    try:
        return os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    except OSError:
        return False


def start_study(args: list[str], isolated: bool, env: dict | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "search.run", *args]
    if isolated:
        command = ["unshare", "-n", "sh", "-c", NETNS_SETUP + ' && exec "$0" "$@"', *command]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env=None if env is None else {**os.environ, **env})


def run_study(args: list[str], *, isolated: bool = False, timeout: float = 900, watch=None,
              env: dict | None = None, poll: float = 0.5) -> StudyRun:
    """Run a study to its end, sampling its listening sockets; watch(proc, stdout) may act meanwhile, every `poll` s."""
    proc = start_study(args, isolated, env)
    listening: set = set()
    out: list[str] = []
    err: list[str] = []

    readers = [threading.Thread(target=lambda s=s, b=b: b.extend(s), daemon=True)
               for s, b in ((proc.stdout, out), (proc.stderr, err))]
    for r in readers:
        r.start()
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"study {args} did not finish in {timeout} s")
            if not isolated or in_own_netns(proc.pid):  # not the moment before `unshare -n` has run
                listening |= listening_sockets(proc.pid)
            if watch is not None:
                watch(proc, "".join(out))
            time.sleep(poll)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for r in readers:
            r.join(timeout=10)
    return StudyRun(args, proc.returncode, "".join(out), "".join(err), listening, isolated)


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    """The smoke study, run once as a user runs a study (the README's demo, studies/demo.toml, is larger), in an
    isolated network where possible, with two final seeds (--final-seeds 2; the tiny study of test_search_faults runs
    the default, one on CPU), one trial at a time.

    While it runs, once a trial has finished and others run, `python -m search.report` is run
    on it as a user would, and that report is kept as run.report_while_running.
    """
    results = tmp_path_factory.mktemp("results")
    root = results / "smoke"
    kept = tmp_path_factory.mktemp("mid") / "report.html"
    state: dict = {}

    def report_midway(proc, out):
        if "report" in state or not (" complete: " in out or " pruned: " in out):
            return
        state["report"] = subprocess.run(
            [sys.executable, "-m", "search.report", "--study", "smoke", "--results-dir", str(results)],
            cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        if (root / "report.html").exists():
            shutil.copyfile(root / "report.html", kept)

    run = run_study(["--study", "smoke", "--results-dir", str(results), "--final-seeds", "2", *ONE_AT_A_TIME],
                    isolated=isolated_network_available(),
                    watch=report_midway)
    run.results, run.root = results, root
    run.report_midway = state.get("report")
    run.report_while_running = kept
    return run


def call_main(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """A CLI's main(argv) in this process: its exit status (returned or by SystemExit), stdout and stderr."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working directory (so a default path lands in tmp_path, never in the repo); stdin not a terminal."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    return tmp_path


@pytest.fixture
def no_ray(monkeypatch):
    """Importing ray (or search.tuning, which imports it) raises: a test that reached Ray fails loudly."""
    import search
    import search.run as search_run

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "search.tuning", None)
    monkeypatch.delattr(search, "tuning", raising=False)
    monkeypatch.delenv(search_run.LOCAL_RAY, raising=False)
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
