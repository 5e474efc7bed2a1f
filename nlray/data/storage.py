"""One way to read and write bytes at a URI: ``s3://bucket/key``, ``file:///path`` or a plain path.

S3 goes through boto3 with the standard AWS chain for region and credentials. An S3-compatible
endpoint comes from the explicit ``endpoint_url`` argument (config key ``data.s3_endpoint_url``),
else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``. boto3 would honour those variables itself,
pyarrow would not, so both are resolved here and handed to each explicitly: the two always agree.

Throttling and 5xx answers are retried with exponential backoff and full jitter; an auth error
or a missing bucket fails at once (retrying cannot fix it); a missing object raises
``MissingObjectError`` so that decoders can count it as a "missing" video.

Clients are cached per process, endpoint and credential environment and built lazily, so the
module is safe to import on Ray workers and nothing unpicklable lives at module level.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, TypeVar
from urllib.parse import unquote, urlparse

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
URI_FORMS = "s3://bucket[/prefix], file:///abs/path or a plain local path"

# Error codes S3 (and S3-compatible stores) send. Throttling/5xx: worth retrying.
THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "ThrottledException",
                            "RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
                            "RequestLimitExceeded", "ProvisionedThroughputExceededException",
                            "BandwidthLimitExceeded", "InternalError", "ServiceUnavailable",
                            "RequestTimeout", "RequestTimeTooSkewed"})
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# Auth problems: retrying cannot fix them, so they fail at once.
AUTH_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                        "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
                        "AuthorizationHeaderMalformed", "InvalidClientTokenId", "AllAccessDisabled",
                        "AccountProblem", "InvalidSecurity", "UnrecognizedClientException"})
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})

LIST_PAGE_SIZE = 1000  # keys per ListObjectsV2 page (S3's maximum)
MAX_ATTEMPTS = 6  # first try + 5 retries: backoff sums to at most ~6 s before giving up
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0
# Credentials that the standard chain reads from the environment: a change gives a new client.
_CRED_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
             "AWS_DEFAULT_REGION", "AWS_REGION")

_clients: dict[tuple, Any] = {}
_checked_buckets: set[tuple] = set()
_lock = threading.Lock()

T = TypeVar("T")


class StorageError(RuntimeError):
    """A storage operation that failed; the message names the URI and the cause."""

    def __init__(self, uri: str, cause: str):
        super().__init__(f"{uri}: {cause}")
        self.uri = uri
        self.cause = cause


class MissingObjectError(StorageError):
    """The object or file does not exist (the bucket or folder does)."""


# ----------------------------------------------------------------------------------------- URIs


def _parse(uri: str) -> tuple[str, str, str]:
    """``(scheme, bucket, key)`` for s3 or ``("file", "", abs_path)`` for local URIs."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"storage URI {uri!r} is empty; use {URI_FORMS}")
    if uri.startswith("s3://"):
        rest = uri[len("s3://"):]
        bucket, _, key = rest.partition("/")
        if not bucket or "/" in bucket or bucket != bucket.strip():
            raise ValueError(f"storage URI {uri!r} has no bucket; use {URI_FORMS}")
        return "s3", bucket, key
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"storage URI {uri!r}: file:// URIs must be absolute (file:///path); "
                             f"use {URI_FORMS}")
        return "file", "", unquote(parsed.path)
    if "://" in uri or uri.lower().startswith("s3:"):
        raise ValueError(f"storage URI {uri!r} has an unsupported scheme; use {URI_FORMS}")
    return "file", "", os.path.abspath(os.path.expanduser(uri))


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


