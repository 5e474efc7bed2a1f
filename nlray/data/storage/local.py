"""Local files (a plain path or ``file:///path``): the storage backend for this machine's disks.

Writes are atomic (a temp name, then a rename: readers never see half a file or half a folder) and
shared: files and folders get the permissions the process umask allows, not mkstemp's private 0600.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import pyarrow.fs as pafs

from nlray.data.storage.base import MissingObjectError, NotRegularFileError, ObjectTooLargeError, StorageError

# Pseudo-filesystems whose "regular files" are the kernel's or a process's state (/proc/self/environ
# holds the environment and says it is 0 bytes long): never a video, never read.
PSEUDO_FS_ROOTS = ("/proc", "/sys")
_pseudo_devices: Optional[frozenset] = None
READ_CHUNK = 16 * 2**20
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


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


def _read_fd(fd: int, most: Optional[int]) -> bytes:
    """Bytes from ``fd`` up to its end, or up to ``most`` bytes: never more are read."""
    chunks, got = [], 0
    while most is None or got < most:
        chunk = os.read(fd, READ_CHUNK if most is None else min(READ_CHUNK, most - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def pseudo_devices() -> frozenset:
    """The st_dev of /proc and /sys on this machine (read once)."""
    global _pseudo_devices
    if _pseudo_devices is None:
        devs = set()
        for path in PSEUDO_FS_ROOTS:
            try:
                devs.add(os.stat(path).st_dev)
            except OSError:
                pass
        _pseudo_devices = frozenset(devs)
    return _pseudo_devices


class LocalStorage:
    """A file or folder on this machine; ``path`` is absolute, ``uri`` as the caller wrote it."""

    def __init__(self, uri: str, path: str):
        self.uri, self.path = uri, path

    def read_bytes(self, max_bytes: Optional[int] = None) -> bytes:
        """The whole file. Regular files only: a device, a FIFO, a socket, a folder or a file of
        /proc or /sys raises ``NotRegularFileError`` before any byte is read (the open does not
        block on a FIFO). With ``max_bytes``, a bigger file raises ``ObjectTooLargeError`` from
        its fstat size, and at most ``max_bytes + 1`` bytes are ever read (a file growing meanwhile)."""
        try:
            # O_NONBLOCK: opening a FIFO with no writer returns at once (it is refused below)
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise MissingObjectError(self.uri, "no such file") from None
        except OSError as exc:
            raise StorageError(self.uri, f"{type(exc).__name__}: {exc.strerror or exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
                raise NotRegularFileError(self.uri, f"not a regular file ({kind}); refused")
            if st.st_dev in pseudo_devices():
                raise NotRegularFileError(self.uri, "a file of a pseudo-filesystem (/proc, /sys); refused")
            if max_bytes is not None and st.st_size > max_bytes:
                raise ObjectTooLargeError(self.uri, st.st_size, max_bytes)
            data = _read_fd(fd, None if max_bytes is None else max_bytes + 1)
        except OSError as exc:
            raise StorageError(self.uri, f"{type(exc).__name__}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLargeError(self.uri, max(len(data), st.st_size), max_bytes)
        return data

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
        """``[(uri, size)]`` of every regular file below (hidden ones and hidden folders left out).

        Symlinked folders are followed (a dataset assembled from links), but each real folder is
        walked once: a link back to a folder already on the way (``loop -> .``) or seen before
        is skipped, so a link loop cannot make the listing endless. Links to devices, FIFOs and
        the like, and dangling links, are left out."""
        if os.path.isfile(self.path):
            return [(self.uri, os.path.getsize(self.path))]
        if not os.path.isdir(self.path):
            raise MissingObjectError(self.uri, "no such directory")
        base = self.uri.rstrip("/")
        out = []
        root = os.stat(self.path)
        seen = {(root.st_dev, root.st_ino)}  # real folders walked or queued
        for dirpath, dirnames, filenames in os.walk(self.path, followlinks=True):
            keep = []
            for d in dirnames:
                if d.startswith("."):
                    continue  # temp dirs of atomic writes
                try:
                    st = os.stat(os.path.join(dirpath, d))
                except OSError:
                    continue  # a dangling link, or one that vanished
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    keep.append(d)
            dirnames[:] = keep
            rel_dir = os.path.relpath(dirpath, self.path)
            for name in filenames:
                if name.startswith("."):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except OSError:
                    continue  # a dangling link, or a file removed meanwhile
                if not stat.S_ISREG(st.st_mode):
                    continue
                rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
                out.append((f"{base}/{rel}", st.st_size))
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
