"""--storage on object storage (S3, or an S3-compatible store), against an S3 server on loopback (conftest.S3Server).

Every path under a storage URI goes before its query string, where pyarrow reads the store's options from; a URI that
Tune could not use is one line and exit status 2 before anything starts. The studies that run there are other files'
whole studies, their Tune files moved onto the server: the cluster study that loses a node (test_search_cluster, the
endpoint in AWS_ENDPOINT_URL) and the study whose results disk fills (test_faults, the endpoint in the URI's query),
each continued from its checkpoints there.
"""
import contextlib
import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace
from urllib.parse import quote

import pyarrow.fs
import pytest
from conftest import REPO, s3_server_running

from search.resume import CheckpointRecord, KeepLatestCheckpoint
from search.storage import check_uri, fs_path, is_uri, join
from search.study import StudyPaths

TINY = str(REPO / "tests" / "studies" / "tiny.toml")
OPTIONS = "endpoint_override=127.0.0.1:9000&scheme=http"


def test_every_path_under_a_storage_uri_goes_before_its_query_string():
    storage = f"s3://bucket/prefix?{OPTIONS}"
    assert join(storage, "smoke", "tune") == f"s3://bucket/prefix/smoke/tune?{OPTIONS}"
    assert join(f"s3://bucket/prefix/?{OPTIONS}") == storage  # as given, less a trailing slash
    assert join("s3://bucket/prefix", "smoke") == "s3://bucket/prefix/smoke"
    assert join("/shared/what?", "smoke") == "/shared/what?/smoke"  # a local path's ? is part of a name
    assert is_uri("s3://bucket") and is_uri("hdfs://namenode:8020/hpo") and not is_uri("/shared/odd://name")
    assert pyarrow.fs.FileSystem.from_uri("/shared/odd://name")[1] == "/shared/odd://name"  # a local path to pyarrow
    assert pyarrow.fs.FileSystem.from_uri(join(storage, "smoke", "tune"))[1] == "bucket/prefix/smoke/tune"
    # Tune's paths on the store's file system: no scheme, no query (and, but for a bucket, no host).
    assert fs_path(join(storage, "smoke")) == "bucket/prefix/smoke"
    spaced = f"s3://bucket/my%20prefix?{OPTIONS}"  # a URI's escapes, decoded as pyarrow decodes them
    assert fs_path(join(spaced, "smoke")) == pyarrow.fs.FileSystem.from_uri(join(spaced, "smoke"))[1]
    assert fs_path("hdfs://namenode:8020/hpo/smoke") == "/hpo/smoke" and fs_path("/shared/smoke") == "/shared/smoke"


def test_a_store_without_buckets_is_checked_by_its_probe_alone():
    # pyarrow's in-memory file system stands for one whose paths are folders (hdfs://...): no bucket to look for.
    check_uri("mock:///hpo", join("mock:///hpo", "smoke"))  # its folders made, a probe written and deleted there


def test_a_file_uri_is_the_local_path_it_names_so_tunes_files_there_are_written_whole(work, no_ray):
    from search import run as search_run

    shared = work / "shared dir"
    argv = ["--study", "smoke", "--results-dir", str(work / "results"), "--storage", f"file://{quote(str(shared))}"]
    args = search_run.parse_args(argv)
    planned = search_run.plan(args)
    assert planned.storage == str(shared / "smoke") and not is_uri(planned.storage)  # as --storage PATH plans it
    assert search_run.resume_command(args).endswith(f"--storage '{shared}' --resume")  # a command that goes on


