"""S3 (``s3://bucket/key``) through boto3: the storage backend for object stores.

boto3 uses the standard AWS chain for region and credentials. An S3-compatible endpoint comes from
the explicit ``endpoint_url`` argument (config key ``data.s3_endpoint_url``), else
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``. boto3 would honour those variables itself, pyarrow
would not, so both are resolved here and handed to each explicitly: the two always agree.

Throttling, 5xx answers, resets and timeouts are retried with exponential backoff and full jitter,
within a bounded time (``s3_client.WORST_CASE_S``), then raise ``UnreachableError``; an auth error
or a missing bucket fails at once (retrying cannot fix it); a missing object raises
``MissingObjectError`` so that decoders can count it as a "missing" video (s3_client.py).
"""
from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from nlray.data.storage.base import MissingObjectError, ObjectTooLargeError
from nlray.data.storage.s3_client import (CONNECT_TIMEOUT_S, MAX_ATTEMPTS, READ_TIMEOUT_S, call, client,
                                          resolve_endpoint)

LIST_PAGE_SIZE = 1000  # keys per ListObjectsV2 page (S3's maximum)
# Where boto3 found static keys: hand pyarrow the same keys. Anything else (instance role, SSO,
# web identity) expires, so pyarrow's own AWS SDK chain, which refreshes them, is used instead.
_STATIC_CREDENTIAL_METHODS = ("env", "explicit", "shared-credentials-file", "config-file")
_CHECKED_BUCKETS: set[tuple] = set()  # (pid, endpoint, bucket) known to exist and be readable
T = TypeVar("T")


