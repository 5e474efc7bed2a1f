"""What every storage backend raises and implements: one class per URI scheme (local.py, s3.py)."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Optional, Protocol

from nlray.secrets import redact


class StorageError(RuntimeError):
    """A storage operation that failed; the message names the URI and the cause."""

    def __init__(self, uri: str, cause: str):
        super().__init__(redact(f"{uri}: {cause}"))  # an endpoint or URI may carry user:password@
        self.uri = uri
        self.cause = cause

    def __reduce__(self):  # picklable across Ray processes (Exception pickles only its message)
        return type(self), (self.uri, self.cause)


class MissingObjectError(StorageError):
    """The object or file does not exist (the bucket or folder does)."""


class NotRegularFileError(MissingObjectError):
    """A local path that is not a regular file (a device such as ``/dev/zero``, a FIFO, a socket, a
    folder) or a file of a pseudo-filesystem (``/proc``, ``/sys``): refused without reading it.

    A MissingObjectError, so that a decoder drops that one video (reason ``missing``) instead of
    stopping the job: there is no video at that URI."""


class ObjectTooLargeError(StorageError):
    """The object is bigger than the caller's byte cap (``max_bytes``); it was not read whole.

    ``size``: the object's size in bytes as the store or the file system reported it (at least
    ``limit + 1``); ``limit``: the cap. A decoder drops that video (reason ``too_large``)."""

    def __init__(self, uri: str, size: int, limit: int):
        super().__init__(uri, f"object is {size} bytes, over the limit of {limit} bytes")
        self.size, self.limit = size, limit

    def __reduce__(self):  # picklable across Ray processes despite the custom __init__
        return ObjectTooLargeError, (self.uri, self.size, self.limit)


class UnreachableError(StorageError):
    """Throttling, 5xx answers, resets or timeouts on every attempt: the store did not answer in time.

    About one object: a decoder drops that video (reason ``unreachable``). An auth error or a
    missing bucket is a plain StorageError instead: it concerns every object and stops the job."""


class Storage(Protocol):
    """One location (object, file or folder) of one scheme; ``uri`` keeps the form it was given in."""

    uri: str

    def read_bytes(self, max_bytes: Optional[int] = None) -> bytes: ...
    def write_bytes(self, data: bytes) -> None: ...
    def exists(self) -> bool: ...
    def size(self) -> int: ...
    def is_folder(self) -> bool: ...
    def check_access(self) -> None: ...
    def list_files(self) -> list[tuple[str, int]]: ...
    def delete(self) -> None: ...
    def delete_tree(self) -> None: ...
    def upload_tree(self, local_dir: str, *, threads: int) -> int: ...
    def staged_tree(self, *, last: str) -> AbstractContextManager[str]: ...
    def pyarrow_filesystem(self) -> tuple[Any, str]: ...
