"""What a storage URI may be, torch- and boto3-free (the config checks it before anything starts).

    parse_uri("s3://bucket/k400")  -> ("s3", "bucket", "k400")
    parse_uri("/data/k400")        -> ("file", "", "/data/k400")
    parse_uri("gs://b/k")          -> ValueError naming the URI and the forms allowed
"""
from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlparse

from nlray.secrets import redact

URI_FORMS = "s3://bucket[/prefix], file:///abs/path or a plain local path"


def parse_uri(uri: str) -> tuple[str, str, str]:
    """``(scheme, bucket, key)`` for s3 or ``("file", "", abs_path)`` for local URIs; ValueError otherwise."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"storage URI {redact(uri)!r} is empty; use {URI_FORMS}")
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://"):].partition("/")
        if not bucket or "@" in bucket or bucket != bucket.strip():
            raise ValueError(f"storage URI {redact(uri)!r} has no bucket; use {URI_FORMS}")
        return "s3", bucket, key
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"storage URI {redact(uri)!r}: file:// URIs must be absolute (file:///path); "
                             f"use {URI_FORMS}")
        return "file", "", unquote(parsed.path)
    if "://" in uri or uri.lower().startswith(("s3:", "gs:", "http:", "https:")):
        raise ValueError(f"storage URI {redact(uri)!r} has an unsupported scheme; use {URI_FORMS}")
    return "file", "", os.path.abspath(os.path.expanduser(uri))


def is_run_ref(ref: str) -> bool:
    """An MLflow run id (32 hex digits) or ``runs:/<id>[/path]``, as ``train.init_from`` and the jobs take."""
    return bool(re.fullmatch(r"[0-9a-f]{32}", ref)) or ref.startswith("runs:/")