def test_each_runs_checkpoint_on_object_storage_is_recorded_and_freed_through_the_uris_options(tmp_path, s3_server):
    bucket = s3_server.new_bucket()
    paths = StudyPaths(tmp_path / "results" / "tiny")
    paths.root.mkdir(parents=True)
    storage = s3_server.uri(f"{bucket}/hpo/tiny")  # the endpoint only in the query: every URI made from it needs it
    record = CheckpointRecord(paths, storage)
    keep = KeepLatestCheckpoint(record, "tune", errored=True)
    trial = SimpleNamespace(config={"trial_id": 3})
    s3 = s3_server.filesystem()

    def reported(tune_trial: str, n: int) -> SimpleNamespace:
        path = f"{bucket}/hpo/tiny/tune/{tune_trial}/checkpoint_{n:06d}"  # as Tune names it on the store
        with s3.open_output_stream(f"{path}/last.pt") as f:
            f.write(b"weights")
        return SimpleNamespace(path=path)

    first = reported("run_recipe_aaaa_00000_0", 1)
    keep.on_checkpoint(0, [], trial, first)
    assert record.uris("tune") == {"3": join(storage, "tune", "run_recipe_aaaa_00000_0", "checkpoint_000001")}
    second = reported("run_recipe_bbbb_00000_0", 2)
    keep.on_checkpoint(0, [], trial, second)  # the next driver's Tune run of trial 3 goes on
    assert list(s3_server.files(bucket)) == [f"{second.path}/last.pt"]  # the earlier run's is deleted there
    keep.on_trial_complete(0, [], trial)
    assert s3_server.files(bucket) == {} and not (paths.root / "checkpoints.json").exists()


@contextlib.contextmanager
def silent_endpoint():
    """A loopback port that takes connections and never answers (a hung store, or one behind a firewall that
    drops): the S3 client's own timeouts and retries took 99 s there. Yields HOST:PORT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)  # the kernel completes each connection; nothing ever reads the request
        yield "%s:%d" % s.getsockname()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go): a connection there is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(tmp_path, storage: str, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m search.run` on a new study with this --storage: its result and how long it took."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "search.run", "--study", TINY, "--results-dir", str(tmp_path / "results"),
                           "--storage", storage], cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120, env=env)
    return proc, time.monotonic() - started


def assert_one_line_before_anything_starts(proc, tmp_path, storage: str, says: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"error: --storage {storage}: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert says in proc.stderr, proc.stderr
    assert proc.stdout == "" and not (tmp_path / "results").exists()


@pytest.mark.parametrize("case", ["an unknown option", "no bucket name", "no such bucket",
                                  "an endpoint in AWS_ENDPOINT_URL that refuses connections"])
def test_a_storage_uri_that_cannot_be_used_is_one_line_exit_2_before_anything_starts(tmp_path, s3_server, case):
    bucket = s3_server.new_bucket()
    port = closed_port()
    storage, says = {
        "an unknown option": (s3_server.uri(f"{bucket}/hpo") + "&colour=blue",
                              "not a URI pyarrow can open (Unexpected query parameter in S3 URI: 'colour')"),
        "no bucket name": ("s3:///hpo", "not a URI pyarrow can open (Missing bucket name in S3 URI)"),
        "no such bucket": (s3_server.uri("nobucket/hpo"), f"no bucket 'nobucket' at the S3 endpoint {s3_server.endpoint}; "
                                                          "create it"),
        "an endpoint in AWS_ENDPOINT_URL that refuses connections": (
            f"s3://{bucket}/hpo", f"cannot reach the S3 endpoint http://127.0.0.1:{port} ("),
    }[case]
    # Read only where the URI names no endpoint.
    proc, _ = refused(tmp_path, storage, os.environ | s3_server.env | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    assert_one_line_before_anything_starts(proc, tmp_path, storage, says)
    assert s3_server.files(bucket) == {} and s3_server.filesystem().get_file_info("nobucket").type.name == "NotFound"


def test_an_endpoint_that_does_not_answer_is_one_line_exit_2_within_30_seconds(tmp_path, s3_server):
    with silent_endpoint() as endpoint:
        storage = f"s3://bucket/hpo?endpoint_override={endpoint}&scheme=http"
        proc, took = refused(tmp_path, storage, os.environ | s3_server.env)
    assert_one_line_before_anything_starts(proc, tmp_path, storage, f"cannot reach the S3 endpoint {endpoint} (")
    assert took < 30, took


def test_credentials_the_store_refuses_are_one_line_exit_2_before_anything_starts(tmp_path):
    with s3_server_running(auth=True) as server:  # a store that knows no credentials, so admits none
        storage = server.uri("bucket/hpo")
        proc, _ = refused(tmp_path, storage, os.environ | server.env)
    assert_one_line_before_anything_starts(proc, tmp_path, storage,
                                           f"access denied by the S3 endpoint {server.endpoint} (")
