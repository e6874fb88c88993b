"""Ray Tune's storage (--storage): where it is, whether it can be used, and on a local disk each file written whole.

Where it is: a local path or a URI (s3://bucket/prefix, gs://...), whose query string carries its file system's
options (s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http). Every path under it is joined before that
query (join). A URI is checked before Ray starts (check_uri), as a local path is (search.run): one line, not a
traceback once the study has started.

On a local disk: Tune copies each trial's checkpoint into the experiment directory every epoch, and rewrites its own
files (its records of each trial, its experiment state) as the study runs. Through a plain local file
system, a full disk or a killed driver leaves such a file cut short: a cut-short checkpoint costs its
trial every epoch it ran, and the study's record (search.resume) would name it. Through this one
(handed to Tune as its storage file system), every file goes to a temporary name beside its own and is
renamed into place once written whole: the old file stays until then, and a failed write leaves no trace.
"""
from __future__ import annotations

import re
import urllib.parse
import uuid

import pyarrow
import pyarrow.fs

from recipe.checkpoint import WholeFile, unwritable_reason
from recipe.config import RecipeError


class WholeFilesHandler(pyarrow.fs.FileSystemHandler):
    """The local file system, but that a file opened for writing is a WholeFile (copies included)."""

    def __init__(self) -> None:
        self.fs = pyarrow.fs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WholeFilesHandler)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __reduce__(self):  # Ray hands the file system to every trial's worker
        return WholeFilesHandler, ()

    def get_type_name(self) -> str:
        return "local-whole-files"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pyarrow.fs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pyarrow.fs.FileSelector) -> list[pyarrow.fs.FileInfo]:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the root directory")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self.fs.open_input_stream(src) as source:
            target = WholeFile(dest)
            try:
                while chunk := source.read(1 << 20):
                    target.write(chunk)
            except BaseException:
                target.abandon()  # a source that could not be read whole: no copy of part of it
                raise
            target.close()

    def open_input_stream(self, path: str) -> pyarrow.NativeFile:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> pyarrow.NativeFile:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata) -> pyarrow.NativeFile:
        # No fsync: this guards against a full disk and a killed process, not a power cut, and a
        # checkpoint of 170 MB synced again at every epoch would hold up training.
        return pyarrow.PythonFile(WholeFile(path), mode="w")

    def open_append_stream(self, path: str, metadata) -> pyarrow.NativeFile:
        return self.fs.open_append_stream(path)


def whole_files() -> pyarrow.fs.FileSystem:
    return pyarrow.fs.PyFileSystem(WholeFilesHandler())


def is_uri(storage: str) -> bool:
    """Whether --storage names a URI (s3://..., gs://...) rather than a local path: a scheme, then "://", as pyarrow
    reads it (an absolute path holding "://" is a local one to pyarrow, and so here)."""
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", storage) is not None


def local_path(storage: str) -> str | None:
    """The local path a file:// URI names (file:///data/hpo: /data/hpo), as pyarrow reads it; None for any other.

    A study given one keeps Tune's files there as on any local path: written whole (whole_files), and read in place.
    """
    if not is_uri(storage) or not storage.lower().startswith("file:"):
        return None
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(storage)
    except (pyarrow.ArrowInvalid, ValueError):
        return None  # check_uri says why, in one line
    return path if fs.type_name == "local" else None


def join(storage: str, *parts: str) -> str:
    """A location under `storage`, a path or a URI; a URI's query string (its file system's options) stays last.

    join("s3://b/p?scheme=http", "smoke", "tune") is "s3://b/p/smoke/tune?scheme=http": pyarrow reads the file
    system's options from the query of every URI it is given, Tune's and the study's alike.
    """
    base, mark, query = storage.partition("?") if is_uri(storage) else (storage, "", "")
    return "/".join([base.rstrip("/"), *parts]) + mark + query


BUCKET_SCHEMES = ("s3", "gs", "gcs")  # whose URIs' host part is a bucket, the first part of a path on their file system


def fs_path(storage: str) -> str:
    """`storage` as a path on its file system, as Tune names the paths there: a URI without its scheme and query
    (s3://b/p?scheme=http: b/p), and without its host where that is not a bucket (hdfs://host:8020/p: /p)."""
    if not is_uri(storage):
        return storage
    uri = urllib.parse.urlsplit(storage)
    path = f"{uri.netloc}{uri.path}" if uri.scheme in BUCKET_SCHEMES else uri.path
    return urllib.parse.unquote(path).rstrip("/") or "/"  # as pyarrow decodes it (s3://b/my%20dir: b/my dir)


