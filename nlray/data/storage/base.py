"""What every storage backend raises and implements: one class per URI scheme (local.py, s3.py)."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from nlray.secrets import redact


class StorageError(RuntimeError):
    """A storage operation that failed; the message names the URI and the cause."""

    def __init__(self, uri: str, cause: str):
        super().__init__(redact(f"{uri}: {cause}"))  # an endpoint or URI may carry user:password@
        self.uri = uri
        self.cause = cause


class MissingObjectError(StorageError):
    """The object or file does not exist (the bucket or folder does)."""


class UnreachableError(StorageError):
    """Throttling, 5xx answers, resets or timeouts on every attempt: the store did not answer in time.

    About one object: a decoder drops that video (reason ``unreachable``). An auth error or a
    missing bucket is a plain StorageError instead: it concerns every object and stops the job."""


class Storage(Protocol):
    """One location (object, file or folder) of one scheme; ``uri`` keeps the form it was given in."""

    uri: str

    def read_bytes(self) -> bytes: ...
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
