"""One way to read and write bytes at a URI: ``s3://bucket/key``, ``file:///path`` or a plain path.

Each function below parses the URI once and hands the work to the backend of its scheme, one class
per scheme behind the ``Storage`` interface (base.py): ``LocalStorage`` (local.py: atomic, shared
writes) and ``S3Storage`` (s3.py, with s3_client.py: boto3, retries, endpoint, pyarrow). A new scheme
is a new module and one branch of ``backend``. Reading and writing never branch on the scheme outside it;
what the scheme means beyond bytes does (is a path shared by every node: raycluster.py; Ray Train's
storage filesystem: checkpoint.py).
"""
from __future__ import annotations

import posixpath
from contextlib import AbstractContextManager
from typing import Any, Iterable, Optional

from nlray.data.storage.base import (MissingObjectError, NotRegularFileError, ObjectTooLargeError, Storage,
                                    StorageError, UnreachableError)
from nlray.data.storage.local import LocalStorage
from nlray.data.storage.s3 import S3Storage
from nlray.data.storage.s3_client import resolve_endpoint
from nlray.secrets import redact
from nlray.uris import parse_uri

__all__ = ["StorageError", "MissingObjectError", "NotRegularFileError", "ObjectTooLargeError", "UnreachableError",
           "Storage", "VIDEO_SUFFIXES", "backend",
           "read_bytes", "write_bytes", "exists", "size", "is_folder", "check_access", "list_files", "delete",
           "delete_tree", "upload_tree", "staged_tree", "pyarrow_filesystem", "join", "relative_to",
           "is_s3", "local_path", "resolve_endpoint", "normalise", "is_below"]

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")


# ----------------------------------------------------------------------------------------- URIs
# One parser of what a storage URI may be, torch- and boto3-free (the config checks URIs with it too).
_parse = parse_uri


def backend(uri: str, *, endpoint_url: str = "") -> Storage:
    """The backend object for ``uri``: the one place that looks at the scheme."""
    scheme, bucket, key = _parse(uri)
    if scheme == "s3":
        return S3Storage(uri, bucket, key, endpoint_url=endpoint_url)
    return LocalStorage(uri, key)


def is_s3(uri: str) -> bool:
    return _parse(uri)[0] == "s3"


def local_path(uri: str) -> str:
    """The absolute path of a plain or file:// URI; ValueError for s3://."""
    scheme, _, path = _parse(uri)
    if scheme != "file":
        raise ValueError(f"{uri!r} is not a local path")
    return path


def join(uri: str, *parts: str) -> str:
    """``join("s3://b/root", "train", "x.mp4") -> "s3://b/root/train/x.mp4"``; keeps the URI's form."""
    _parse(uri)  # validates
    out = uri.rstrip("/") if uri.rstrip("/") else uri
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}" if not out.endswith("/") else out + part
    return out


def relative_to(uri: str, root: str) -> str:
    """The path of ``uri`` below ``root`` (same form), e.g. ``train/a/x.mp4``."""
    base = root.rstrip("/") + "/"
    if not uri.startswith(base):
        raise ValueError(f"{uri!r} is not below {root!r}")
    return uri[len(base):]


def normalise(uri: str) -> str:
    """``uri`` in the same form with ``.`` / ``..`` segments and repeated slashes resolved as paths
    (``s3://b/a/../x.mp4`` -> ``s3://b/x.mp4``; ``..`` above a bucket or ``/`` stays there).
    Lexical: a local symlink is not resolved. ValueError for an unsupported URI."""
    scheme, bucket, key = _parse(uri)
    if scheme == "s3":
        return f"s3://{bucket}/{posixpath.normpath('/' + key.lstrip('/')).lstrip('/')}" if key else uri
    if uri.startswith("file://"):
        return "file://" + posixpath.normpath(key)
    return posixpath.normpath(uri)


def is_below(uri: str, root: str) -> bool:
    """Whether ``uri`` names something strictly below the folder ``root``, both normalised first
    (``normalise``): same scheme and bucket, and whole path segments (``/data/k400-evil`` is not
    below ``/data/k400``). A plain path and a ``file://`` URI of the same file compare equal.
    False for a URI of an unsupported scheme."""
    try:
        scheme, bucket, key = _parse(uri)
        root_scheme, root_bucket, root_key = _parse(root)
    except ValueError:
        return False
    if (scheme, bucket) != (root_scheme, root_bucket):
        return False
    # one leading slash: normpath keeps exactly two ("//x") as POSIX allows
    path, base = (posixpath.normpath("/" + k.lstrip("/")) for k in (key, root_key))
    return path != base and path.startswith(base if base == "/" else base + "/")