# The check's S3 client gives up within seconds where the store does not answer: the client's defaults (3 attempts,
# each waiting up to 3 s for a byte, with back-off between) took 99 s for an endpoint that takes connections and never
# answers. Two attempts of at most 5 s to connect and 3 s to answer: one line within ~20 s.
CONNECT_TIMEOUT_S = 5
PROBE_ATTEMPTS = 2
DENIED = ("ACCESS_DENIED", "ACCESS_KEY", "SIGNATURE", "TOKEN", "CLIENT", "FORBIDDEN")  # AWS error names of refused access


def check_uri(given: str, storage: str) -> None:
    """One line (RecipeError) where Tune could not keep its files at the URI `storage` (the study's, under --storage
    `given`): a URI pyarrow cannot parse, a store that does not answer, a bucket that does not exist, or credentials
    that may not write and delete there. A small probe object is written and deleted under it to find out.
    """
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(storage)
    except (pyarrow.ArrowInvalid, ValueError) as e:
        raise RecipeError(f"--storage {given}: not a URI pyarrow can open ({first_line(e)}); give a path, or a URI "
                          "such as s3://bucket/prefix (options in its query: ?endpoint_override=HOST:PORT&scheme=http)"
                          ) from None
    except OSError as e:  # pyarrow asks AWS for a bucket's region where neither the URI nor the environment gives one
        raise RecipeError(f"--storage {given}: {store_error(e, 'AWS S3')}") from None
    if fs.type_name == "local":  # file://...: a local path after all
        reason = unwritable_reason(path)
        if reason:
            raise RecipeError(f"--storage {given}: cannot write there ({reason}); choose another --storage")
        return
    where = "the store"
    if isinstance(fs, pyarrow.fs.S3FileSystem):
        fs, where = quick(fs)
    bucket = path.split("/", 1)[0]
    try:
        if storage.split("://", 1)[0].lower() not in BUCKET_SCHEMES:  # hdfs://...: folders, made as Tune makes them
            fs.create_dir(path, recursive=True)
        elif fs.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound:
            raise RecipeError(f"--storage {given}: no bucket {bucket!r} at {where}; create it (the study creates "
                              "none), or name one that exists")
        probe = f"{path}/.cifar100-hpo-probe-{uuid.uuid4().hex[:12]}"
        with fs.open_output_stream(probe) as f:
            f.write(b"Tune's storage, checked by python -m search.run; deleted at once\n")
    except OSError as e:
        raise RecipeError(f"--storage {given}: {store_error(e, where)}") from None
    try:
        fs.delete_file(probe)
    except OSError as e:
        raise RecipeError(f"--storage {given}: a probe object could be written but not deleted ({first_line(e)}); "
                          f"Tune deletes the checkpoints it replaces: allow deleting there too (and delete {probe})"
                          ) from None


def quick(fs: pyarrow.fs.S3FileSystem) -> tuple[pyarrow.fs.S3FileSystem, str]:
    """The same S3 file system (the URI's options and the environment's, as pyarrow resolved them) but that gives up
    on an endpoint that does not answer within seconds, not minutes; and the endpoint in words."""
    options = fs.__reduce__()[1][0]  # its pickled form: every option it was made with (Ray ships it so to workers)
    endpoint = options.get("endpoint_override") or f"AWS S3 ({options.get('region') or 'its default region'})"
    options |= {"connect_timeout": CONNECT_TIMEOUT_S,
                "retry_strategy": pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=PROBE_ATTEMPTS)}
    return pyarrow.fs.S3FileSystem(**options), f"the S3 endpoint {endpoint}"


def store_error(error: OSError, where: str) -> str:
    """What an object store's error says, in words: cannot reach it, no such bucket, access denied, or its own line."""
    said = first_line(error)
    kind = re.search(r"AWS Error (\w+)", said)
    code = kind[1] if kind else ""
    if code == "NETWORK_CONNECTION" or "Could not connect" in said or "Could not resolve" in said:
        detail = said.rsplit("Details: ", 1)[-1] if "Details: " in said else said
        return (f"cannot reach {where} ({detail}); check the endpoint: AWS_ENDPOINT_URL, or the URI's "
                "?endpoint_override=HOST:PORT (&scheme=http for a store without TLS)")
    if code == "NO_SUCH_BUCKET":
        return f"no such bucket at {where} ({said}); create it, or name one that exists"
    if any(word in code for word in DENIED):
        return (f"access denied by {where} ({said}); give credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or ~/.aws/credentials) that may read, write and delete objects under the prefix")
    return f"cannot write there ({said})"


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
