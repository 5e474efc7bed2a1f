"""Secrets never leave the process in what nlray writes: MLflow params, tags and artifacts, log lines, messages.

    redact("http://user:pw@head:5000")    -> "http://***@head:5000"
    redact(f"key {os.environ['AWS_SECRET_ACCESS_KEY']}")  -> "key ***"

Only what is logged or printed is redacted; the real URI or key is still what connects (MLflow needs the
password in its URI, boto3 its keys).
"""
from __future__ import annotations

import os
import re
from urllib.parse import quote

MASK = "***"
# Environment variables whose values are credentials: AWS keys, MLflow's basic-auth password and bearer
# token, Ray's cluster token.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD",
              "MLFLOW_TRACKING_TOKEN", "RAY_AUTH_TOKEN")
# Shorter values are too common to be secret (moto's "testing"): replacing them would mangle ordinary text.
MIN_SECRET_LEN = 8
# scheme://userinfo@ : the userinfo runs to the last "@" before the host's end (a password may hold an "@").
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s'\"<>]*@)")


def redact(text: str) -> str:
    """``text`` with URL userinfo and the values of SECRET_ENV (raw or URL-quoted) replaced by ``***``."""
    text = _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", str(text))
    for var in SECRET_ENV:
        value = os.environ.get(var, "")
        if len(value) >= MIN_SECRET_LEN:
            for form in {value, quote(value, safe="")}:
                text = text.replace(form, MASK)
    return text
