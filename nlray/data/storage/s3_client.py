"""boto3 S3 clients and their calls: endpoint, a client cache, error classification and retries.

Throttling, 5xx answers, connection errors (refused, reset, closed without an answer) and timeouts
are retried with exponential backoff and full jitter; when every attempt failed so, the call raises
``UnreachableError``. An auth error or a missing bucket fails at once (retrying cannot fix it); a
missing object raises ``MissingObjectError``. Every other error becomes a ``StorageError`` naming
the URI and the cause.

Time to an error is bounded: every attempt has a connect and a read timeout (a stalled answer is a
retryable timeout, not a hang), so a call gives up within ``WORST_CASE_S`` (attempts x timeouts +
the longest backoffs). The read timeout bounds each wait for bytes, not a whole body: a store that
keeps trickling a byte at a time is not cut off by it.

Clients are cached per process, endpoint and credential environment and built lazily, so the
module is safe to import on Ray workers and nothing unpicklable lives at module level.
"""
from __future__ import annotations

import os
import random
import threading
import time
from typing import Any, Callable, Optional, TypeVar

from nlray.data.storage.base import MissingObjectError, StorageError, UnreachableError
from nlray.secrets import redact

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

MAX_ATTEMPTS = 6  # first try + 5 retries: backoff sums to at most 6.2 s before giving up
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0
CONNECT_TIMEOUT_S = 3.0  # TCP connect to the endpoint (same region: milliseconds)
# Longest wait for the next bytes of an answer. S3's performance guidelines advise retrying a slow
# request after a few seconds (a retry takes another path); botocore's default, 60 s, is a hang to us.
READ_TIMEOUT_S = 5.0
# Credentials that the standard chain reads from the environment: a change gives a new client.
_CRED_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
             "AWS_DEFAULT_REGION", "AWS_REGION")

_clients: dict[tuple, Any] = {}
_lock = threading.Lock()

T = TypeVar("T")


def worst_case_s() -> float:
    """Longest a call can take before it raises: every attempt stalled to its timeouts, and every
    backoff at its cap (a trickling body aside: module doc). From the current constants."""
    backoffs = sum(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** a) for a in range(MAX_ATTEMPTS - 1))
    return MAX_ATTEMPTS * (CONNECT_TIMEOUT_S + READ_TIMEOUT_S) + backoffs


WORST_CASE_S = worst_case_s()  # 6 x (3 + 5) + 6.2 = 54.2 s


def resolve_endpoint(endpoint_url: str = "") -> Optional[str]:
    """Explicit endpoint, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else None (AWS)."""
    return (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL") or None)


def client(endpoint_url: str = "") -> Any:
    """A boto3 S3 client, one per process, endpoint and credential environment."""
    endpoint = resolve_endpoint(endpoint_url)
    timeouts = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
    key = (os.getpid(), endpoint, timeouts, tuple(os.environ.get(k) for k in _CRED_ENV))
    cached = _clients.get(key)
    if cached is None:
        import boto3
        from botocore.config import Config

        with _lock:  # boto3 sessions are not thread-safe to create; clients are safe to share
            cached = _clients.get(key)
            if cached is None:
                session = boto3.session.Session()
                # Our own retry loop (call) classifies errors; botocore's would double the waits.
                cfg = Config(retries={"total_max_attempts": 1, "mode": "standard"},
                             connect_timeout=timeouts[0], read_timeout=timeouts[1],
                             max_pool_connections=32)
                cached = session.client("s3", endpoint_url=endpoint, config=cfg,
                                        region_name=session.region_name or "us-east-1")
                _clients[key] = cached
    return cached


def _error_code(exc: BaseException) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def classify(exc: BaseException) -> str:
    """``retry`` | ``auth`` | ``no_bucket`` | ``missing`` | ``no_credentials`` | ``other``."""
    from botocore.exceptions import (ConnectionError as BotoConnectionError, HTTPClientError,
                                     IncompleteReadError, NoCredentialsError, PartialCredentialsError)

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return "no_credentials"
    # ConnectionError: refused, connect timeout. HTTPClientError: read timeout, a connection closed
    # or reset without an answer or in the middle of a body. IncompleteRead: a body cut short.
    if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError)):
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


def call(uri: str, fn: Callable[[], T], *, max_attempts: int = MAX_ATTEMPTS) -> T:
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
            # botocore's message may quote an endpoint with user:password@: such a cause stays out of tracebacks
            raise _to_storage_error(uri, exc, kind, attempt + 1) from (exc if redact(str(exc)) == str(exc) else None)
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
        return UnreachableError(uri, f"gave up after {attempts} attempts: {what}: {exc}")
    return StorageError(uri, f"{what}: {exc}")