# ---------------------------------------------------------------------------------- operations


def read_bytes(uri: str, *, endpoint_url: str = "", max_bytes: Optional[int] = None) -> bytes:
    """The whole object; ``MissingObjectError`` if it does not exist.

    ``max_bytes``: a bigger object raises ``ObjectTooLargeError`` (``.size``, ``.limit``) without
    being read whole (at most ``max_bytes + 1`` bytes in memory; on S3 one GetObject whose length
    is checked before its body is read). Local reads take regular files only: a device
    (``/dev/zero``), a FIFO, a socket, a folder or a file of /proc or /sys raises
    ``NotRegularFileError`` (a MissingObjectError) before anything is read."""
    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0 or None, not {max_bytes!r}")
    return backend(uri, endpoint_url=endpoint_url).read_bytes(max_bytes)


def write_bytes(uri: str, data: bytes, *, endpoint_url: str = "") -> None:
    """Write (replace) the object; a local file is written to a temp name then renamed."""
    backend(uri, endpoint_url=endpoint_url).write_bytes(data)


def exists(uri: str, *, endpoint_url: str = "") -> bool:
    """Whether the object/file exists; a missing bucket or an auth error raises StorageError."""
    return backend(uri, endpoint_url=endpoint_url).exists()


def size(uri: str, *, endpoint_url: str = "") -> int:
    """Size in bytes; ``MissingObjectError`` if the object does not exist."""
    return backend(uri, endpoint_url=endpoint_url).size()


def is_folder(uri: str, *, endpoint_url: str = "") -> bool:
    """A local directory, or an S3 prefix that is not itself an object."""
    return backend(uri, endpoint_url=endpoint_url).is_folder()


def check_access(uri: str, *, endpoint_url: str = "") -> None:
    """Fail fast with a clear StorageError if ``uri``'s bucket or folder cannot be read."""
    backend(uri, endpoint_url=endpoint_url).check_access()


def list_files(uri: str, *, suffixes: Optional[Iterable[str]] = VIDEO_SUFFIXES,
               endpoint_url: str = "") -> list[tuple[str, int]]:
    """``[(uri, size), ...]`` of every file below ``uri`` (recursive, sorted) whose name ends with
    one of ``suffixes`` (case-insensitive; None = every file). URIs keep the form of ``uri``."""
    ends = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    out = backend(uri, endpoint_url=endpoint_url).list_files()
    return sorted((u, n) for u, n in out if ends is None or u.lower().endswith(ends))


def delete(uri: str, *, endpoint_url: str = "") -> None:
    """Remove one object/file; a missing one is not an error."""
    backend(uri, endpoint_url=endpoint_url).delete()


def delete_tree(uri: str, *, endpoint_url: str = "") -> None:
    """Remove everything below ``uri`` (a local folder with its subfolders, or every S3 key below)."""
    backend(uri, endpoint_url=endpoint_url).delete_tree()


def upload_tree(local_dir: str, uri: str, *, endpoint_url: str = "", threads: int = 8) -> int:
    """Copy every file below ``local_dir`` to the same relative paths below ``uri``; returns the count."""
    return backend(uri, endpoint_url=endpoint_url).upload_tree(local_dir, threads=threads)


def staged_tree(uri: str, *, last: str = "", endpoint_url: str = "") -> AbstractContextManager[str]:
    """``with staged_tree(uri) as tmp:`` fill the local folder ``tmp``; on a clean exit its files
    appear at ``uri``: locally renamed into place (readers never see half of it; ``uri`` must be
    absent or an empty folder), on S3 uploaded with the file ``last`` (a marker) after the rest."""
    return backend(uri, endpoint_url=endpoint_url).staged_tree(last=last)


def pyarrow_filesystem(uri: str, *, endpoint_url: str = "") -> tuple[Any, str]:
    """``(pyarrow FileSystem, path)`` for ``ray.data.read_parquet(path, filesystem=fs)`` and
    ``RunConfig(storage_filesystem=fs, storage_path=path)``. For S3 the endpoint, region and
    credentials are those boto3 resolves, so pyarrow and boto3 see the same store."""
    return backend(uri, endpoint_url=endpoint_url).pyarrow_filesystem()