def resolve_endpoint(endpoint_url: str = "") -> Optional[str]:
    """Explicit endpoint, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else None (AWS)."""
    return (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL") or None)


# ------------------------------------------------------------------------------ boto3 and retries


def _client(endpoint_url: str = "") -> Any:
    """A boto3 S3 client, one per process, endpoint and credential environment."""
    endpoint = resolve_endpoint(endpoint_url)
    key = (os.getpid(), endpoint, tuple(os.environ.get(k) for k in _CRED_ENV))
    client = _clients.get(key)
    if client is None:
        import boto3
        from botocore.config import Config

        with _lock:  # boto3 sessions are not thread-safe to create; clients are safe to share
            client = _clients.get(key)
            if client is None:
                session = boto3.session.Session()
                # Our own retry loop below classifies errors; botocore's would double the waits.
                cfg = Config(retries={"total_max_attempts": 1, "mode": "standard"},
                             max_pool_connections=32)
                client = session.client("s3", endpoint_url=endpoint, config=cfg,
                                        region_name=session.region_name or "us-east-1")
                _clients[key] = client
    return client


def _error_code(exc: BaseException) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def classify(exc: BaseException) -> str:
    """``retry`` | ``auth`` | ``no_bucket`` | ``missing`` | ``no_credentials`` | ``other``."""
    from botocore.exceptions import (ConnectionError as BotoConnectionError, NoCredentialsError,
                                     PartialCredentialsError)

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return "no_credentials"
    if isinstance(exc, BotoConnectionError):  # refused, reset, read/connect timeouts
        return "retry"
    code, status = _error_code(exc)
    if code == "NoSuchBucket":
        return "no_bucket"
    if code in AUTH_CODES or status in (401, 403):
        return "auth"
    if code in MISSING_CODES or status == 404:
        return "missing"
    if code in THROTTLE_CODES or status in RETRY_STATUS:
        return "retry"
    return "other"


def _backoff(attempt: int) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] so that many workers spread out."""
    return random.uniform(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt))


def _call(uri: str, fn: Callable[[], T], *, max_attempts: int = MAX_ATTEMPTS) -> T:
    """Run one S3 call, retrying throttling/5xx/connection errors; map the rest to StorageError."""
    from botocore.exceptions import BotoCoreError, ClientError

    for attempt in range(max_attempts):
        try:
            return fn()
        except (ClientError, BotoCoreError) as exc:
            kind = classify(exc)
            if kind == "retry" and attempt + 1 < max_attempts:
                time.sleep(_backoff(attempt))
                continue
            raise _to_storage_error(uri, exc, kind, attempt + 1) from exc
    raise AssertionError("unreachable: the loop returns or raises")


def _to_storage_error(uri: str, exc: BaseException, kind: str, attempts: int) -> StorageError:
    code, status = _error_code(exc)
    what = f"{code or type(exc).__name__}" + (f" (HTTP {status})" if status else "")
    if kind == "missing":
        return MissingObjectError(uri, f"no such object ({what})")
    if kind == "no_bucket":
        return StorageError(uri, f"bucket does not exist ({what}); check the bucket name and endpoint "
                                 f"{resolve_endpoint() or 'AWS'}")
    if kind == "auth":
        return StorageError(uri, f"access denied ({what}); check AWS credentials (AWS_ACCESS_KEY_ID/"
                                 "AWS_PROFILE/role) and the bucket policy")
    if kind == "no_credentials":
        return StorageError(uri, "no AWS credentials found (environment, ~/.aws, instance role)")
    if kind == "retry":
        return StorageError(uri, f"gave up after {attempts} attempts: {what}: {exc}")
    return StorageError(uri, f"{what}: {exc}")


# ---------------------------------------------------------------------------------- operations


def read_bytes(uri: str, *, endpoint_url: str = "") -> bytes:
    """The whole object; ``MissingObjectError`` if it does not exist."""
    scheme, bucket, key = _parse(uri)
    if scheme == "file":
        try:
            return Path(key).read_bytes()
        except FileNotFoundError:
            raise MissingObjectError(uri, "no such file") from None
        except OSError as exc:
            raise StorageError(uri, f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    client = _client(endpoint_url)
    return _call(uri, lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read())


def write_bytes(uri: str, data: bytes, *, endpoint_url: str = "") -> None:
    """Write (replace) the object; a local file is written to a temp name then renamed."""
    scheme, bucket, key = _parse(uri)
    if scheme == "file":
        path = Path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a dataset is meant to be shared
            os.replace(tmp, path)  # readers never see a half-written file
        except OSError as exc:
            raise StorageError(uri, f"{type(exc).__name__}: {exc.strerror or exc}") from exc
        return
    if not key or key.endswith("/"):
        raise ValueError(f"cannot write an object at {uri!r}: the URI names a bucket or folder")
    client = _client(endpoint_url)
    _call(uri, lambda: client.put_object(Bucket=bucket, Key=key, Body=data))


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def exists(uri: str, *, endpoint_url: str = "") -> bool:
    """Whether the object/file exists; a missing bucket or an auth error raises StorageError."""
    scheme, bucket, key = _parse(uri)
    if scheme == "file":
        return os.path.exists(key)
    client = _client(endpoint_url)
    try:
        _call(uri, lambda: client.head_object(Bucket=bucket, Key=key))
        return True
    except MissingObjectError:
        # HEAD answers a bare 404 for a missing bucket too: tell the two apart (once per bucket).
        _check_bucket(uri, bucket, endpoint_url)
        return False


def size(uri: str, *, endpoint_url: str = "") -> int:
    """Size in bytes; ``MissingObjectError`` if the object does not exist."""
    scheme, bucket, key = _parse(uri)
    if scheme == "file":
        try:
            return os.path.getsize(key)
        except FileNotFoundError:
            raise MissingObjectError(uri, "no such file") from None
    client = _client(endpoint_url)
    try:
        return int(_call(uri, lambda: client.head_object(Bucket=bucket, Key=key))["ContentLength"])
    except MissingObjectError:
        _check_bucket(uri, bucket, endpoint_url)  # a missing bucket is not a missing object
        raise


def _check_bucket(uri: str, bucket: str, endpoint_url: str) -> None:
    key = (os.getpid(), resolve_endpoint(endpoint_url), bucket)
    if key in _checked_buckets:
        return
    client = _client(endpoint_url)
    # list_objects_v2 returns an error body with a code (HEAD does not): NoSuchBucket, AccessDenied...
    _call(uri, lambda: client.list_objects_v2(Bucket=bucket, MaxKeys=1))
    _checked_buckets.add(key)


def check_access(uri: str, *, endpoint_url: str = "") -> None:
    """Fail fast with a clear StorageError if ``uri``'s bucket or folder cannot be read."""
    scheme, bucket, key = _parse(uri)
    if scheme == "file":
        if not os.path.exists(key):
            raise MissingObjectError(uri, "no such file or directory")
        if not os.access(key, os.R_OK):
            raise StorageError(uri, "permission denied (not readable)")
        return
    client = _client(endpoint_url)
    _call(uri, lambda: client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1))