class S3Storage:
    """An object or prefix in a bucket; every request goes through the retry loop."""

    def __init__(self, uri: str, bucket: str, key: str, *, endpoint_url: str = ""):
        self.uri, self.bucket, self.key, self.endpoint_url = uri, bucket, key, endpoint_url

    def _request(self, fn: Callable[[Any], T]) -> T:
        """``fn(boto3 client)`` through the retry loop; its errors as StorageError."""
        s3 = client(self.endpoint_url)
        return call(self.uri, lambda: fn(s3))

    def read_bytes(self, max_bytes: Optional[int] = None) -> bytes:
        """The whole object. With ``max_bytes``, one GetObject whose ContentLength is checked before
        the body is read: a bigger object raises ``ObjectTooLargeError`` with its body unread, and
        at most ``max_bytes + 1`` bytes are ever read (a store whose length header lies)."""
        # the body is read inside the retry loop: a reset or a stall in the middle of it is retried
        return self._request(lambda s3: self._read(s3, max_bytes))

    def _read(self, s3: Any, max_bytes: Optional[int]) -> bytes:
        answer = s3.get_object(Bucket=self.bucket, Key=self.key)
        body = answer["Body"]
        if max_bytes is None:
            return body.read()
        try:
            length = int(answer.get("ContentLength") or 0)
            if length > max_bytes:
                raise ObjectTooLargeError(self.uri, length, max_bytes)
            chunks, got = [], 0
            while got <= max_bytes:
                # an empty read is the end: botocore then checks the length (a body cut short raises
                # IncompleteReadError, retried like a reset)
                chunk = body.read(max_bytes + 1 - got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            if got > max_bytes:
                raise ObjectTooLargeError(self.uri, max(length, got), max_bytes)
            return b"".join(chunks)
        finally:
            body.close()  # the rest of a refused body is not downloaded

    def write_bytes(self, data: bytes) -> None:
        if not self.key or self.key.endswith("/"):
            raise ValueError(f"cannot write an object at {self.uri!r}: the URI names a bucket or folder")
        self._request(lambda s3: s3.put_object(Bucket=self.bucket, Key=self.key, Body=data))

    def exists(self) -> bool:
        try:
            self._request(lambda s3: s3.head_object(Bucket=self.bucket, Key=self.key))
            return True
        except MissingObjectError:
            # HEAD answers a bare 404 for a missing bucket too: tell the two apart (once per bucket).
            self._check_bucket()
            return False

    def size(self) -> int:
        try:
            head = self._request(lambda s3: s3.head_object(Bucket=self.bucket, Key=self.key))
            return int(head["ContentLength"])
        except MissingObjectError:
            self._check_bucket()  # a missing bucket is not a missing object
            raise

    def _check_bucket(self) -> None:
        key = (os.getpid(), resolve_endpoint(self.endpoint_url), self.bucket)
        if key in _CHECKED_BUCKETS:
            return
        # list_objects_v2 returns an error body with a code (HEAD does not): NoSuchBucket, AccessDenied...
        self._request(lambda s3: s3.list_objects_v2(Bucket=self.bucket, MaxKeys=1))
        _CHECKED_BUCKETS.add(key)

    def is_folder(self) -> bool:
        return not self.exists()  # S3 has no folders: a prefix that is not an object

    def check_access(self) -> None:
        self._request(lambda s3: s3.list_objects_v2(Bucket=self.bucket, Prefix=self.key, MaxKeys=1))

    def list_files(self) -> list[tuple[str, int]]:
        """``[(s3 uri, size)]`` of every object below the prefix, page by page through the retry loop."""
        key = self.key
        prefix = key if not key or key.endswith("/") else key + "/"  # "train" must not match "train2/"
        out: list[tuple[str, int]] = []
        token: Optional[str] = None
        while True:  # paginate by hand so that every page goes through the retry loop
            kwargs = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": LIST_PAGE_SIZE,
                      **({"ContinuationToken": token} if token else {})}
            page = self._request(lambda s3: s3.list_objects_v2(**kwargs))
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    out.append((f"s3://{self.bucket}/{obj['Key']}", int(obj["Size"])))
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def delete(self) -> None:
        self._request(lambda s3: s3.delete_object(Bucket=self.bucket, Key=self.key))

    def delete_tree(self) -> None:
        for uri, _ in self.list_files():
            self._at(uri).delete()

    def _at(self, uri: str) -> "S3Storage":
        bucket, _, key = uri[len("s3://"):].partition("/")
        return S3Storage(uri, bucket, key, endpoint_url=self.endpoint_url)

    def upload_tree(self, local_dir: str, *, threads: int = 8, skip: str = "") -> int:
        base = Path(local_dir)
        files = sorted(p for p in base.rglob("*") if p.is_file() and p.relative_to(base).as_posix() != skip)
        jobs = [(self._at(f"{self.uri.rstrip('/')}/{p.relative_to(base).as_posix()}"), p) for p in files]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(lambda job: job[0].write_bytes(job[1].read_bytes()), jobs))
        return len(files)

    @contextmanager
    def staged_tree(self, *, last: str = "") -> Iterator[str]:
        """A local temp folder, uploaded once filled; ``last`` (a marker file) goes after the rest."""
        with tempfile.TemporaryDirectory(prefix="nlray-staged-") as tmp:
            yield tmp
            self.upload_tree(tmp, skip=last)
            if last and (Path(tmp) / last).is_file():
                self._at(f"{self.uri.rstrip('/')}/{last}").write_bytes((Path(tmp) / last).read_bytes())

    def pyarrow_filesystem(self) -> tuple[Any, str]:
        """For S3 the endpoint, region and credentials are those boto3 resolves: one store for both."""
        import boto3

        session = boto3.session.Session()
        endpoint = resolve_endpoint(self.endpoint_url)
        # the same attempts and timeouts as boto3 (s3_client.py): a stalled answer is a retried timeout
        # (request_timeout applies on Linux too, whatever pyarrow's docstring says: test_flaky_storage.py)
        kwargs: dict[str, Any] = {"region": _region(session, self.bucket, endpoint),
                                  "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS),
                                  "connect_timeout": CONNECT_TIMEOUT_S, "request_timeout": READ_TIMEOUT_S,
                                  **_pyarrow_credentials(session)}
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs.update(endpoint_override=parsed.netloc + parsed.path.rstrip("/"), scheme=parsed.scheme)
        return pafs.S3FileSystem(**kwargs), f"{self.bucket}/{self.key}".rstrip("/")


def _pyarrow_credentials(session: Any) -> dict[str, Any]:
    creds = session.get_credentials()
    if creds is None:
        return {"anonymous": True}
    if getattr(creds, "method", "") not in _STATIC_CREDENTIAL_METHODS:
        return {}
    frozen = creds.get_frozen_credentials()
    return {"access_key": frozen.access_key, "secret_key": frozen.secret_key,
            "session_token": frozen.token}


def _region(session: Any, bucket: str, endpoint: Optional[str]) -> str:
    """The configured region; on AWS without one, the bucket's own region (pyarrow needs it)."""
    if session.region_name:
        return session.region_name
    if not endpoint:
        try:
            return pafs.resolve_s3_region(bucket)
        except OSError:
            pass  # no network or no such bucket: the first real request will say which
    return "us-east-1"
