"""Local files (a plain path or ``file:///path``): the storage backend for this machine's disks.

Writes are atomic (a temp name, then a rename: readers never see half a file or half a folder) and
shared: files and folders get the permissions the process umask allows, not mkstemp's private 0600.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow.fs as pafs

from nlray.data.storage.base import MissingObjectError, StorageError


def umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


class LocalStorage:
    """A file or folder on this machine; ``path`` is absolute, ``uri`` as the caller wrote it."""

    def __init__(self, uri: str, path: str):
        self.uri, self.path = uri, path

    def read_bytes(self) -> bytes:
        try:
            return Path(self.path).read_bytes()
        except FileNotFoundError:
            raise MissingObjectError(self.uri, "no such file") from None
        except OSError as exc:
            raise StorageError(self.uri, f"{type(exc).__name__}: {exc.strerror or exc}") from exc

    def write_bytes(self, data: bytes) -> None:
        path = Path(self.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; a dataset is meant to be shared
            os.replace(tmp, path)  # readers never see a half-written file
        except OSError as exc:
            raise StorageError(self.uri, f"{type(exc).__name__}: {exc.strerror or exc}") from exc

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            raise MissingObjectError(self.uri, "no such file") from None

    def is_folder(self) -> bool:
        return os.path.isdir(self.path)

    def check_access(self) -> None:
        if not os.path.exists(self.path):
            raise MissingObjectError(self.uri, "no such file or directory")
        if not os.access(self.path, os.R_OK):
            raise StorageError(self.uri, "permission denied (not readable)")

    def list_files(self) -> list[tuple[str, int]]:
        """``[(uri, size)]`` of every file below (hidden ones and hidden folders left out)."""
        if os.path.isfile(self.path):
            return [(self.uri, os.path.getsize(self.path))]
        if not os.path.isdir(self.path):
            raise MissingObjectError(self.uri, "no such directory")
        base = self.uri.rstrip("/")
        out = []
        for dirpath, dirnames, filenames in os.walk(self.path, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # temp dirs of atomic writes
            rel_dir = os.path.relpath(dirpath, self.path)
            for name in filenames:
                if name.startswith("."):
                    continue
                rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
                out.append((f"{base}/{rel}", os.path.getsize(os.path.join(dirpath, name))))
        return out

    def delete(self) -> None:
        Path(self.path).unlink(missing_ok=True)

    def delete_tree(self) -> None:
        if os.path.exists(self.path):
            shutil.rmtree(self.path)

    def upload_tree(self, local_dir: str, *, threads: int = 8) -> int:
        base, dest = Path(local_dir), Path(self.path)
        files = sorted(p for p in base.rglob("*") if p.is_file())
        for p in files:
            (dest / p.relative_to(base)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest / p.relative_to(base))
        return len(files)

    @contextmanager
    def staged_tree(self, *, last: str = "") -> Iterator[str]:
        """A temp folder beside the destination, renamed into place once filled (``last`` is moot:
        the whole folder appears at once). The destination must be absent or an empty folder."""
        dest = Path(self.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            yield str(tmp)
            if dest.exists():
                dest.rmdir()  # only an empty folder: OSError otherwise
            tmp.chmod(0o777 & ~umask())  # mkdtemp makes 0700; datasets are shared
            os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def pyarrow_filesystem(self) -> tuple[Any, str]:
        return pafs.LocalFileSystem(), self.path
