"""Ray Tune's files on a local disk, each written whole or not at all.

Tune copies each trial's checkpoint into the experiment directory every epoch, and rewrites its own
files (its records of each trial, its experiment state) as the study runs. Through a plain local file
system, a full disk or a killed driver leaves such a file cut short: a cut-short checkpoint costs its
trial every epoch it ran, and the study's record (search.resume) would name it. Through this one
(handed to Tune as its storage file system), every file goes to a temporary name beside its own and is
renamed into place once written whole: the old file stays until then, and a failed write leaves no trace.
"""
from __future__ import annotations

import pyarrow
import pyarrow.fs

from recipe.checkpoint import WholeFile


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