def list_files(uri: str, *, suffixes: Optional[Iterable[str]] = VIDEO_SUFFIXES,
               endpoint_url: str = "") -> list[tuple[str, int]]:
    """``[(uri, size), ...]`` of every file below ``uri`` (recursive, sorted) whose name ends with
    one of ``suffixes`` (case-insensitive; None = every file). URIs keep the form of ``uri``."""
    ends = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    scheme, bucket, key = _parse(uri)
    out = _list_local(uri, key) if scheme == "file" else _list_s3(uri, bucket, key, endpoint_url)
    return sorted((u, n) for u, n in out if ends is None or u.lower().endswith(ends))


def _list_local(uri: str, path: str) -> list[tuple[str, int]]:
    if os.path.isfile(path):
        return [(uri, os.path.getsize(path))]
    if not os.path.isdir(path):
        raise MissingObjectError(uri, "no such directory")
    base = uri.rstrip("/")
    out = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # temp dirs of atomic writes
        rel_dir = os.path.relpath(dirpath, path)
        for name in filenames:
            if name.startswith("."):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            out.append((f"{base}/{rel}", os.path.getsize(os.path.join(dirpath, name))))
    return out


def _list_s3(uri: str, bucket: str, key: str, endpoint_url: str) -> list[tuple[str, int]]:
    prefix = key if not key or key.endswith("/") else key + "/"  # "train" must not match "train2/"
    client = _client(endpoint_url)
    out: list[tuple[str, int]] = []
    token: Optional[str] = None
    while True:  # paginate by hand so that every page goes through the retry loop
        kwargs = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": LIST_PAGE_SIZE,
                  **({"ContinuationToken": token} if token else {})}
        page = _call(uri, lambda: client.list_objects_v2(**kwargs))
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                out.append((f"s3://{bucket}/{obj['Key']}", int(obj["Size"])))
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def upload_tree(local_dir: str, uri: str, *, endpoint_url: str = "", threads: int = 8) -> int:
    """Copy every file below ``local_dir`` to the same relative paths below ``uri``; returns the count."""
    from concurrent.futures import ThreadPoolExecutor

    base = Path(local_dir)
    files = sorted(p for p in base.rglob("*") if p.is_file())
    if _parse(uri)[0] == "file":
        dest = Path(_parse(uri)[2])
        for p in files:
            (dest / p.relative_to(base)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest / p.relative_to(base))
        return len(files)
    jobs = [(join(uri, p.relative_to(base).as_posix()), p) for p in files]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda job: write_bytes(job[0], job[1].read_bytes(), endpoint_url=endpoint_url),
                      jobs))
    return len(files)


def delete(uri: str, *, endpoint_url: str = "") -> None:
    """Remove one object/file; a missing one is not an error."""
    scheme, bucket, key = _parse(uri)
    if scheme == "file":
        Path(key).unlink(missing_ok=True)
        return
    client = _client(endpoint_url)
    _call(uri, lambda: client.delete_object(Bucket=bucket, Key=key))


# ------------------------------------------------------------------------------------- pyarrow


def pyarrow_filesystem(uri: str, *, endpoint_url: str = "") -> tuple[Any, str]:
    """``(pyarrow FileSystem, path)`` for ``ray.data.read_parquet(path, filesystem=fs)`` and
    ``RunConfig(storage_filesystem=fs, storage_path=path)``. For S3 the endpoint, region and
    credentials are those boto3 resolves, so pyarrow and boto3 see the same store."""
    import pyarrow.fs as pafs

    scheme, bucket, key = _parse(uri)
    if scheme == "file":
        return pafs.LocalFileSystem(), key
    import boto3

    session = boto3.session.Session()
    endpoint = resolve_endpoint(endpoint_url)
    kwargs: dict[str, Any] = {"region": _region(session, bucket, endpoint),
                              "retry_strategy": pafs.AwsStandardS3RetryStrategy(
                                  max_attempts=MAX_ATTEMPTS),
                              **_pyarrow_credentials(session)}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=parsed.netloc + parsed.path.rstrip("/"),
                      scheme=parsed.scheme)
    return pafs.S3FileSystem(**kwargs), f"{bucket}/{key}".rstrip("/")


# Where boto3 found static keys: hand pyarrow the same keys. Anything else (instance role, SSO,
# web identity) expires, so pyarrow's own AWS SDK chain, which refreshes them, is used instead.
_STATIC_CREDENTIAL_METHODS = ("env", "explicit", "shared-credentials-file", "config-file")


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
        import pyarrow.fs as pafs

        try:
            return pafs.resolve_s3_region(bucket)
        except OSError:
            pass  # no network or no such bucket: the first real request will say which
    return "us-east-1"
